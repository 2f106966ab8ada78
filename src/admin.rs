//! The admin listener: liveness and readiness for orchestrators and load balancers.
//! It never serves workspace traffic and never shows configuration or secrets.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proxy::server::CurrentGateway;
use crate::proxy::Gateway;

pub async fn serve(
    listener: TcpListener,
    current: CurrentGateway,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let current = current.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let gateway = current.load_full();
                        async move { Ok::<_, std::convert::Infallible>(route(&gateway, &req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            _ = shutdown.changed() => break,
        }
    }
}

fn route(gateway: &Gateway, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            let keys = gateway.verifier().keys().is_ready();
            let audit = gateway.audit().is_healthy();
            if keys && audit {
                text(StatusCode::OK, "ready\n")
            } else {
                let body = format!(
                    "not ready: signing keys {}, audit trail {}\n",
                    if keys { "loaded" } else { "not loaded" },
                    if audit { "writable" } else { "failing" }
                );
                text(StatusCode::SERVICE_UNAVAILABLE, &body)
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
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
