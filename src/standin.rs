//! A stand-in Databricks workspace upstream for the demo and the tests.
//!
//! It answers what the official clients expect (see `reference/databricks.md`) so that an
//! allowed request really succeeds, and it records every request that reaches it, so a test
//! can prove that a blocked request never left the gateway.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body_len: usize,
}

/// A running stand-in upstream.
pub struct StandIn {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
    tls: bool,
}

/// The file content the stand-in's DBFS and Files API serve.
pub const FILE_CONTENT: &[u8] = b"customer_id,balance\n1001,25000.00\n1002,310.50\n";

impl StandIn {
    /// A plain-HTTP stand-in on 127.0.0.1.
    pub async fn start() -> std::io::Result<StandIn> {
        StandIn::start_with(None).await
    }

    /// A stand-in that speaks TLS (h2 and HTTP/1.1) with the given server configuration.
    pub async fn start_tls(config: rustls::ServerConfig) -> std::io::Result<StandIn> {
        StandIn::start_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> std::io::Result<StandIn> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = seen.clone();
        let tls_on = tls.is_some();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let record = record.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(record.clone(), req));
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                                .await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder
                                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        Ok(StandIn {
            addr,
            seen,
            task,
            tls: tls_on,
        })
    }

    /// The base URL; a TLS stand-in is named `localhost` so its certificate verifies.
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// Everything received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Whether any request for this path (exact, as received) reached the upstream.
    pub fn saw_path(&self, path: &str) -> bool {
        self.seen().iter().any(|s| s.path == path)
    }

    /// Whether any request whose path contains `fragment` reached the upstream.
    pub fn saw_path_containing(&self, fragment: &str) -> bool {
        self.seen().iter().any(|s| s.path.contains(fragment))
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    record: Arc<Mutex<Vec<Seen>>>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let upgrade = req.headers().contains_key(header::UPGRADE);
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    // An S3-style error on request, so tests can see the upstream's verdict recorded.
    if let Some(code) = query_param(parts.uri.query(), "standin-error") {
        let code: String = code.chars().filter(char::is_ascii_alphanumeric).collect();
        let mut r = Response::new(Full::new(Bytes::from(format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>stand-in</Message></Error>"
        ))));
        *r.status_mut() = StatusCode::FORBIDDEN;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/xml"),
        );
        // Answered from the headers alone, like S3 rejecting a bad signature: the body
        // is never read, so a well-behaved gateway never tells its client to send it.
        if let Ok(mut r) = record.lock() {
            r.push(Seen {
                method: parts.method.clone(),
                path: parts.uri.path().to_owned(),
                query: parts.uri.query().map(str::to_owned),
                headers: parts.headers.clone(),
                body_len: 0,
            });
        }
        return Ok(r);
    }
    let body = if upgrade {
        Bytes::new()
    } else {
        body.collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default()
    };
    if let Ok(mut r) = record.lock() {
        r.push(Seen {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers.clone(),
            body_len: body.len(),
        });
    }
    if let Some(on_upgrade) = on_upgrade {
        // Echo whatever arrives on the upgraded connection.
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 4096];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut().insert(
            header::UPGRADE,
            header::HeaderValue::from_static("websocket"),
        );
        r.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("upgrade"),
        );
        return Ok(r);
    }
    if parts.uri.path() == "/static/slow" {
        let ms: u64 = query_param(parts.uri.query(), "ms")
            .and_then(|m| m.parse().ok())
            .unwrap_or(1000)
            .min(60_000);
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    Ok(canned(
        &parts.method,
        parts.uri.path(),
        parts.uri.query(),
        &body,
    ))
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn canned(method: &Method, path: &str, query: Option<&str>, body: &[u8]) -> Response<Full<Bytes>> {
    let ok = StatusCode::OK;
    match (method.as_str(), path) {
        ("GET", "/.well-known/databricks-config") => json_response(
            StatusCode::NOT_FOUND,
            json!({"error_code": "NOT_FOUND", "message": "no such endpoint"}),
        ),
        (_, "/api/2.0/dbfs/get-status") => json_response(
            ok,
            json!({"path": "/tmp/x.txt", "is_dir": false, "file_size": FILE_CONTENT.len(), "modification_time": 1_700_000_000_000u64}),
        ),
        (_, "/api/2.0/dbfs/list") => json_response(
            ok,
            json!({"files": [{"path": "/tmp/x.txt", "is_dir": false, "file_size": FILE_CONTENT.len(), "modification_time": 1_700_000_000_000u64}]}),
        ),
        (_, "/api/2.0/dbfs/read") => {
            let offset: usize = query_param(query, "offset")
                .and_then(|o| o.parse().ok())
                .unwrap_or(0);
            let chunk = FILE_CONTENT.get(offset..).unwrap_or_default();
            json_response(
                ok,
                json!({"bytes_read": chunk.len(), "data": STANDARD.encode(chunk)}),
            )
        }
        (_, "/api/2.0/workspace/export") => json_response(
            ok,
            json!({"content": STANDARD.encode(b"print('hello')\n"), "file_type": "py"}),
        ),
        (_, "/api/2.0/fs/create-download-url") => json_response(
            StatusCode::NOT_FOUND,
            json!({"error_code": "NOT_FOUND", "message": "not available"}),
        ),
        ("GET", p) if p.starts_with("/api/2.0/fs/files/") => {
            let mut r = Response::new(Full::new(Bytes::from_static(FILE_CONTENT)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/octet-stream"),
            );
            r.headers_mut().insert(
                header::LAST_MODIFIED,
                header::HeaderValue::from_static("Tue, 14 Nov 2023 22:13:20 GMT"),
            );
            r
        }
        (_, p) if p.ends_with("/clusters/list") => json_response(
            ok,
            json!({"clusters": [{"cluster_id": "0101-abc", "cluster_name": "ds-shared", "state": "RUNNING"}]}),
        ),
        (_, p) if p.ends_with("/clusters/get") => json_response(
            ok,
            json!({"cluster_id": "0101-abc", "cluster_name": "ds-shared", "state": "RUNNING"}),
        ),
        (_, p) if p.ends_with("/jobs/runs/get-output") => json_response(
            ok,
            json!({"notebook_output": {"result": "1001,25000.00"}, "metadata": {"run_id": 1}}),
        ),
        (_, "/api/2.0/sql/statements") | (_, "/api/2.0/sql/statements/") => json_response(
            ok,
            json!({"statement_id": "st-1", "status": {"state": "SUCCEEDED"}}),
        ),
        ("POST", "/api/1.2/contexts/create") => json_response(ok, json!({"id": "ctx1"})),
        ("POST", "/api/1.2/commands/execute") => json_response(ok, json!({"id": "cmd1"})),
        (_, "/api/1.2/commands/status") => json_response(
            ok,
            json!({"id": "cmd1", "status": "Finished", "results": {"resultType": "text", "data": "ok"}}),
        ),
        ("GET", "/static/big.bin") => {
            let n: usize = query_param(query, "bytes")
                .and_then(|b| b.parse().ok())
                .unwrap_or(1 << 20)
                .min(256 << 20);
            Response::new(Full::new(Bytes::from(vec![b'x'; n])))
        }
        _ => json_response(
            ok,
            json!({"ok": true, "method": method.as_str(), "path": path, "received_bytes": body.len()}),
        ),
    }
}
