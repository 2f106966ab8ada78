//! The console's pages: view models built from the trail and the exception store, rendered
//! by compile-time-checked templates (`templates/console/`, escaped by default).

use askama::Template;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::Value;

use super::human;
use super::web::{self, field};
use super::Viewer;
use crate::audit::index::TrailIndex;
use crate::audit::query::{self, Filter};
use crate::exceptions::model::{Actor, Exception, Scope, Status};
use crate::exceptions::service::Service;

const PAGE_SIZE: usize = 50;
/// How long a page waits for the index to take in what the trail gained since its last
/// pass. Only the first indexing of a large trail takes longer, and the page then says so.
const INDEX_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// The deepest page of a search (the newest 10,000 matches); narrower searches reach further back.
const MAX_PAGE: usize = 200;

fn render(status: StatusCode, page: impl Template) -> Response<Full<Bytes>> {
    match page.render() {
        Ok(body) => web::html(status, body),
        Err(e) => {
            tracing::error!(error = %e, "console page failed to render");
            web::html(
                StatusCode::INTERNAL_SERVER_ERROR,
                "<!doctype html><title>Error</title><p>This page could not be shown.</p>"
                    .to_owned(),
            )
        }
    }
}

pub fn stylesheet() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(include_bytes!("console.css"))));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/css; charset=utf-8"),
    );
    r
}

pub fn redirect_to(path: &str) -> Response<Full<Bytes>> {
    web::redirect(path)
}

#[derive(Template)]
#[template(path = "console/message.html")]
struct Message<'a> {
    viewer: Option<&'a Viewer>,
    title: &'a str,
    text: &'a str,
    show_sign_in: bool,
}

pub fn message(status: StatusCode, title: &str, text: &str) -> Response<Full<Bytes>> {
    render(
        status,
        Message {
            viewer: None,
            title,
            text,
            show_sign_in: false,
        },
    )
}

#[derive(Template)]
#[template(path = "console/landing.html")]
struct Landing<'a> {
    viewer: Option<&'a Viewer>,
    note: Option<&'a str>,
}

pub fn landing(note: Option<&str>) -> Response<Full<Bytes>> {
    render(StatusCode::OK, Landing { viewer: None, note })
}

pub fn login_failed(why: &str) -> Response<Full<Bytes>> {
    render(
        StatusCode::FORBIDDEN,
        Message {
            viewer: None,
            title: "Sign-in failed",
            text: &format!("You are not signed in: {why}."),
            show_sign_in: true,
        },
    )
}

/// Signed in, but in none of the console's groups.
pub fn no_access(viewer: &Viewer) -> Response<Full<Bytes>> {
    render(
        StatusCode::FORBIDDEN,
        Message {
            viewer: Some(viewer),
            title: "No access",
            text: &format!(
                "You are signed in as {}, but the console is only for the security team (the audit trail) and for exception approvers, and your groups include neither. Ask your manager to request access if you need it.",
                viewer.user.id
            ),
            show_sign_in: false,
        },
    )
}

/// Signed in with a role, but not the one this page or form needs.
pub fn forbidden(viewer: &Viewer) -> Response<Full<Bytes>> {
    render(
        StatusCode::FORBIDDEN,
        Message {
            viewer: Some(viewer),
            title: "Not allowed",
            text: "Your role does not include this page or action. Nothing was changed.",
            show_sign_in: false,
        },
    )
}

// ---- the trail ----------------------------------------------------------------------------

/// The search form as the person filled it in (echoed back into the page).
#[derive(Default)]
pub struct SearchForm {
    principal: String,
    workspace: String,
    action: String,
    category: String,
    decision: String,
    rule: String,
    exception: String,
    bucket: String,
    asset: String,
    since: String,
    until: String,
}

const FIELDS: [&str; 11] = [
    "principal",
    "workspace",
    "action",
    "category",
    "decision",
    "rule",
    "exception",
    "bucket",
    "asset",
    "since",
    "until",
];

impl SearchForm {
    fn from_query(query: &[(String, String)]) -> SearchForm {
        let get = |name: &str| field(query, name).unwrap_or("").trim().to_owned();
        SearchForm {
            principal: get("principal"),
            workspace: get("workspace"),
            action: get("action"),
            category: get("category"),
            decision: get("decision"),
            rule: get("rule"),
            exception: get("exception"),
            bucket: get("bucket"),
            asset: get("asset"),
            since: get("since"),
            until: get("until"),
        }
    }

    fn values(&self) -> [&str; 11] {
        [
            &self.principal,
            &self.workspace,
            &self.action,
            &self.category,
            &self.decision,
            &self.rule,
            &self.exception,
            &self.bucket,
            &self.asset,
            &self.since,
            &self.until,
        ]
    }

    fn filter(&self, now: std::time::SystemTime) -> Result<Filter, String> {
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let bound = |s: &str, name: &str| -> Result<Option<String>, String> {
            if s.is_empty() {
                return Ok(None);
            }
            query::time_bound(s, now)
                .map(Some)
                .map_err(|e| format!("{name}: {e}"))
        };
        if !matches!(self.decision.as_str(), "" | "allow" | "deny" | "would_deny") {
            return Err(format!(
                "decision: {:?} is not allow, deny or would_deny",
                self.decision
            ));
        }
        Ok(Filter {
            principal: opt(&self.principal),
            workspace: opt(&self.workspace),
            action: opt(&self.action),
            category: opt(&self.category),
            decision: opt(&self.decision),
            rule: opt(&self.rule),
            exception: opt(&self.exception),
            bucket: opt(&self.bucket),
            asset: opt(&self.asset),
            request_id: None,
            since: bound(&self.since, "since")?,
            until: bound(&self.until, "until")?,
            limit: None,
        })
    }

    /// The query string of this search at `page`.
    fn link(&self, page: usize) -> String {
        let mut pairs: Vec<(&str, &str)> = FIELDS
            .iter()
            .zip(self.values())
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (*k, v))
            .collect();
        let page = page.to_string();
        pairs.push(("page", &page));
        format!("/trail?{}", web::form_encode(&pairs))
    }
}

/// One request as a row of the trail.
pub struct TrailRow {
    exchange: String,
    request_id: String,
    when_utc: String,
    when_ago: String,
    principal: String,
    workspace: String,
    action: String,
    category: String,
    asset: String,
    /// `allow`, `deny` or `would_deny`: also the row's CSS class.
    effect: String,
    effect_label: String,
    rule: String,
    reason: String,
    status: String,
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut v = v;
    for p in path {
        match v.get(*p) {
            Some(next) => v = next,
            None => return "",
        }
    }
    v.as_str().unwrap_or("")
}

/// The asset as people know it: `dbfs:/…`, `/Volumes/…`, `s3://bucket/key`.
fn asset_of(decision: &Value) -> String {
    query::asset_name(decision).unwrap_or_default()
}

impl TrailRow {
    fn of(hit: &query::Hit, now: i64) -> TrailRow {
        let d = &hit.decision;
        let ts = str_at(d, &["ts"]);
        let would_deny = str_at(d, &["decision", "would_deny"]);
        let (effect, effect_label) = match (str_at(d, &["decision", "effect"]), would_deny) {
            ("allow", w) if !w.is_empty() => ("would_deny", "would deny (report-only)"),
            ("allow", _) => ("allow", "allowed"),
            ("deny", _) => ("deny", "denied"),
            (other, _) => (other, other),
        };
        let status = match &hit.completion {
            Some(c) => match c.get("status").and_then(Value::as_u64) {
                Some(0) | None => str_at(c, &["error"]).to_owned(),
                Some(s) => s.to_string(),
            },
            None => "–".to_owned(),
        };
        let rule = if would_deny.is_empty() {
            str_at(d, &["decision", "rule"])
        } else {
            would_deny
        };
        TrailRow {
            exchange: str_at(d, &["exchange"]).to_owned(),
            request_id: str_at(d, &["request_id"]).to_owned(),
            when_utc: human::utc(ts),
            when_ago: human::unix_of(ts).map_or(String::new(), |t| human::relative(t, now)),
            principal: str_at(d, &["principal", "id"]).to_owned(),
            workspace: str_at(d, &["workspace"]).to_owned(),
            action: str_at(d, &["action", "name"]).to_owned(),
            category: str_at(d, &["action", "category"]).to_owned(),
            asset: asset_of(d),
            effect: effect.to_owned(),
            effect_label: effect_label.to_owned(),
            rule: rule.to_owned(),
            reason: str_at(d, &["decision", "reason"]).to_owned(),
            status,
        }
    }
}

#[derive(Template)]
#[template(path = "console/trail.html")]
struct TrailPage<'a> {
    viewer: Option<&'a Viewer>,
    form: SearchForm,
    decisions: [(&'static str, &'static str); 4],
    rows: Vec<TrailRow>,
    total: usize,
    /// More matches than `total`, which stops counting at what the pages can show.
    more: bool,
    page: usize,
    pages: usize,
    newer: Option<String>,
    older: Option<String>,
    error: Option<String>,
}

fn unix_now() -> i64 {
    crate::identity::unix_now() as i64
}

/// Brings the index up to date before a page reads it, and says on the page when it could
/// not in time (a first build of a large trail).
async fn fresh(index: &TrailIndex, viewer: &mut Viewer) {
    let progress = index.refresh(INDEX_WAIT).await;
    viewer.notice = match (&progress.error, progress.caught_up()) {
        (Some(e), _) => Some(format!(
            "The search index cannot read the trail ({e}); results may be incomplete. `gatehouse audit query` reads the trail directly."
        )),
        (None, false) => Some(format!(
            "The search index is still reading the trail ({} of {} MB); the most recent requests may be missing from these results.",
            progress.indexed_bytes >> 20,
            progress.trail_bytes >> 20
        )),
        (None, true) => None,
    };
}

pub async fn trail(
    mut viewer: Viewer,
    index: &TrailIndex,
    query: &[(String, String)],
) -> Response<Full<Bytes>> {
    fresh(index, &mut viewer).await;
    let form = SearchForm::from_query(query);
    // Pages reach as deep as the index counts matches: beyond that, refine the search.
    let page = field(query, "page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, MAX_PAGE);
    let mut view = TrailPage {
        viewer: Some(&viewer),
        decisions: [
            ("", "any"),
            ("deny", "denied"),
            ("allow", "allowed"),
            ("would_deny", "would deny (report-only)"),
        ],
        rows: Vec::new(),
        total: 0,
        more: false,
        page,
        pages: 1,
        newer: None,
        older: None,
        error: None,
        form,
    };
    let found = match view.form.filter(std::time::SystemTime::now()) {
        Ok(filter) => {
            index
                .page(
                    &filter,
                    (page - 1) * PAGE_SIZE,
                    PAGE_SIZE,
                    MAX_PAGE * PAGE_SIZE,
                )
                .await
        }
        Err(e) => Err(e),
    };
    match found {
        Ok(found) => {
            let now = unix_now();
            view.rows = found.hits.iter().map(|h| TrailRow::of(h, now)).collect();
            view.total = found.total;
            view.more = found.more;
            view.pages = found.total.div_ceil(PAGE_SIZE).clamp(1, MAX_PAGE);
            if found.more {
                view.error = Some(format!(
                    "Only the newest {} matches are shown in pages; narrow the search (time range, principal, rule) to see older ones.",
                    MAX_PAGE * PAGE_SIZE
                ));
            }
            view.newer = (page > 1).then(|| view.form.link(page - 1));
            view.older = (page < view.pages).then(|| view.form.link(page + 1));
        }
        Err(e) => view.error = Some(e),
    }
    render(StatusCode::OK, view)
}

#[derive(Template)]
#[template(path = "console/request.html")]
struct RequestPage<'a> {
    viewer: Option<&'a Viewer>,
    row: TrailRow,
    facts: Vec<(&'static str, String)>,
    decision_json: String,
    completion_json: Option<String>,
}

/// One request: its decision and completion joined, with everything recorded.
pub async fn request(
    mut viewer: Viewer,
    index: &TrailIndex,
    exchange: &str,
) -> Response<Full<Bytes>> {
    // The join key is gateway-made hex and dashes; anything else names nothing.
    if exchange.is_empty()
        || !exchange
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return not_found(&viewer);
    }
    fresh(index, &mut viewer).await;
    let hit = match index.request(exchange).await {
        Ok(Some(hit)) => hit,
        Ok(None) => return not_found(&viewer),
        Err(e) => {
            tracing::error!(error = %e, "console: the trail index failed");
            return message(
                StatusCode::INTERNAL_SERVER_ERROR,
                "This page failed",
                "The trail index failed; the gateway's log says why.",
            );
        }
    };
    let d = &hit.decision;
    let c = hit.completion.as_ref();
    let mut facts: Vec<(&'static str, String)> = vec![
        ("Request id", str_at(d, &["request_id"]).to_owned()),
        (
            "Time",
            format!(
                "{} ({})",
                human::utc(str_at(d, &["ts"])),
                human::unix_of(str_at(d, &["ts"]))
                    .map_or(String::new(), |t| human::relative(t, unix_now()))
            ),
        ),
        (
            "Principal",
            format!(
                "{} ({}, {})",
                str_at(d, &["principal", "id"]),
                str_at(d, &["principal", "type"]),
                str_at(d, &["principal", "auth"])
            ),
        ),
        (
            "Groups",
            d.pointer("/principal/groups")
                .and_then(Value::as_array)
                .map(|g| {
                    g.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default(),
        ),
        ("Workspace", str_at(d, &["workspace"]).to_owned()),
        (
            "Service and action",
            format!(
                "{} ({})",
                str_at(d, &["action", "name"]),
                str_at(d, &["action", "category"])
            ),
        ),
        (
            "Request",
            format!(
                "{} {}{}",
                str_at(d, &["request", "method"]),
                str_at(d, &["request", "host"]),
                str_at(d, &["request", "path"])
            ),
        ),
        (
            "Request parameters",
            str_at(d, &["request", "query"]).to_owned(),
        ),
        ("Asset", asset_of(d)),
        (
            "Exception",
            str_at(d, &["decision", "exception"]).to_owned(),
        ),
        ("Client", str_at(d, &["client", "addr"]).to_owned()),
        ("Gateway", str_at(d, &["gateway"]).to_owned()),
        (
            "Trail position",
            format!(
                "record {} of gateway {}",
                d.get("seq").map(Value::to_string).unwrap_or_default(),
                str_at(d, &["gateway"])
            ),
        ),
    ];
    if let Some(c) = c {
        let num = |k: &str| c.get(k).map(Value::to_string).unwrap_or_default();
        facts.push(("Response status", num("status")));
        facts.push((
            "Bytes in / out",
            format!("{} / {}", num("bytes_in"), num("bytes_out")),
        ));
        facts.push((
            "Duration",
            format!(
                "{} µs (upstream {} µs)",
                num("duration_us"),
                num("upstream_us")
            ),
        ));
        let error = str_at(c, &["error"]);
        if !error.is_empty() {
            facts.push(("Ended with", error.to_owned()));
        }
    }
    facts.retain(|(_, v)| !v.is_empty() && v != "null");
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    render(
        StatusCode::OK,
        RequestPage {
            viewer: Some(&viewer),
            row: TrailRow::of(&hit, unix_now()),
            facts,
            decision_json: pretty(d),
            completion_json: c.map(pretty),
        },
    )
}

fn not_found(viewer: &Viewer) -> Response<Full<Bytes>> {
    render(
        StatusCode::NOT_FOUND,
        Message {
            viewer: Some(viewer),
            title: "No such request",
            text: "The trail has no request with this id.",
            show_sign_in: false,
        },
    )
}

// ---- exceptions ---------------------------------------------------------------------------

pub struct Flash {
    kind: &'static str,
    text: String,
}

pub struct ExceptionRow {
    id: String,
    kind: &'static str,
    subject: String,
    scope: String,
    reason: String,
    ticket: String,
    requester: String,
    requested: String,
    duration: String,
    approvals: String,
    status: &'static str,
    time_left: String,
    closed: String,
}

fn kind_label(scope: &Scope) -> &'static str {
    match scope {
        Scope::RawBucket { .. } => "raw-bucket access",
        Scope::Download { .. } => "download",
        Scope::WorkspaceAccess { .. } => "workspace access",
    }
}

/// The scope as the people who asked for it would say it.
fn scope_text(scope: &Scope) -> String {
    match scope {
        Scope::RawBucket {
            bucket,
            prefix,
            ops,
        } => {
            let ops: Vec<&str> = ops.iter().map(|o| o.as_str()).collect();
            format!("{} of s3://{bucket}/{prefix}", ops.join(", "))
        }
        Scope::Download {
            workspace,
            actions,
            prefix,
        } => format!(
            "{} of {} in {workspace}",
            actions.join(", "),
            if prefix.is_empty() {
                "anything"
            } else {
                prefix
            }
        ),
        Scope::WorkspaceAccess {
            workspace,
            categories,
        } => format!("{} in {workspace}", categories.join(", ")),
    }
}

fn when(ms: i64, now: i64) -> String {
    let secs = ms.div_euclid(1000);
    format!("{} ({})", human::utc_of(secs), human::relative(secs, now))
}

impl ExceptionRow {
    fn of(ex: &Exception, now_ms: i64) -> ExceptionRow {
        let now = now_ms.div_euclid(1000);
        let status = ex.status_at(now_ms);
        let approvers: Vec<String> = ex
            .approvals
            .iter()
            .map(|a| match &a.comment {
                Some(c) => format!("{} (“{c}”)", a.approver),
                None => a.approver.clone(),
            })
            .collect();
        ExceptionRow {
            id: ex.id.clone(),
            kind: kind_label(&ex.scope),
            subject: ex.subject.to_string(),
            scope: scope_text(&ex.scope),
            reason: ex.reason.clone(),
            ticket: ex.ticket.clone(),
            requester: ex.requester.clone(),
            requested: when(ex.requested_at, now),
            duration: human::duration_secs((ex.duration_ms.max(0) / 1000) as u64),
            approvals: format!(
                "{} of {} needed{}{}",
                ex.approvals.len(),
                ex.required_approvals,
                if approvers.is_empty() { "" } else { ": " },
                approvers.join(", ")
            ),
            status: status.as_str(),
            time_left: match ex.expires_at {
                Some(end) if end > now_ms => format!(
                    "{} left, until {}",
                    human::duration_secs(((end - now_ms) / 1000) as u64),
                    human::utc_of(end.div_euclid(1000))
                ),
                _ => String::new(),
            },
            closed: match &ex.closed {
                Some(c) => format!(
                    "{} by {}{}",
                    when(c.at, now),
                    c.by,
                    c.comment
                        .as_ref()
                        .map(|m| format!(": “{m}”"))
                        .unwrap_or_default()
                ),
                None => match ex.approved_at {
                    Some(at) => format!("approved {}", when(at, now)),
                    None => String::new(),
                },
            },
        }
    }
}

#[derive(Template)]
#[template(path = "console/exceptions.html")]
struct ExceptionsPage<'a> {
    viewer: Option<&'a Viewer>,
    csrf: &'a str,
    flash: Option<Flash>,
    pending: Vec<ExceptionRow>,
    active: Vec<ExceptionRow>,
    history: Vec<ExceptionRow>,
}

pub async fn exceptions(
    viewer: &Viewer,
    service: &Service,
    flash: Option<Flash>,
    query: &[(String, String)],
) -> Response<Full<Bytes>> {
    // Pending and approved ones whole (the store's list is capped, newest first); the rest
    // as history.
    let lists = async {
        let mut all = service.list(Some(Status::Pending), None, None).await?;
        all.extend(service.list(Some(Status::Approved), None, None).await?);
        for ex in service.list(None, None, None).await? {
            if !matches!(ex.status, Status::Pending | Status::Approved) {
                all.push(ex);
            }
        }
        Ok::<_, crate::exceptions::service::ApiError>(all)
    };
    let all = match lists.await {
        Ok(all) => all,
        Err(e) => {
            return message(
                StatusCode::SERVICE_UNAVAILABLE,
                "The exception store is unavailable",
                &e.message,
            )
        }
    };
    let now = crate::exceptions::now_ms();
    let flash = flash.or_else(|| {
        let id = field(query, "id")?;
        done_flash(
            field(query, "done")?,
            all.iter().find(|ex| ex.id == id)?,
            &viewer.user.id,
        )
    });
    let mut page = ExceptionsPage {
        viewer: Some(viewer),
        csrf: &viewer.csrf,
        flash,
        pending: Vec::new(),
        active: Vec::new(),
        history: Vec::new(),
    };
    for ex in &all {
        let row = ExceptionRow::of(ex, now);
        match ex.status_at(now) {
            Status::Pending => page.pending.push(row),
            Status::Approved if ex.in_force_at(now) => page.active.push(row),
            _ => page.history.push(row),
        }
    }
    render(StatusCode::OK, page)
}

/// Approve, reject or revoke, through the same service (and so the same rules: no
/// self-approval, N-of-M, `max_days`) as the admin API, under the approver's own identity.
pub async fn act_on_exception(
    viewer: &Viewer,
    service: &Service,
    id: &str,
    action: &str,
    form: &[(String, String)],
) -> Response<Full<Bytes>> {
    let Some(comment) = field(form, "comment")
        .map(str::trim)
        .filter(|c| !c.is_empty())
    else {
        let flash = Flash {
            kind: "error",
            text: "Nothing was changed: a comment is required.".to_owned(),
        };
        return with_status(
            StatusCode::UNPROCESSABLE_ENTITY,
            exceptions(viewer, service, Some(flash), &[]).await,
        );
    };
    let actor = Actor {
        id: viewer.user.id.clone(),
        groups: viewer.user.groups.clone(),
    };
    let comment = Some(comment.to_owned());
    let (verb, outcome) = match (action, field(form, "decision")) {
        ("decide", Some("approve")) => ("approved", service.approve(id, &actor, comment).await),
        ("decide", Some("reject")) => ("rejected", service.reject(id, &actor, comment).await),
        ("revoke", _) => ("revoked", service.revoke(id, &actor, comment).await),
        _ => return forbidden(viewer),
    };
    match outcome {
        Ok(ex) => {
            tracing::info!(user = %viewer.user.id, exception = %ex.id, verb, "console: exception changed");
            // Post, redirect, get: reloading the page the browser lands on posts nothing.
            redirect_to(&format!(
                "/exceptions?{}",
                web::form_encode(&[("done", verb), ("id", &ex.id)])
            ))
        }
        Err(e) => {
            let flash = Flash {
                kind: "error",
                text: format!("Nothing was changed: {}", e.message),
            };
            let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
            with_status(status, exceptions(viewer, service, Some(flash), &[]).await)
        }
    }
}

/// What the page says after an action redirected to it (`?done=approved&id=…`). Only what
/// the exception's state bears out: a link cannot make the page claim what did not happen.
fn done_flash(done: &str, ex: &Exception, viewer: &str) -> Option<Flash> {
    let text = match (done, ex.status) {
        ("approved", Status::Pending) if ex.approvals.iter().any(|a| a.approver == viewer) => {
            format!(
                "Your approval of {} is recorded; it needs {} more before it is in force.",
                ex.id,
                ex.required_approvals
                    .saturating_sub(ex.approvals.len() as u32)
            )
        }
        ("approved", Status::Approved) if ex.approvals.iter().any(|a| a.approver == viewer) => {
            format!("Exception {} approved.", ex.id)
        }
        ("rejected", Status::Rejected) | ("revoked", Status::Revoked)
            if ex.closed.as_ref().is_some_and(|c| c.by == viewer) =>
        {
            format!("Exception {} {done}.", ex.id)
        }
        _ => return None,
    };
    Some(Flash { kind: "ok", text })
}

fn with_status(status: StatusCode, mut r: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    if r.status() == StatusCode::OK {
        *r.status_mut() = status;
    }
    r
}

// ---- denials over time ---------------------------------------------------------------------

#[derive(Template)]
#[template(path = "console/denials.html")]
struct DenialsPage<'a> {
    viewer: Option<&'a Viewer>,
    period: String,
    periods: [(&'static str, &'static str); 4],
    chart: String,
    total: u32,
    /// (name, link to its denials in the trail), count.
    principals: Vec<((String, String), u32)>,
    assets: Vec<((String, String), u32)>,
    from_utc: String,
    to_utc: String,
    error: Option<String>,
}

/// Denials over a period by rule, and who and what was denied most.
pub async fn denials(
    mut viewer: Viewer,
    index: &TrailIndex,
    query: &[(String, String)],
) -> Response<Full<Bytes>> {
    let period = field(query, "period").unwrap_or("24h");
    let (period, secs) = match period {
        "1h" => ("1h", 3600),
        "7d" => ("7d", 7 * 86_400),
        "30d" => ("30d", 30 * 86_400),
        _ => ("24h", 86_400),
    };
    let end = unix_now() + 1;
    let (start, slot_secs) = super::denials::period(end, secs);
    fresh(index, &mut viewer).await;
    let counted = index
        .denials(start, slot_secs, super::denials::SLOTS, super::denials::TOP)
        .await;
    let (tally, error) = match counted {
        Ok(counts) => (super::denials::Tally::of(counts, start, slot_secs), None),
        Err(e) => (
            super::denials::Tally::of(Default::default(), start, slot_secs),
            Some(e),
        ),
    };
    let link = |key: &str, value: &str| {
        format!(
            "/trail?{}",
            web::form_encode(&[(key, value), ("decision", "deny"), ("since", period)])
        )
    };
    render(
        StatusCode::OK,
        DenialsPage {
            viewer: Some(&viewer),
            period: period.to_owned(),
            periods: [
                ("1h", "last hour"),
                ("24h", "last 24 hours"),
                ("7d", "last 7 days"),
                ("30d", "last 30 days"),
            ],
            chart: super::denials::svg(&tally),
            total: tally.total,
            principals: tally
                .principals
                .iter()
                .map(|(p, n)| ((p.clone(), link("principal", p)), *n))
                .collect(),
            assets: tally
                .assets
                .iter()
                .map(|(a, n)| ((a.clone(), link("asset", a)), *n))
                .collect(),
            from_utc: human::utc_of(start),
            to_utc: human::utc_of(end),
            error,
        },
    )
}
