//! Shared harness: the real gateway on port 0, over TLS, in front of the in-process stand-in.

#![allow(dead_code)]

pub mod s3;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gatehouse::proxy::server::{start, Running};
use gatehouse::standin::StandIn;
use gatehouse::testing::{local_client, Fixture, FixtureOptions, ANALYTICS_HOST};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Harness {
    pub fixture: Fixture,
    pub standin: StandIn,
    pub running: Option<Running>,
    pub port: u16,
    _dir: tempfile::TempDir,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::with(FixtureOptions::default(), |_| {}).await
    }

    /// Starts with options; `prepare` runs on the fixture directory before the gateway starts.
    pub async fn with(options: FixtureOptions, prepare: impl FnOnce(&Path)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let standin = StandIn::start().await.unwrap();
        let fixture = Fixture::create(dir.path(), &standin.url(), &options).unwrap();
        prepare(&fixture.audit_dir);
        let running = start(&fixture.config).await.unwrap();
        let port = running.data_addr.port();
        Harness {
            fixture,
            standin,
            running: Some(running),
            port,
            _dir: dir,
        }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    pub fn token(&self, sub: &str, kind: &str, groups: &[&str]) -> String {
        self.fixture.token(sub, kind, groups)
    }

    pub fn alice(&self) -> String {
        self.token("alice@bank.example", "user", &["data-scientists"])
    }

    pub fn service(&self) -> String {
        self.token("sp-aiml-prod", "service_principal", &[])
    }

    pub fn url(&self, host: &str, path: &str) -> String {
        let scheme = if self.running().tls { "https" } else { "http" };
        format!("{scheme}://{host}:{}{path}", self.port)
    }

    /// Sends one request through the gateway with a real HTTP client (HTTP/1.1 or h2).
    pub async fn send(
        &self,
        h2: bool,
        method: Method,
        host: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Reply {
        let client = local_client(&self.fixture.ca_cert, h2).unwrap();
        let mut req = Request::builder().method(method).uri(self.url(host, path));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
            .await
            .expect("gateway answered in time")
            .expect("request went through");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.send(false, Method::GET, ANALYTICS_HOST, path, Some(token), None)
            .await
    }

    /// Writes raw bytes over TLS (SNI `sni`) and reads the whole answer: for requests no
    /// well-behaved client library would send.
    pub async fn raw(&self, sni: &str, request: &[u8]) -> String {
        let tls = gatehouse::tls::client_config(Some(&self.fixture.ca_cert)).unwrap();
        let mut tls = tls;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
        let mut stream = connector.connect(name, tcp).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// A GET on the admin listener (TLS when the gateway has a certificate): the status line
    /// and the body.
    pub async fn admin_get(&self, path: &str) -> String {
        let (status, body) = self.admin(Method::GET, path, None, None).await;
        format!(
            "HTTP/1.1 {status}\r\n\r\n{}",
            String::from_utf8_lossy(&body)
        )
    }

    /// One request to the admin listener with a real client; the status and the body.
    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, Bytes) {
        let running = self.running();
        let scheme = if running.tls { "https" } else { "http" };
        let url = format!("{scheme}://localhost:{}{path}", running.admin_addr.port());
        let client = local_client(&self.fixture.ca_cert, false).unwrap();
        let mut req = Request::builder().method(method).uri(url);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let resp = tokio::time::timeout(
            Duration::from_secs(30),
            client.request(req.body(Full::new(Bytes::from(body))).unwrap()),
        )
        .await
        .expect("admin answered in time")
        .expect("admin request went through");
        let status = resp.status();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    }

    pub fn trail(&self) -> Vec<serde_json::Value> {
        self.fixture.trail()
    }

    /// Rewrites the configuration file so the data scientists' group (alice's) is denied,
    /// and reloads it; the outcome of the reload.
    pub fn deny_data_scientists_and_reload(&self) -> gatehouse::proxy::server::ReloadOutcome {
        let path = &self.fixture.config_path;
        let original = std::fs::read_to_string(path).unwrap();
        let stricter = original.replace(
            r#"deny_groups = ["tenant-martech", "tenant-complaints"]"#,
            r#"deny_groups = ["tenant-martech", "tenant-complaints", "data-scientists"]"#,
        );
        assert_ne!(stricter, original, "the fixture's deny_groups line changed");
        std::fs::write(path, &stricter).unwrap();
        self.running().reload()
    }

    /// Records of one request id, in trail order.
    pub fn records_for(&self, request_id: &str) -> Vec<serde_json::Value> {
        self.trail()
            .into_iter()
            .filter(|r| r["request_id"] == request_id)
            .collect()
    }

    /// Waits (bounded) until the completion record for a request id is in the trail.
    pub async fn completion_for(&self, request_id: &str) -> serde_json::Value {
        for _ in 0..200 {
            if let Some(r) = self
                .records_for(request_id)
                .into_iter()
                .find(|r| r["phase"] == "completion")
            {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no completion record for {request_id}");
    }

    pub async fn stop(mut self) -> Self {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        self
    }
}

/// Rows of a tab-separated fixture, without comments and blank lines.
pub fn fixture_rows(name: &str) -> Vec<Vec<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}
