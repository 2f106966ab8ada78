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
use crate::proxy::server::CurrentGateway;
use crate::proxy::Gateway;

/// What the admin listener serves from.
#[derive(Clone)]
pub struct Admin {
    pub current: CurrentGateway,
    /// `None` when `[exceptions]` is not configured.
    pub exceptions: Option<Arc<Service>>,
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
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match path.as_str() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => readiness(&admin.current.load_full()),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
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
