//! The admin listener: liveness and readiness for orchestrators and load balancers, and the
//! exceptions API for CDAO approvers. It never serves workspace traffic and never shows
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

use crate::exceptions::service::Service;
use crate::proxy::server::{CurrentGateway, Reloader};
use crate::proxy::Gateway;

/// What the admin listener serves from.
#[derive(Clone)]
pub struct Admin {
    pub current: CurrentGateway,
    /// `None` when `[exceptions]` is not configured.
    pub exceptions: Option<Arc<Service>>,
    pub reloader: Arc<Reloader>,
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
                let Ok((stream, _)) = accepted else { continue };
                let admin = admin.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => serve_connection(stream, admin).await,
                        Some(acceptor) => {
                            let handshake = tokio::time::timeout(
                                std::time::Duration::from_secs(10),
                                acceptor.accept(stream),
                            );
                            if let Ok(Ok(stream)) = handshake.await {
                                serve_connection(stream, admin).await;
                            }
                        }
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
}

async fn serve_connection<S>(stream: S, admin: Admin)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let admin = admin.clone();
        async move { Ok::<_, std::convert::Infallible>(route(admin, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

async fn route(admin: Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    if path == "/v1/exceptions" || path.starts_with("/v1/exceptions/") {
        let gateway = admin.current.load_full();
        return exceptions::handle(&gateway, admin.exceptions.as_deref(), req).await;
    }
    if path == "/v1/reload" {
        let gateway = admin.current.load_full();
        return reload(&gateway, &admin.reloader, &req);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match path.as_str() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => readiness(&admin.current.load_full()),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `POST /v1/reload`: members of `[admin] operator_groups` rebuild the configuration, as
/// SIGHUP does; the answer says what happened (422 with every error when the file is refused).
fn reload(
    gateway: &Gateway,
    reloader: &Reloader,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::POST {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            &serde_json::json!({
                "error_code": "METHOD_NOT_ALLOWED", "message": "POST /v1/reload",
            }),
        );
    }
    let authorization = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let principal = match gateway.verifier().identify(authorization) {
        Ok(p) if p.kind != crate::identity::PrincipalKind::Anonymous => p,
        Ok(_) => {
            return json(
                StatusCode::UNAUTHORIZED,
                &serde_json::json!({
                    "error_code": "UNAUTHENTICATED", "message": "an OAuth access token is required",
                }),
            )
        }
        Err(e) => {
            return json(
                StatusCode::UNAUTHORIZED,
                &serde_json::json!({
                    "error_code": "UNAUTHENTICATED", "message": e.to_string(),
                }),
            )
        }
    };
    let operators = reloader.operator_groups();
    if !principal.in_any_group(&operators) {
        return json(
            StatusCode::FORBIDDEN,
            &serde_json::json!({
                "error_code": "NOT_AN_OPERATOR",
                "message": format!("only members of [admin] operator_groups ({}) reload the configuration", operators.join(", ")),
            }),
        );
    }
    let outcome = reloader.reload(Some(&principal.id));
    let status = if outcome.applied {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    json(
        status,
        &serde_json::json!({
            "applied": outcome.applied,
            "errors": outcome.errors,
            "needs_restart": outcome.needs_restart,
        }),
    )
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
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
