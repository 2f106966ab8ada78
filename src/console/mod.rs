//! The review console on the admin listener: the security team searches and reads the
//! trail; CDAO approvers act on exception requests. People log in through the bank's OpenID
//! Provider (`oidc`); sessions live on the server (`session`); pages are server-rendered
//! (`pages`) and run no script at all, so the Content-Security-Policy can forbid inline and
//! remote script outright.

pub mod denials;
pub mod human;
pub mod integrity;
pub mod oidc;
mod pages;
pub mod session;
pub mod web;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::audit::index::TrailIndex;
use crate::config::ConsoleConfig;
use crate::exceptions::service::Service;
use session::{Current, NoSession, Sessions, User};
use web::{field, CrossSite};

/// Form posts larger than this are refused.
const MAX_FORM: usize = 16 * 1024;
/// A form body that has not arrived within this long is refused.
const FORM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The console's own pages (besides `/` and the login callback, whose path is configured).
pub fn is_page(path: &str) -> bool {
    const PAGES: [&str; 6] = [
        "/login",
        "/logout",
        "/console.css",
        "/trail",
        "/denials",
        "/exceptions",
    ];
    PAGES.contains(&path)
        || ["/trail/", "/exceptions/"]
            .iter()
            .any(|p| path.starts_with(p))
}

/// What a signed-in person may do, from their groups as of now (a reload that changes the
/// groups changes access at the next page).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Roles {
    pub auditor: bool,
    pub approver: bool,
}

impl Roles {
    pub fn of(user: &User, auditor_groups: &[String], approver_groups: &[String]) -> Roles {
        let member = |groups: &[String]| user.groups.iter().any(|g| groups.contains(g));
        Roles {
            auditor: member(auditor_groups),
            approver: member(approver_groups),
        }
    }
}

pub struct Console {
    config: ConsoleConfig,
    provider: Arc<oidc::Provider>,
    sessions: Sessions,
    /// `scheme://authority` of the console, what its own pages send as `Origin`.
    origin: String,
    provider_origin: String,
    callback_path: String,
    /// What the trail pages search.
    index: Arc<TrailIndex>,
    integrity: Arc<integrity::Integrity>,
    /// Sign-ins, failed sign-ins and sign-outs are records in the trail.
    trail: Arc<crate::audit::AuditSink>,
    gateway_id: String,
}

/// What a page is rendered for.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub user: User,
    pub roles: Roles,
    pub csrf: String,
    pub integrity: integrity::IntegrityView,
    /// Said under the integrity banner: that the search index is still reading the trail.
    pub notice: Option<String>,
}

impl Console {
    /// The console, and the task that verifies the trail for its pages (stop it with the
    /// gateway). `key` checks the digests' signatures when the trail is signed.
    pub fn new(
        config: &ConsoleConfig,
        audit_dir: PathBuf,
        key: Option<crate::audit::digest::PublicKey>,
        index: Arc<TrailIndex>,
        trail: Arc<crate::audit::AuditSink>,
        gateway_id: String,
    ) -> Result<(Arc<Console>, tokio::task::JoinHandle<()>), String> {
        let callback_path = config
            .redirect_url
            .parse::<http::Uri>()
            .map(|u| u.path().to_owned())
            .map_err(|_| "console.redirect_url is not a URL".to_owned())?;
        let provider = oidc::Provider::new(config)?;
        let (integrity, task) = integrity::Integrity::start(audit_dir, key, integrity::EVERY);
        let console = Arc::new(Console {
            provider,
            sessions: Sessions::new(config.session_idle, config.session_max),
            origin: web::origin_of(&config.redirect_url),
            provider_origin: web::origin_of(&config.oidc_issuer),
            callback_path,
            index,
            integrity,
            trail,
            gateway_id,
            config: config.clone(),
        });
        Ok((console, task))
    }

    /// A `console` record for the trail: who signed in or out, why a sign-in failed, or
    /// which trail page an auditor opened (`page`: its path and query).
    fn console_record(
        &self,
        event: &str,
        user: Option<&User>,
        reason: Option<&str>,
        page: Option<&str>,
    ) -> Vec<u8> {
        let mut body = serde_json::json!({
            "ts": crate::audit::timestamp(std::time::SystemTime::now()),
            "gateway": self.gateway_id,
            "phase": "console",
            "event": event,
            "user": user.map(|u| u.id.as_str()),
            "groups": user.map(|u| u.groups.as_slice()),
            "reason": reason,
        });
        if let Some(page) = page {
            body["page"] = page.into();
        }
        body.to_string().into_bytes()
    }

    /// Sign-ins and sign-outs go into the trail without holding up the browser.
    fn record(&self, event: &str, user: Option<&User>, reason: Option<&str>) {
        let body = self.console_record(event, user, reason, None);
        if self.trail.record_event(body).is_err() {
            tracing::error!(event, "the trail cannot take a console record");
        }
    }

    /// Whether the console answers this path (the admin API keeps `/v1/…`, `/healthz`,
    /// `/readyz` and `/metrics`).
    pub fn serves(&self, path: &str) -> bool {
        path == "/" || path == self.callback_path || is_page(path)
    }

    pub async fn answer(
        &self,
        exceptions: Option<&Service>,
        req: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let mut response = self.route(exceptions, req).await;
        web::secure_headers(response.headers_mut(), &self.provider_origin);
        response
    }

    async fn route(
        &self,
        exceptions: Option<&Service>,
        req: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        match (&method, path.as_str()) {
            (&Method::GET, "/console.css") => pages::stylesheet(),
            (&Method::GET, "/login") => {
                let client = req
                    .extensions()
                    .get::<crate::admin::ClientAddr>()
                    .map(|c| c.0);
                self.begin_login(client).await
            }
            (&Method::GET, p) if p == self.callback_path => self.finish_login(&req).await,
            (&Method::POST, "/logout") => self.logout(req).await,
            (&Method::GET, _) | (&Method::POST, _) => self.signed_in(exceptions, req).await,
            _ => pages::message(
                StatusCode::METHOD_NOT_ALLOWED,
                "Not allowed",
                "This page only answers GET and form posts.",
            ),
        }
    }

    /// Pages behind login: without a live session the person is asked to sign in.
    async fn signed_in(
        &self,
        exceptions: Option<&Service>,
        req: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let cookie = web::cookie(req.headers(), web::SESSION_COOKIE);
        let current = match self.sessions.current(cookie, Instant::now()) {
            Ok(c) => c,
            Err(why) => {
                let note = match why {
                    NoSession::Expired => Some("Your session ended. Sign in again to go on."),
                    NoSession::Missing => None,
                };
                if req.method() == Method::POST {
                    return pages::message(
                        StatusCode::FORBIDDEN,
                        "Not signed in",
                        "This form needs a signed-in session. Sign in and try again.",
                    );
                }
                return pages::landing(note);
            }
        };
        let approver_groups = exceptions.map(Service::approver_groups).unwrap_or_default();
        let roles = Roles::of(&current.user, &self.config.auditor_groups, &approver_groups);
        let viewer = Viewer {
            user: current.user.clone(),
            roles,
            csrf: current.csrf.clone(),
            integrity: self.integrity.view(),
            notice: None,
        };
        if !roles.auditor && !roles.approver {
            return pages::no_access(&viewer);
        }
        if req.method() == Method::POST {
            return self.post(exceptions, &viewer, &current, req).await;
        }
        let path = req.uri().path().to_owned();
        let query = web::parse_form(req.uri().query().unwrap_or(""));
        match path.as_str() {
            "/" if roles.auditor => pages::redirect_to("/trail"),
            "/" => pages::redirect_to("/exceptions"),
            "/trail" if roles.auditor => {
                let page = pages::trail(viewer, &self.index, &query);
                self.viewed(&current.user, req.uri(), page).await
            }
            "/denials" if roles.auditor => {
                let page = pages::denials(viewer, &self.index, &query);
                self.viewed(&current.user, req.uri(), page).await
            }
            p if p.starts_with("/trail/") && roles.auditor => {
                let page = pages::request(viewer, &self.index, &p["/trail/".len()..]);
                self.viewed(&current.user, req.uri(), page).await
            }
            "/exceptions" if roles.approver => match exceptions {
                Some(service) => pages::exceptions(&viewer, service, None, &query).await,
                None => pages::message(
                    StatusCode::NOT_FOUND,
                    "Exceptions are not configured",
                    "This gateway has no [exceptions] store.",
                ),
            },
            _ => pages::forbidden(&viewer),
        }
    }

    /// A page of the trail, shown only once its view is on the record: who looked at what in
    /// the trail is itself recorded, and a view that cannot be recorded is not shown (as the
    /// data path fails closed).
    async fn viewed(
        &self,
        user: &User,
        uri: &http::Uri,
        page: impl std::future::Future<Output = Response<Full<Bytes>>>,
    ) -> Response<Full<Bytes>> {
        let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
        let body = self.console_record("view", Some(user), None, Some(path));
        if let Err(e) = self.trail.record_decision(body).await {
            tracing::error!(error = %e, "console: the trail cannot take a view record");
            return pages::message(
                StatusCode::SERVICE_UNAVAILABLE,
                "The trail cannot record this view",
                "Reading the trail is itself recorded, and the trail is not taking records right now. Try again in a minute; if it goes on, tell the gateway's operators.",
            );
        }
        page.await
    }

    /// State-changing forms: only from a console page of this session (see `web`).
    async fn post(
        &self,
        exceptions: Option<&Service>,
        viewer: &Viewer,
        current: &Current,
        req: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let Some(form) = read_form(body).await else {
            return pages::message(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Form too large",
                "The form could not be read.",
            );
        };
        if let Some(refused) = self.refused_unless_from_console(&parts.headers, &form, current) {
            return refused;
        }
        let path = parts.uri.path();
        let Some((id, action)) = path
            .strip_prefix("/exceptions/")
            .and_then(|rest| rest.split_once('/'))
        else {
            return pages::forbidden(viewer);
        };
        let (Some(service), true) = (exceptions, viewer.roles.approver) else {
            return pages::forbidden(viewer);
        };
        pages::act_on_exception(viewer, service, id, action, &form).await
    }

    /// A state-changing form must come from a console page of this session (see `web`).
    fn refused_unless_from_console(
        &self,
        headers: &http::HeaderMap,
        form: &[(String, String)],
        current: &Current,
    ) -> Option<Response<Full<Bytes>>> {
        web::same_origin_post(headers, &self.origin, field(form, "csrf"), &current.csrf)
            .err()
            .map(refused_cross_site)
    }

    async fn begin_login(&self, client: Option<std::net::IpAddr>) -> Response<Full<Bytes>> {
        let (secrets, binding) = self.sessions.begin_login(Instant::now(), client);
        match self.provider.authorization_url(&secrets).await {
            Ok(url) => {
                let mut r = web::redirect(&url);
                r.headers_mut().append(
                    header::SET_COOKIE,
                    web::set_cookie(web::LOGIN_COOKIE, &binding, session::LOGIN_TTL.as_secs()),
                );
                r
            }
            Err(e) => {
                tracing::error!(error = %e, "console login: the identity provider is unavailable");
                pages::message(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Sign-in is unavailable",
                    "The identity provider cannot be reached right now. Try again in a minute; if it goes on, tell the gateway's operators.",
                )
            }
        }
    }

    async fn finish_login(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let query = web::parse_form(req.uri().query().unwrap_or(""));
        let binding = web::cookie(req.headers(), web::LOGIN_COOKIE);
        let failed = |why: &str| {
            tracing::warn!(reason = why, "console login failed");
            self.record("login_failed", None, Some(why));
            let mut r = pages::login_failed(why);
            r.headers_mut()
                .append(header::SET_COOKIE, web::clear_cookie(web::LOGIN_COOKIE));
            r
        };
        let Some(state) = field(&query, "state") else {
            return failed("the identity provider's answer names no login (state)");
        };
        let Some(secrets) = self.sessions.take_login(state, binding, Instant::now()) else {
            return failed(
                "this login was not started in this browser, was already used, or took too long",
            );
        };
        if let Some(error) = field(&query, "error") {
            let described = field(&query, "error_description").unwrap_or("");
            return failed(&format!(
                "the identity provider refused the login: {error} {described}"
            ));
        }
        // RFC 9207: a provider that names itself must be ours (mix-up attacks).
        if field(&query, "iss")
            .is_some_and(|iss| iss.trim_end_matches('/') != self.provider.issuer())
        {
            return failed("the answer came from another identity provider");
        }
        let Some(code) = field(&query, "code") else {
            return failed("the identity provider's answer carries no code");
        };
        match self.provider.finish_login(code, &secrets).await {
            Ok((identity, id_token)) => {
                let user = User::from(identity);
                tracing::info!(user = %user.id, "console login");
                self.record("login", Some(&user), None);
                let id = self.sessions.create(user, id_token, Instant::now());
                let mut r = web::redirect("/");
                let headers = r.headers_mut();
                headers.append(
                    header::SET_COOKIE,
                    web::set_cookie(web::SESSION_COOKIE, &id, self.config.session_max.as_secs()),
                );
                headers.append(header::SET_COOKIE, web::clear_cookie(web::LOGIN_COOKIE));
                r
            }
            Err(e) => failed(&e),
        }
    }

    /// Ends the session here, then at the provider when it offers logout.
    async fn logout(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let cookie = web::cookie(&parts.headers, web::SESSION_COOKIE);
        let Ok(current) = self.sessions.current(cookie, Instant::now()) else {
            let mut r = pages::landing(Some("You are signed out."));
            r.headers_mut()
                .append(header::SET_COOKIE, web::clear_cookie(web::SESSION_COOKIE));
            return r;
        };
        let form = read_form(body).await.unwrap_or_default();
        if let Some(refused) = self.refused_unless_from_console(&parts.headers, &form, &current) {
            return refused;
        }
        self.sessions.end(cookie);
        tracing::info!(user = %current.user.id, "console logout");
        self.record("logout", Some(&current.user), None);
        let provider_logout = match self.provider.metadata().await {
            Ok(meta) => meta.end_session_endpoint.clone(),
            Err(_) => None,
        };
        let mut r = match provider_logout {
            Some(end) => {
                let sep = if end.contains('?') { '&' } else { '?' };
                web::redirect(&format!(
                    "{end}{sep}{}",
                    web::form_encode(&[
                        ("id_token_hint", &current.id_token),
                        ("client_id", &self.config.client_id),
                    ])
                ))
            }
            None => pages::landing(Some("You are signed out.")),
        };
        r.headers_mut()
            .append(header::SET_COOKIE, web::clear_cookie(web::SESSION_COOKIE));
        r
    }
}

fn refused_cross_site(why: CrossSite) -> Response<Full<Bytes>> {
    tracing::warn!(
        reason = why.explain(),
        "console: cross-site form post refused"
    );
    pages::message(
        StatusCode::FORBIDDEN,
        "Refused: not sent from the console",
        &format!(
            "Nothing was changed: {}. Open the console and use its own forms.",
            why.explain()
        ),
    )
}

async fn read_form(body: Incoming) -> Option<Vec<(String, String)>> {
    let read = Limited::new(body, MAX_FORM).collect();
    let bytes = tokio::time::timeout(FORM_TIMEOUT, read)
        .await
        .ok()?
        .ok()?
        .to_bytes();
    Some(web::parse_form(std::str::from_utf8(&bytes).ok()?))
}
