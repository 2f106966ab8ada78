//! The data path: one request through route → identify → classify → decide → audit →
//! forward, and the completion record after it.
//!
//! Every exit that does not reach the upstream goes through `Exchange::refuse`, which
//! records the decision and answers in the client's error format. Nothing is forwarded until
//! the decision record has been accepted by the audit writer.

pub mod body;
pub mod framing;
pub mod headers;
pub mod pipeline;
pub mod pooled;
pub mod respond;
pub mod s3;
pub mod server;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::audit::{
    scrub_path, scrub_query, timestamp, AuditSink, ClientInfo, DecisionRecord, RequestInfo,
};
use crate::classify::body::{inspect, BodyVerdict};
use crate::classify::{self, Action, Asset, BodyCheck, Classification, NormalizedPath};
use crate::config::Config;
use crate::identity::{IdentityError, KeyStore, Principal, Verifier};
use crate::metrics::UpstreamError;
use crate::policy::{self, Decision, Effect, RuleId, Rules};
use crate::route::{host_of, Route, RouteTable, Workspace};

use body::{Completion, ContinueGate, CountingBody, GatedBody, ProxyBody, ResponseBody};
use headers::{client_request_id, set_forwarded, strip_console_set_cookies, strip_hop_by_hop};
use respond::{refusal_response, refusal_response_in, Dialect, Refusal};

/// Bodies the decision depends on are read up to this size; larger ones are refused.
pub const MAX_INSPECTED_BODY: usize = 1 << 20;

type UpstreamClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, ProxyBody>;

/// The S3 side, when configured.
pub(crate) struct S3Gateway {
    hosts: classify::s3::S3Hosts,
    callers: crate::identity::s3::S3Callers,
    buckets: Vec<crate::config::BucketConfig>,
    upstream: crate::config::Upstream,
    /// HTTP/1.1 only: the client's Host must reach the upstream as signed, and h2 would
    /// replace it with `:authority`.
    client: UpstreamClient,
}

/// A workspace's upstream clients: pooled (h2 where the upstream offers it) and, for
/// protocol upgrades, HTTP/1.1 only. With `upstream_pipelining` on, a plain-HTTP upstream (a
/// sidecar or a private endpoint; Databricks itself speaks h2 over TLS) also gets pipelines:
/// a principal's bodiless GET and HEAD share a few busy connections instead of one connection
/// per client request. Only one principal's requests share a pipelined connection, because an
/// upstream that misframes one response shifts the responses behind it.
struct UpstreamClients {
    pooled: UpstreamClient,
    upgrade: UpstreamClient,
    pipelines: Option<pipeline::Pipelines>,
}

/// What outlives a configuration: every gateway built by a reload shares it, so rate-limit
/// buckets are not refilled by a reload.
pub struct Shared {
    pub limiter: crate::limits::RateLimiter,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Unix seconds when the configuration in force was loaded.
    pub config_loaded_unix: AtomicU64,
    pub reloads_applied: AtomicU64,
    pub reloads_refused: AtomicU64,
}

impl Shared {
    pub fn new(config: &Config) -> Arc<Shared> {
        Arc::new(Shared {
            limiter: crate::limits::RateLimiter::new(&config.limits),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            config_loaded_unix: AtomicU64::new(crate::identity::unix_now()),
            reloads_applied: AtomicU64::new(0),
            reloads_refused: AtomicU64::new(0),
        })
    }

    /// A reload took `config`: its rates apply from now on.
    pub fn reconfigure(&self, config: &Config) {
        self.limiter.configure(&config.limits);
        self.config_loaded_unix
            .store(crate::identity::unix_now(), Ordering::Relaxed);
    }
}

/// Everything the data path needs, built once from a `Config`.
pub struct Gateway {
    pub gateway_id: Arc<str>,
    routes: RouteTable,
    rules: Rules,
    verifier: Verifier,
    audit: Arc<AuditSink>,
    clients: Vec<UpstreamClients>,
    /// How long the upstream may take to start answering.
    upstream_timeout: Duration,
    /// How long a body that must be inspected may take to arrive.
    body_timeout: Duration,
    exceptions: crate::exceptions::Live,
    request_ids: RequestIds,
    stopping: Stopping,
    s3: Option<S3Gateway>,
    shared: Arc<Shared>,
    limits: crate::config::LimitsConfig,
    /// Workspace names and their metric ids, in configuration order (`Workspace::client`).
    workspace_ids: Vec<(String, u16)>,
}

impl Gateway {
    pub fn new(
        config: &Config,
        keys: Arc<KeyStore>,
        audit: Arc<AuditSink>,
        stopping: Stopping,
        exceptions: crate::exceptions::Live,
        shared: Arc<Shared>,
    ) -> Result<Gateway, String> {
        let mut clients = Vec::with_capacity(config.workspaces.len());
        for w in &config.workspaces {
            // Upgrades need HTTP/1.1 end to end: h2 has no Upgrade, so they get their own
            // client that never offers h2.
            let build = |h2: bool| -> Result<UpstreamClient, String> {
                let connector = crate::tls::https_connector(
                    w.upstream_ca.as_deref(),
                    config.server.connect_timeout,
                    h2,
                )
                .map_err(|e| format!("workspace {}: {e}", w.name))?;
                Ok(Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(config.server.idle_timeout)
                    .pool_timer(TokioTimer::new())
                    .timer(TokioTimer::new())
                    .build(connector))
            };
            let pipelines = (config.server.upstream_pipelining
                && w.upstream.scheme == crate::config::Scheme::Http)
                .then(|| {
                    pipeline::Pipelines::new(
                        w.upstream.authority_with_port(),
                        pipeline::PipelineConfig {
                            connect_timeout: config.server.connect_timeout,
                            idle_timeout: config.server.idle_timeout,
                            ..pipeline::PipelineConfig::default()
                        },
                    )
                });
            clients.push(UpstreamClients {
                pooled: build(true)?,
                upgrade: build(false)?,
                pipelines,
            });
        }
        let s3 = match &config.s3 {
            None => None,
            Some(c) => {
                let connector = crate::tls::https_connector(
                    c.upstream_ca.as_deref(),
                    config.server.connect_timeout,
                    false,
                )
                .map_err(|e| format!("s3: {e}"))?;
                Some(S3Gateway {
                    hosts: classify::s3::S3Hosts::new(&c.hosts, &c.access_points),
                    callers: crate::identity::s3::S3Callers::from_config(config),
                    buckets: config.buckets.clone(),
                    upstream: c.upstream.clone(),
                    client: Client::builder(TokioExecutor::new())
                        .pool_idle_timeout(config.server.idle_timeout)
                        .pool_timer(TokioTimer::new())
                        .timer(TokioTimer::new())
                        .build(connector),
                })
            }
        };
        Ok(Gateway {
            gateway_id: Arc::from(config.server.gateway_id.as_str()),
            routes: RouteTable::from_config(config),
            rules: Rules::from_config(config),
            verifier: Verifier::new(config.identity.clone(), keys)
                .counting_in(shared.metrics.clone()),
            audit,
            clients,
            upstream_timeout: config.server.upstream_timeout,
            body_timeout: config.server.header_read_timeout,
            exceptions,
            request_ids: RequestIds::new(),
            stopping,
            s3,
            workspace_ids: config
                .workspaces
                .iter()
                .map(|w| (w.name.clone(), shared.metrics.workspace_id(&w.name)))
                .collect(),
            shared,
            limits: config.limits.clone(),
        })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Exceptions in force now.
    pub fn live_exceptions(&self) -> usize {
        self.exceptions.load().len()
    }

    /// The metrics in Prometheus text: counters from the data path, gauges sampled now.
    pub fn render_metrics(&self) -> String {
        let keys = self.verifier.keys();
        let shared = &self.shared;
        let gauges = crate::metrics::Gauges {
            audit_queue_depth: self.audit.queue_depth(),
            audit_healthy: self.audit.is_healthy(),
            jwks_age_seconds: keys.age_secs().map(|s| s as f64),
            jwks_refresh_failures: keys.refresh_failures(),
            live_exceptions: self.live_exceptions() as u64,
            config_loaded_unix: shared.config_loaded_unix.load(Ordering::Relaxed),
            reloads_ok: shared.reloads_applied.load(Ordering::Relaxed),
            reloads_failed: shared.reloads_refused.load(Ordering::Relaxed),
        };
        shared.metrics.render(&gauges)
    }

    /// Open client connections allowed on the data listener.
    pub fn max_connections(&self) -> usize {
        self.limits.max_connections
    }

    pub fn audit(&self) -> &Arc<AuditSink> {
        &self.audit
    }

    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// Ready to take traffic: keys loaded and the trail writable.
    pub fn is_ready(&self) -> bool {
        self.verifier.keys().is_ready() && self.audit.is_healthy()
    }
}

/// What the gateway knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub peer_str: String,
    pub peer_ip: HeaderValue,
    pub tls: bool,
    /// The TLS server name the client asked for, lower-cased.
    pub sni: Option<String>,
    pub cert_subject: Option<String>,
    /// Framing conflicts hyper resolved silently (HTTP/1.1 only).
    pub framing: Arc<framing::FramingFlags>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool, sni: Option<String>) -> ConnInfo {
        ConnInfo {
            peer,
            peer_str: peer.to_string(),
            peer_ip: HeaderValue::from_str(&peer.ip().to_string())
                .unwrap_or(HeaderValue::from_static("unknown")),
            tls,
            sni: sni.map(|s| s.to_ascii_lowercase()),
            cert_subject: None,
            framing: Arc::default(),
        }
    }
}

/// Request ids: a random per-process prefix and a counter — unique, cheap, no syscall.
struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> RequestIds {
        let mut seed = [0u8; 8];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed);
        RequestIds {
            prefix: hex::encode(seed),
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n:08x}", self.prefix)
    }
}

/// The state of one request as it moves through the pipeline; what the audit record needs.
struct Exchange<'g> {
    gw: &'g Gateway,
    conn: &'g ConnInfo,
    started: Instant,
    request_id: HeaderValue,
    /// Gateway-made and unique even when the client chose `request_id`: the trail's join key
    /// between a decision and its completion.
    exchange: String,
    method: Method,
    host: String,
    path: String,
    query: Option<String>,
    workspace: Option<Arc<Workspace>>,
    principal: Option<Arc<Principal>>,
    action: Option<Action>,
    asset: Option<Asset>,
    /// The error format the client understands.
    dialect: Dialect,
    /// What an S3 request names and presents, for the record.
    s3: Option<s3::S3Record>,
}

impl Exchange<'_> {
    fn request_id_str(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }

    /// Writes the decision record; an error means the request must not go on.
    async fn record(&self, decision: &Decision) -> Result<(), crate::audit::AuditError> {
        let ts = timestamp(SystemTime::now());
        let s3_asset = self.s3.as_ref().map(s3::S3Record::asset);
        let credential = self.s3.as_ref().and_then(s3::S3Record::credential);
        let workspace = match (&self.workspace, &self.s3) {
            (Some(w), _) => Some(w.name.as_str()),
            (None, Some(s3)) => s3.workspace.as_deref(),
            (None, None) => None,
        };
        let record = DecisionRecord {
            ts: &ts,
            gateway: &self.gw.gateway_id,
            request_id: self.request_id_str(),
            exchange: &self.exchange,
            client: ClientInfo {
                addr: &self.conn.peer_str,
                cert_subject: self.conn.cert_subject.as_deref(),
            },
            principal: self.principal.as_deref(),
            workspace,
            request: RequestInfo {
                method: self.method.as_str(),
                host: &self.host,
                path: &self.path,
                query: self.query.as_deref(),
            },
            action: self.action.as_ref(),
            asset: self.asset.as_ref(),
            s3_asset: s3_asset.as_ref(),
            credential: credential.as_ref(),
            decision,
        };
        let written = self.gw.audit.record_decision(record.to_json()).await;
        if written.is_ok() {
            self.count(decision);
        }
        written
    }

    /// Counts the decision in the metrics: atomics only, labels are static strings and a
    /// workspace id looked up by index (or, for S3, among a handful of names).
    fn count(&self, decision: &Decision) {
        let workspace = match (&self.workspace, &self.s3) {
            (Some(w), _) => self.gw.workspace_ids.get(w.client).map_or(0, |(_, id)| *id),
            (None, Some(s3)) => s3.workspace.as_deref().map_or(0, |name| {
                self.gw
                    .workspace_ids
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(0, |(_, id)| *id)
            }),
            (None, None) => 0,
        };
        let outcome = if decision.would_deny.is_some() {
            "report_only"
        } else {
            decision.effect.as_str()
        };
        let category = self.action.map_or("-", |a| a.category.as_str());
        self.gw
            .shared
            .metrics
            .count_request(workspace, category, outcome, decision.rule);
    }

    fn completion(&self) -> Completion {
        Completion::new(
            self.gw.audit.clone(),
            self.gw.shared.metrics.clone(),
            self.gw.gateway_id.clone(),
            self.request_id_str().to_owned(),
            self.exchange.clone(),
            self.started,
        )
    }

    /// Records a refusal and answers it. If even the record cannot be written, the answer
    /// is 503: the trail is the one thing that must not silently miss a request.
    async fn refuse(
        &self,
        refusal: Refusal,
        rule: &'static str,
        reason: impl Into<Cow<'static, str>>,
    ) -> Response<ProxyBody> {
        let decision = Decision::deny(rule, reason);
        self.refuse_with(refusal, &decision).await
    }

    async fn refuse_with(&self, refusal: Refusal, decision: &Decision) -> Response<ProxyBody> {
        if let Err(e) = self.record(decision).await {
            return self.unrecordable(e);
        }
        log_decision(self, decision);
        let response = refusal_response_in(
            self.dialect,
            refusal,
            decision.rule,
            &decision.reason,
            &self.request_id,
        );
        let len = http_body::Body::size_hint(response.body())
            .exact()
            .unwrap_or(0);
        self.completion().finish(response.status().as_u16(), len);
        response
    }

    /// Charges the request to its principal's rate; over it, the request is refused with 429
    /// and `Retry-After`, and recorded like any refusal. Anonymous requests (login and
    /// discovery) are not charged: they carry no principal to charge, and the connection cap
    /// bounds them.
    ///
    /// `bucket` is what the request is charged to: the principal's id when its identity was
    /// verified (a JWT); for S3, whose signature only the upstream can check, the claimed
    /// principal together with the client's address, so someone quoting another principal's
    /// access key id cannot spend that principal's rate.
    async fn over_rate(&self, principal: &Principal, bucket: &str) -> Option<Response<ProxyBody>> {
        if principal.kind == crate::identity::PrincipalKind::Anonymous {
            return None;
        }
        let wait = self.gw.shared.limiter.check(bucket, self.started).err()?;
        let secs = crate::limits::retry_after_secs(wait);
        self.gw.shared.metrics.rate_limited();
        let reason = format!(
            "{} is over its request rate ({} per second, burst {}); retry after {secs} s",
            principal.id,
            self.gw.limits.per_principal_rps.unwrap_or(0),
            self.gw.limits.burst,
        );
        let mut response = self
            .refuse(Refusal::TooManyRequests, "limits.rate", reason)
            .await;
        if response.status() == http::StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        Some(response)
    }

    fn unrecordable(&self, e: crate::audit::AuditError) -> Response<ProxyBody> {
        self.count(&Decision::deny("audit.unavailable", ""));
        tracing::error!(request_id = self.request_id_str(), error = %e, "request refused: the audit trail cannot take its record");
        refusal_response_in(
            self.dialect,
            Refusal::Unavailable,
            "audit.unavailable",
            "the audit trail cannot record this request right now, so it was not forwarded; retry shortly",
            &self.request_id,
        )
    }
}

fn log_decision(x: &Exchange<'_>, d: &Decision) {
    tracing::info!(
        request_id = x.request_id_str(),
        principal = x.principal.as_ref().map(|p| p.id.as_str()).unwrap_or("-"),
        workspace = x.workspace.as_ref().map(|w| w.name.as_str()).unwrap_or("-"),
        method = x.method.as_str(),
        path = %x.path,
        action = x.action.map(|a| a.name).unwrap_or("-"),
        effect = d.effect.as_str(),
        rule = d.rule,
        "decision"
    );
}

/// Handles one request end to end. Never fails: every error becomes a response.
pub async fn handle(
    gw: Arc<Gateway>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    let exchange = gw.request_ids.next();
    let request_id = client_request_id(req.headers()).unwrap_or_else(|| {
        HeaderValue::from_str(&exchange).unwrap_or(HeaderValue::from_static("-"))
    });
    let mut x = Exchange {
        gw: &gw,
        conn: &conn,
        started: Instant::now(),
        request_id,
        exchange,
        method: req.method().clone(),
        host: String::new(),
        path: String::new(),
        query: req.uri().query().map(|q| scrub_query(q).into_owned()),
        workspace: None,
        principal: None,
        action: None,
        asset: None,
        dialect: Dialect::Databricks,
        s3: None,
    };
    let mut response = pipeline(&mut x, req).await;
    response
        .headers_mut()
        .insert("x-request-id", x.request_id.clone());
    Ok(response)
}

async fn pipeline(x: &mut Exchange<'_>, req: Request<Incoming>) -> Response<ProxyBody> {
    // The recorded path is bounded; request targets are ASCII, so cutting bytes is safe.
    let raw_path = req.uri().path();
    let raw_path = scrub_path(raw_path);
    x.path = if raw_path.len() > 2048 && raw_path.is_char_boundary(2048) {
        format!("{}...", &raw_path[..2048])
    } else {
        raw_path.into_owned()
    };
    if x.conn.framing.take_request_conflicted() {
        if let Some(h) = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
        {
            x.host = h.to_owned();
        }
        return x
            .refuse(
                Refusal::BadRequest,
                "request.malformed",
                "the request has both Content-Length and Transfer-Encoding, or framing that cannot be read unambiguously",
            )
            .await;
    }
    let authority = match check_framing(x.conn.sni.as_deref(), &x.method, req.uri(), req.headers())
    {
        Ok(a) => a,
        Err(refused) => {
            x.host = refused.host;
            return x
                .refuse(refused.refusal, refused.rule, refused.reason)
                .await;
        }
    };
    if matches!(x.gw.routes.route(&authority), Route::S3) {
        x.host = authority;
        return s3::pipeline(x, req).await;
    }
    let routed = match classify_for_workspace(
        &x.gw.routes,
        &authority,
        &x.method,
        req.version(),
        req.uri(),
        req.headers(),
    ) {
        Ok(r) => r,
        Err(refused) => {
            x.host = refused.host;
            x.workspace = refused.workspace;
            return x
                .refuse(refused.refusal, refused.rule, refused.reason)
                .await;
        }
    };
    let Routed {
        authority,
        workspace,
        classification,
        upstream_uri,
        ..
    } = routed;
    x.host = authority;
    x.workspace = Some(workspace.clone());
    x.action = Some(classification.action);
    x.asset = classification.asset.clone();

    // ---- identify ----
    let principal = if classification.action.category == classify::Category::Auth {
        Arc::new(Principal::anonymous())
    } else {
        match identify(x.gw, req.headers().get(header::AUTHORIZATION)).await {
            Ok(p) => p,
            Err(e) => {
                let refusal = if e == IdentityError::KeysUnavailable {
                    Refusal::Unavailable
                } else {
                    Refusal::Unauthenticated
                };
                return x.refuse(refusal, e.rule(), e.to_string()).await;
            }
        }
    };
    x.principal = Some(principal.clone());
    if let Some(refused) = x.over_rate(&principal, &principal.id).await {
        return refused;
    }

    // ---- bounded body inspection where the decision depends on the body ----
    let (parts, incoming) = req.into_parts();
    let body = if classification.body_check == BodyCheck::None {
        ForwardBody::Stream(incoming)
    } else if parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return x
            .refuse(
                Refusal::BadRequest,
                "body.malformed",
                "this request's body must be inspected and cannot be compressed (Content-Encoding)",
            )
            .await;
    } else {
        match read_bounded(incoming, x.gw.body_timeout).await {
            Ok(bytes) => {
                match inspect(classification.body_check, &bytes) {
                    BodyVerdict::Clean => {}
                    BodyVerdict::Denied { action, why: _ } => x.action = Some(action),
                    BodyVerdict::Malformed(why) => {
                        return x
                            .refuse(
                                Refusal::BadRequest,
                                "body.malformed",
                                format!(
                                "the request body must be inspected and could not be read: {why}"
                            ),
                            )
                            .await
                    }
                }
                ForwardBody::Buffered(bytes)
            }
            Err(e) => {
                let (refusal, rule, reason) = e.refusal();
                return x.refuse(refusal, rule, reason).await;
            }
        }
    };

    // ---- decide ----
    let action = x.action.unwrap_or(classify::Action::UNKNOWN_API);
    let decision = policy::decide(
        &x.gw.rules,
        &principal,
        &workspace.policy,
        &action,
        x.asset.as_ref(),
        &x.gw.exceptions.load().at(crate::exceptions::now_ms()),
    );
    if decision.effect == Effect::Deny {
        return x.refuse_with(Refusal::Forbidden, &decision).await;
    }

    // ---- audit, then forward ----
    if let Err(e) = x.record(&decision).await {
        return x.unrecordable(e);
    }
    log_decision(x, &decision);
    forward(x, &workspace, upstream_uri, parts, body).await
}

/// Headers some frameworks use to change the method after routing; classification trusts
/// the request method, so these are refused rather than forwarded.
const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// A request routed to a workspace and classified.
pub struct Routed {
    pub authority: String,
    pub workspace: Arc<Workspace>,
    pub normalized: NormalizedPath,
    pub classification: Classification,
    /// Where an allowed request goes: the workspace upstream, the normalised path (exactly
    /// what was classified) and the query as sent.
    pub upstream_uri: Uri,
}

/// Why a request was refused before identity was even looked at.
pub struct Refused {
    pub refusal: Refusal,
    pub rule: RuleId,
    pub reason: Cow<'static, str>,
    pub host: String,
    pub workspace: Option<Arc<Workspace>>,
}

impl Refused {
    fn new(
        refusal: Refusal,
        rule: RuleId,
        reason: Cow<'static, str>,
        host: &str,
        workspace: Option<&Arc<Workspace>>,
    ) -> Refused {
        Refused {
            refusal,
            rule,
            reason,
            host: host.to_owned(),
            workspace: workspace.cloned(),
        }
    }
}

/// Checks every request must pass before it is routed: pure. Refuses what different parsers
/// could read differently (several Host or Authorization headers, both Content-Length and
/// Transfer-Encoding, an absolute-form target naming another host, a TLS name that disagrees
/// with Host, method overrides, bodies on GET/HEAD, a Host that is not text). Returns the
/// authority to route on and forward: the Host line, or without one the request target's
/// (h2's `:authority`, an absolute-form target); neither is refused.
pub fn check_framing(
    sni: Option<&str>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<String, Refused> {
    let refuse = Refused::new;
    let host_header = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if headers.get_all(header::HOST).iter().nth(1).is_some() {
        return Err(refuse(
            Refusal::BadRequest,
            "request.malformed",
            "the request has several Host headers".into(),
            host_header.unwrap_or(""),
            None,
        ));
    }
    if headers.contains_key(header::HOST) && host_header.is_none() {
        return Err(refuse(
            Refusal::BadRequest,
            "request.malformed",
            "the Host header is not a readable authority".into(),
            "",
            None,
        ));
    }
    if headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .nth(1)
        .is_some()
    {
        return Err(refuse(
            Refusal::BadRequest,
            "request.malformed",
            "the request has several Authorization headers".into(),
            host_header.unwrap_or(""),
            None,
        ));
    }
    if (method == Method::GET || method == Method::HEAD) && carries_body(headers) {
        return Err(refuse(
            Refusal::BadRequest,
            "request.malformed",
            "GET and HEAD requests may not carry a body: the gateway decides on the URL alone"
                .into(),
            host_header.unwrap_or(""),
            None,
        ));
    }
    if METHOD_OVERRIDES.iter().any(|h| headers.contains_key(*h)) {
        return Err(refuse(
            Refusal::BadRequest,
            "request.malformed",
            "method-override headers are not accepted: the gateway decides on the request's real method".into(),
            host_header.unwrap_or(""),
            None,
        ));
    }
    if headers.contains_key(header::CONTENT_LENGTH)
        && headers.contains_key(header::TRANSFER_ENCODING)
    {
        return Err(refuse(
            Refusal::BadRequest,
            "request.malformed",
            "the request has both Content-Length and Transfer-Encoding".into(),
            host_header.unwrap_or(""),
            None,
        ));
    }
    let authority = match (uri.authority(), host_header) {
        (Some(a), Some(h)) => {
            let same = matches!((host_of(a.as_str()), host_of(h)), (Some(x), Some(y)) if x.eq_ignore_ascii_case(y));
            if !same {
                return Err(refuse(
                    Refusal::BadRequest,
                    "request.malformed",
                    "the absolute-form request target names a different host than the Host header"
                        .into(),
                    h,
                    None,
                ));
            }
            // The Host line is what an HTTP/1.1 client signs and what is forwarded.
            h
        }
        (Some(a), None) => a.as_str(),
        (None, Some(h)) => h,
        (None, None) => {
            return Err(refuse(
                Refusal::BadRequest,
                "request.malformed",
                "the request names no host".into(),
                "",
                None,
            ))
        }
    };
    if let (Some(sni), Some(host)) = (sni, host_of(authority)) {
        if !sni.eq_ignore_ascii_case(host) {
            return Err(refuse(
                Refusal::Misdirected,
                "request.misdirected",
                "the TLS server name (SNI) and the Host header name different hosts".into(),
                authority,
                None,
            ));
        }
    }
    Ok(authority.to_owned())
}

/// Routing and classification of a Databricks workspace request: pure, shared by the data
/// path and `explain`. Refuses paths that cannot be normalised unambiguously.
pub fn route_and_classify(
    routes: &RouteTable,
    sni: Option<&str>,
    method: &Method,
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Routed, Refused> {
    let authority = check_framing(sni, method, uri, headers)?;
    classify_for_workspace(routes, &authority, method, version, uri, headers)
}

/// After `check_framing`: the workspace, the normalised path, the classification and where
/// an allowed request goes.
fn classify_for_workspace(
    routes: &RouteTable,
    authority: &str,
    method: &Method,
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Routed, Refused> {
    let refuse = Refused::new;
    let workspace = match routes.route(authority) {
        Route::Workspace(w) => w,
        Route::S3 | Route::Unknown => {
            return Err(refuse(
                Refusal::Forbidden,
                "route.unknown_host",
                "this gateway does not route that host; egress is deny-by-default".into(),
                authority,
                None,
            ))
        }
    };
    // A path, or a parameter naming the asset, with two plausible readings.
    let unnormalisable = |why: String| {
        refuse(
            Refusal::BadRequest,
            "request.unnormalisable",
            why.into(),
            authority,
            Some(&workspace),
        )
    };
    let normalized = classify::normalize_path(uri.path()).map_err(|e| {
        unnormalisable(format!(
            "the request path is ambiguous and was refused: {e}"
        ))
    })?;
    let mut classification = classify::databricks::classify(method, &normalized, uri.query())
        .map_err(|e| unnormalisable(format!("{e}; the request was refused")))?;
    if wants_upgrade(version, headers) {
        let websocket = headers
            .get_all(header::UPGRADE)
            .iter()
            .all(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        if !websocket {
            return Err(refuse(
                Refusal::BadRequest,
                "request.malformed",
                "only WebSocket upgrades are accepted".into(),
                authority,
                Some(&workspace),
            ));
        }
        let blocked = matches!(
            classification.action.category,
            classify::Category::Download | classify::Category::Credentials
        ) || !classification.action.known;
        if !blocked {
            classification.action = WEBSOCKET;
        }
    }
    let path = normalized.encoded();
    let mut target = String::with_capacity(path.len() + 64);
    target.push_str(workspace.upstream.scheme_str());
    target.push_str("://");
    target.push_str(&workspace.upstream.authority);
    target.push_str(&path);
    if let Some(q) = uri.query() {
        target.push('?');
        target.push_str(q);
    }
    let Ok(upstream_uri) = target.parse::<Uri>() else {
        return Err(refuse(
            Refusal::BadRequest,
            "request.malformed",
            "the request target cannot be forwarded".into(),
            authority,
            Some(&workspace),
        ));
    };
    Ok(Routed {
        authority: authority.to_owned(),
        workspace,
        normalized,
        classification,
        upstream_uri,
    })
}

async fn identify(
    gw: &Gateway,
    authorization: Option<&HeaderValue>,
) -> Result<Arc<Principal>, IdentityError> {
    let value = authorization.map(|v| v.as_bytes());
    match gw.verifier.identify(value) {
        Err(IdentityError::UnknownKey) => {
            // The provider may have rotated its keys: refresh (rate-limited) and retry once —
            // also when another request's refresh just installed the key while we waited.
            if gw.verifier.unknown_kid(value).is_some() {
                gw.verifier.keys().refresh_for_unknown_kid().await;
                return gw.verifier.identify(value);
            }
            Err(IdentityError::UnknownKey)
        }
        other => other,
    }
}

enum BodyReadError {
    TooLarge,
    TimedOut,
    Failed,
}

impl BodyReadError {
    fn refusal(&self) -> (Refusal, RuleId, &'static str) {
        match self {
            BodyReadError::TooLarge => (
                Refusal::TooLarge,
                "body.too_large",
                "the request body must be inspected and is larger than 1 MiB",
            ),
            BodyReadError::TimedOut => (
                Refusal::RequestTimeout,
                "body.timeout",
                "the request body must be inspected and did not arrive in time",
            ),
            BodyReadError::Failed => (
                Refusal::BadRequest,
                "body.malformed",
                "the request body could not be read",
            ),
        }
    }
}

async fn read_bounded(body: Incoming, deadline: Duration) -> Result<Bytes, BodyReadError> {
    if http_body::Body::size_hint(&body)
        .exact()
        .is_some_and(|n| n > MAX_INSPECTED_BODY as u64)
    {
        return Err(BodyReadError::TooLarge);
    }
    let collect = Limited::new(body, MAX_INSPECTED_BODY).collect();
    match tokio::time::timeout(deadline, collect).await {
        Err(_) => Err(BodyReadError::TimedOut),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(BodyReadError::TooLarge),
        Ok(Err(_)) => Err(BodyReadError::Failed),
    }
}

/// The request body on its way upstream: streamed, or the bytes we had to inspect.
enum ForwardBody {
    Stream(Incoming),
    Buffered(Bytes),
}

impl ForwardBody {
    /// Whether there is nothing to send: no bytes buffered, or a stream already at its end
    /// (an HTTP/2 request without DATA frames, an HTTP/1.1 request without a body).
    fn is_empty(&self) -> bool {
        match self {
            ForwardBody::Buffered(bytes) => bytes.is_empty(),
            ForwardBody::Stream(incoming) => http_body::Body::is_end_stream(incoming),
        }
    }

    /// The body to send, counting what goes up into the completion record. With a gate
    /// (`Expect: 100-continue`), a streamed body waits for the upstream's go-ahead.
    fn into_upstream(self, completion: &Completion, gate: Option<Arc<ContinueGate>>) -> ProxyBody {
        match self {
            ForwardBody::Buffered(bytes) => {
                completion
                    .bytes_in
                    .store(bytes.len() as u64, Ordering::Relaxed);
                Full::new(bytes)
                    .map_err(|never| match never {})
                    .boxed_unsync()
            }
            ForwardBody::Stream(incoming) => {
                let counted = CountingBody::new(incoming, completion.bytes_in.clone());
                match gate {
                    Some(gate) => GatedBody::new(counted, gate).boxed_unsync(),
                    None => counted.boxed_unsync(),
                }
            }
        }
    }
}

/// For a request that asks `Expect: 100-continue`: a gate the upstream's `100 Continue`
/// opens, registered on the upstream request. The caller opens it too once the upstream's
/// final answer is in (the body is then either not needed or sent after all).
pub(crate) fn continue_gate(parts: &http::request::Parts) -> Option<Arc<ContinueGate>> {
    let expects = parts
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    expects.then(|| Arc::new(ContinueGate::default()))
}

pub(crate) fn open_on_continue<B>(req: &mut Request<B>, gate: &Option<Arc<ContinueGate>>) {
    if let Some(gate) = gate.clone() {
        hyper::ext::on_informational(req, move |res| {
            if res.status() == http::StatusCode::CONTINUE {
                gate.open();
            }
        });
    }
}

/// Whether the head announces a body (a non-zero length, or any transfer coding).
fn carries_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// What kind of upstream failure a pooled-client error is, for the metrics.
pub(crate) fn client_error_kind(e: &hyper_util::client::legacy::Error) -> UpstreamError {
    if e.is_connect() {
        // The connector wraps TLS failures too; its message says which.
        let text = format!("{e:?}");
        if text.contains("Tls") || text.contains("certificate") || text.contains("handshake") {
            UpstreamError::Tls
        } else {
            UpstreamError::Connect
        }
    } else {
        UpstreamError::Protocol
    }
}

fn pipeline_error_kind(e: &pipeline::PipelineError) -> UpstreamError {
    use pipeline::PipelineError as P;
    match e {
        P::Connect(_) => UpstreamError::Connect,
        P::Timeout => UpstreamError::Timeout,
        P::Closed | P::Io(_) | P::Incomplete => UpstreamError::Reset,
        P::Malformed(_) | P::Desync(_) => UpstreamError::Protocol,
        _ => UpstreamError::Other,
    }
}

/// Whether a request may share a pipelined upstream connection: idempotent and bodiless,
/// so it can be retried if the connection dies before its answer.
fn pipelinable(method: &Method, headers: &HeaderMap) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
        && !headers.contains_key(header::CONTENT_LENGTH)
        && !headers.contains_key(header::TRANSFER_ENCODING)
        && !headers.contains_key(header::EXPECT)
}

/// Whether the request asks to switch protocols (`Connection: upgrade` + `Upgrade`).
fn wants_upgrade(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// An upgraded connection is an opaque tunnel after its first request, so only WebSocket is
/// let through, and it is named as what it is in the trail unless its path is already blocked.
const WEBSOCKET: Action = Action::new("websocket.open", classify::Category::Execute);

async fn forward(
    x: &mut Exchange<'_>,
    workspace: &Workspace,
    uri: Uri,
    mut parts: http::request::Parts,
    body: ForwardBody,
) -> Response<ProxyBody> {
    let upgrade = wants_upgrade(parts.version, &parts.headers);
    let client_upgrade = if upgrade {
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };

    // Decided on the request as the client sent it: stripping hop-by-hop headers below
    // removes Transfer-Encoding, which would hide a chunked body.
    let bodiless = pipelinable(&parts.method, &parts.headers) && body.is_empty();
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers, upgrade);
    // Host is the workspace's upstream authority, set here rather than left to the HTTP
    // client, so every client (pooled, upgrade, pipelined) sends the same one.
    if set_forwarded(
        &mut parts.headers,
        &x.conn.peer_ip,
        if x.conn.tls { "https" } else { "http" },
        &x.host,
        &workspace.upstream.authority,
        &x.request_id,
    )
    .is_err()
    {
        return refusal_response(
            Refusal::BadRequest,
            "request.malformed",
            "the upstream's authority cannot be sent as Host",
            &x.request_id,
        );
    }
    let completion = x.completion();
    let gate = continue_gate(&parts);
    let body = body.into_upstream(&completion, gate.clone());
    let mut upstream_req = Request::from_parts(parts, body);
    open_on_continue(&mut upstream_req, &gate);

    let clients = &x.gw.clients[workspace.client];
    // Keyed by principal: an anonymous caller (OpenID discovery) is nobody to key by.
    let pipeline = match (&clients.pipelines, &x.principal) {
        (Some(pipelines), Some(principal))
            if !upgrade
                && bodiless
                && principal.kind != crate::identity::PrincipalKind::Anonymous =>
        {
            Some(pipelines.get(&principal.id))
        }
        _ => None,
    };
    let sent = Instant::now();
    let result = match pipeline {
        Some(pipeline) => {
            let (mut parts, body) = upstream_req.into_parts();
            drop(body);
            // Origin-form on the wire; Host is already pinned above.
            if let Some(pq) = parts.uri.path_and_query().cloned() {
                parts.uri = Uri::from(pq);
            }
            tokio::time::timeout(
                x.gw.upstream_timeout,
                pipeline.send(Request::from_parts(parts, ())),
            )
            .await
            .map(|r| {
                r.map(|r| r.map(Either::Right))
                    .map_err(|e| (pipeline_error_kind(&e), e.to_string()))
            })
        }
        None => {
            let client = if upgrade {
                &clients.upgrade
            } else {
                &clients.pooled
            };
            tokio::time::timeout(x.gw.upstream_timeout, pooled::send(client, upstream_req))
                .await
                .map(|r| {
                    r.map(|r| r.map(Either::Left))
                        .map_err(|e| (e.kind(), e.to_string()))
                })
        }
    };
    if let Some(gate) = &gate {
        gate.abort_if_closed();
    }
    let mut completion = completion;
    let upstream_us = sent.elapsed().as_micros() as u64;
    completion.upstream_us = Some(upstream_us);
    let metrics = &x.gw.shared.metrics;
    let mut response = match result {
        Ok(Ok(r)) => {
            metrics.upstream_duration().observe_us(upstream_us);
            r
        }
        Err(_) => {
            metrics.upstream_error(UpstreamError::Timeout);
            tracing::warn!(request_id = x.request_id_str(), workspace = %workspace.name, "upstream did not answer in time");
            completion.error = Some("the upstream did not answer in time");
            let response = refusal_response(
                Refusal::GatewayTimeout,
                "upstream.timeout",
                "the workspace upstream did not answer in time",
                &x.request_id,
            );
            completion.status = response.status().as_u16();
            return response;
        }
        Ok(Err((kind, e))) => {
            metrics.upstream_error(kind);
            tracing::warn!(request_id = x.request_id_str(), workspace = %workspace.name, error = %e, "upstream request failed");
            completion.error = Some(match kind {
                UpstreamError::Protocol => {
                    "the upstream's answer failed or broke HTTP framing (a 408 included); its connection was ended"
                }
                _ => "the upstream could not be reached or failed",
            });
            let response = refusal_response(
                Refusal::BadGateway,
                "upstream.failed",
                "the workspace upstream could not be reached",
                &x.request_id,
            );
            completion.status = response.status().as_u16();
            return response;
        }
    };
    completion.status = response.status().as_u16();

    if let Some(client_upgrade) = client_upgrade {
        if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(splice_upgraded(
                client_upgrade,
                upstream_upgrade,
                completion,
                x.gw.stopping.clone(),
            ));
            let (mut parts, _) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers, true);
            strip_console_set_cookies(&mut parts.headers);
            return Response::from_parts(
                parts,
                http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            );
        }
    }

    let (mut parts, incoming) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    strip_console_set_cookies(&mut parts.headers);
    Response::from_parts(
        parts,
        ResponseBody::new(incoming, completion).boxed_unsync(),
    )
}

/// Copies bytes both ways after a WebSocket (or other) upgrade; the completion record is
/// written when either side closes.
async fn splice_upgraded(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    mut completion: Completion,
    stopping: Stopping,
) {
    match tokio::try_join!(client, upstream) {
        Ok((c, u)) => {
            let mut c = TokioIo::new(c);
            let mut u = TokioIo::new(u);
            tokio::select! {
                copied = tokio::io::copy_bidirectional(&mut c, &mut u) => match copied {
                    Ok((to_upstream, to_client)) => {
                        completion
                            .bytes_in
                            .fetch_add(to_upstream, Ordering::Relaxed);
                        completion.bytes_out = to_client;
                        completion.error = None;
                    }
                    Err(_) => completion.error = Some("the upgraded connection failed"),
                },
                // hyper's graceful shutdown no longer sees an upgraded connection: cut it
                // once the grace period is over, so its completion record is still written.
                () = stopping.after_grace() => {
                    completion.error = Some("the gateway shut down during the upgraded connection");
                }
            }
        }
        Err(_) => completion.error = Some("the protocol upgrade did not complete"),
    }
}

/// Lets long-lived work (upgraded connections) learn that the gateway is stopping.
#[derive(Clone)]
pub struct Stopping {
    signal: tokio::sync::watch::Receiver<bool>,
    grace: Duration,
}

impl Stopping {
    pub fn new(signal: tokio::sync::watch::Receiver<bool>, grace: Duration) -> Stopping {
        Stopping { signal, grace }
    }

    /// Resolves once shutdown has begun and the grace period has passed.
    pub async fn after_grace(&self) {
        let mut signal = self.signal.clone();
        while !*signal.borrow_and_update() {
            if signal.changed().await.is_err() {
                // The gateway value is gone: nothing left to wait for.
                break;
            }
        }
        tokio::time::sleep(self.grace).await;
    }
}
