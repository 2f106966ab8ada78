//! The admin listener: liveness and readiness for orchestrators and load balancers,
//! Prometheus metrics, configuration reload for operators, and the exceptions API for CDAO
//! approvers. It never serves workspace traffic and never shows
//! configuration or secrets. TLS with the data listener's certificate when one is set.

mod exceptions;

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::exceptions::service::{ApiError, Service};
use crate::identity::{Principal, PrincipalKind};
use crate::proxy::server::{CurrentGateway, Reloader};
use crate::proxy::Gateway;

/// The address of the client a request came from (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::IpAddr);

/// What the admin listener serves from.
#[derive(Clone)]
pub struct Admin {
    pub current: CurrentGateway,
    /// `None` when `[exceptions]` is not configured.
    pub exceptions: Option<Arc<Service>>,
    pub reloader: Arc<Reloader>,
    /// The review console, when `[console]` is configured.
    pub console: Option<Arc<crate::console::Console>>,
    /// A client that has not sent a whole request head within this long is cut off (the
    /// console faces browsers; slow clients must not hold descriptors).
    pub header_read_timeout: std::time::Duration,
}

pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    admin: Admin,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let admin = admin.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => serve_connection(stream, admin, peer).await,
                        Some(acceptor) => {
                            let handshake = tokio::time::timeout(
                                std::time::Duration::from_secs(10),
                                acceptor.accept(stream),
                            );
                            if let Ok(Ok(stream)) = handshake.await {
                                serve_connection(stream, admin, peer).await;
                            }
                        }
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
}

async fn serve_connection<S>(stream: S, admin: Admin, peer: std::net::SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let header_read_timeout = admin.header_read_timeout;
    let svc = service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ClientAddr(peer.ip()));
        let admin = admin.clone();
        async move { Ok::<_, std::convert::Infallible>(route(admin, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

async fn route(admin: Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    if let Some(console) = admin.console.as_ref().filter(|c| c.serves(&path)) {
        return console.answer(admin.exceptions.as_deref(), req).await;
    }
    if path == "/v1/exceptions" || path.starts_with("/v1/exceptions/") {
        let gateway = admin.current.load_full();
        return respond(exceptions::answer(&gateway, admin.exceptions.as_deref(), req).await);
    }
    if path == "/v1/reload" {
        let gateway = admin.current.load_full();
        return respond(reload(&gateway, &admin.reloader, &req));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match path.as_str() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => readiness(&admin.current.load_full()),
        // Counts and latencies only: no principal, path or secret is a label.
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(
                admin.current.load().render_metrics(),
            )));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `POST /v1/reload`: members of `[admin] operator_groups` rebuild the configuration, as
/// SIGHUP does; the answer says what happened (422 with every error when the file is refused).
fn reload(
    gateway: &Gateway,
    reloader: &Reloader,
    req: &Request<Incoming>,
) -> Result<(StatusCode, serde_json::Value), ApiError> {
    if req.method() != Method::POST {
        return Err(api_error(405, "METHOD_NOT_ALLOWED", "POST /v1/reload"));
    }
    let principal = caller(gateway, req)?;
    let operators = reloader.operator_groups();
    if !principal.in_any_group(&operators) {
        return Err(api_error(
            403,
            "NOT_AN_OPERATOR",
            format!(
                "only members of [admin] operator_groups ({}) reload the configuration",
                operators.join(", ")
            ),
        ));
    }
    let outcome = reloader.reload(Some(&principal.id));
    let status = if outcome.applied {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    Ok((
        status,
        serde_json::json!({
            "applied": outcome.applied,
            "errors": outcome.errors,
            "needs_restart": outcome.needs_restart,
        }),
    ))
}

fn api_error(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        code,
        message: message.into(),
    }
}

/// Who is calling the admin API: identified like a data-path caller, and never anonymous.
fn caller<B>(gateway: &Gateway, req: &Request<B>) -> Result<Arc<Principal>, ApiError> {
    let authorization = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let principal = gateway
        .verifier()
        .identify(authorization)
        .map_err(|e| api_error(401, "UNAUTHENTICATED", e.to_string()))?;
    if principal.kind == PrincipalKind::Anonymous {
        return Err(api_error(
            401,
            "UNAUTHENTICATED",
            "an OAuth access token is required",
        ));
    }
    Ok(principal)
}

/// A JSON answer, or a refusal as `{"error_code", "message"}` with its status.
fn respond(result: Result<(StatusCode, serde_json::Value), ApiError>) -> Response<Full<Bytes>> {
    let (status, body) = match result {
        Ok(answer) => answer,
        Err(e) => (
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            serde_json::json!({"error_code": e.code, "message": e.message}),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn readiness(gateway: &Gateway) -> Response<Full<Bytes>> {
    let keys = gateway.verifier().keys().is_ready();
    let audit = gateway.audit().is_healthy();
    if keys && audit {
        return text(StatusCode::OK, "ready\n");
    }
    let body = format!(
        "not ready: signing keys {}, audit trail {}\n",
        if keys { "loaded" } else { "not loaded" },
        if audit { "writable" } else { "failing" }
    );
    text(StatusCode::SERVICE_UNAVAILABLE, &body)
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
