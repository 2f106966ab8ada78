//! Fixtures shared by the demo, the integration tests and the benchmarks: a directory with
//! development certificates, a token signer and its JWKS, and a configuration for the three
//! workspaces of the platform in front of given upstreams. Not used by `serve`.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::dev::{generate_certs, write_file, TokenSigner, TokenSpec};

pub const ISSUER: &str = "https://idp.dev.gatehouse";
pub const AUDIENCE: &str = "gatehouse";

/// Hosts of the three workspaces in the fixture configuration.
pub const ANALYTICS_HOST: &str = "analytics.dbx.example";
pub const PARALLEL_HOST: &str = "parallel.dbx.example";
pub const PROD_HOST: &str = "prod.dbx.example";

/// Options for the fixture configuration.
#[derive(Debug, Clone)]
pub struct FixtureOptions {
    pub tls: bool,
    pub unknown_api: &'static str,
    pub durability: &'static str,
    /// Extra host names routed to prod-analytics (e.g. `localhost`, `127.0.0.1`).
    pub analytics_aliases: Vec<String>,
    pub listen: String,
    /// The admin listener (a fixed port when something outside must know it first, such as
    /// the console's identity provider).
    pub admin_listen: String,
    pub report_only: Vec<String>,
    /// Fetch keys from this URL (refreshed every second) instead of the fixture's JWKS file.
    pub jwks_url: Option<String>,
    /// CA file the gateway trusts for upstream TLS (default: the system roots).
    pub upstream_ca: Option<PathBuf>,
    /// Extra `[server]` lines, e.g. `upstream_timeout_ms = 300`.
    pub server_extra: Vec<String>,
    /// Extra sections appended to the file (`[s3]`, `[[bucket]]`, …).
    pub extra_toml: String,
    /// Issuers accepted besides the fixture's own (the console's OpenID Provider).
    pub extra_issuers: Vec<String>,
}

impl Default for FixtureOptions {
    fn default() -> Self {
        FixtureOptions {
            tls: true,
            unknown_api: "deny",
            durability: "group",
            analytics_aliases: vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            listen: "127.0.0.1:0".to_owned(),
            admin_listen: "127.0.0.1:0".to_owned(),
            report_only: Vec::new(),
            jwks_url: None,
            upstream_ca: None,
            server_extra: Vec::new(),
            extra_toml: String::new(),
            extra_issuers: Vec::new(),
        }
    }
}

/// A ready-to-run configuration and the material behind it.
pub struct Fixture {
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub config: Config,
    pub signer: TokenSigner,
    pub ca_cert: PathBuf,
    pub audit_dir: PathBuf,
}

impl Fixture {
    /// Writes certificates, a JWKS and `gatehouse.toml` into `dir`, all three workspaces
    /// forwarding to `upstream`.
    pub fn create(dir: &Path, upstream: &str, options: &FixtureOptions) -> Result<Fixture, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let certs = generate_certs(
            &[
                ANALYTICS_HOST.to_owned(),
                PARALLEL_HOST.to_owned(),
                PROD_HOST.to_owned(),
            ],
            "ci-runner",
        )?;
        certs.write(&dir.join("certs"))?;
        let signer = TokenSigner::generate("dev-key-1")?;
        let jwks = dir.join("jwks.json");
        write_file(&jwks, signer.jwks_json().as_bytes(), false)?;
        let audit_dir = dir.join("audit");
        let text = config_text(dir, upstream, options);
        let config_path = dir.join("gatehouse.toml");
        write_file(&config_path, text.as_bytes(), false)?;
        let config = Config::load(&config_path).map_err(|e| e.to_string())?;
        Ok(Fixture {
            dir: dir.to_path_buf(),
            config_path,
            config,
            signer,
            ca_cert: dir.join("certs/ca.crt"),
            audit_dir,
        })
    }

    /// A token for a principal of the fixture's identity provider.
    pub fn token(&self, subject: &str, principal_type: &str, groups: &[&str]) -> String {
        self.signer.token(&TokenSpec {
            issuer: ISSUER,
            audience: AUDIENCE,
            subject,
            principal_type,
            groups,
            ttl_secs: 3600,
        })
    }

    /// Every record in the audit trail, in file order.
    pub fn trail(&self) -> Vec<serde_json::Value> {
        read_trail(&self.audit_dir)
    }
}

/// Every record of every segment of an audit directory, in chain order.
pub fn read_trail(dir: &Path) -> Vec<serde_json::Value> {
    trail_text(dir)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect()
}

/// The raw text of every segment of an audit directory, in chain order.
pub fn trail_text(dir: &Path) -> String {
    let segments = crate::audit::segment::list(dir).unwrap_or_default();
    segments
        .iter()
        .filter_map(|s| std::fs::read_to_string(&s.path).ok())
        .collect()
}

fn config_text(dir: &Path, upstream: &str, o: &FixtureOptions) -> String {
    let d = dir.display();
    let tls = if o.tls {
        format!("tls_cert = \"{d}/certs/gateway.crt\"\ntls_key = \"{d}/certs/gateway.key\"\n")
    } else {
        String::new()
    };
    let mut analytics_hosts = vec![format!("\"{ANALYTICS_HOST}\"")];
    analytics_hosts.extend(o.analytics_aliases.iter().map(|h| format!("\"{h}\"")));
    let report_only: Vec<String> = o.report_only.iter().map(|r| format!("\"{r}\"")).collect();
    let jwks = match &o.jwks_url {
        Some(url) => format!("jwks_url = \"{url}\"\njwks_refresh_secs = 1"),
        None => format!("jwks_file = \"{d}/jwks.json\""),
    };
    let upstream_ca = o
        .upstream_ca
        .as_ref()
        .map(|ca| format!("upstream_ca = \"{}\"\n", ca.display()))
        .unwrap_or_default();
    format!(
        r#"# Generated test fixture.
[server]
listen = "{listen}"
{tls}admin_listen = "{admin_listen}"
gateway_id = "gw-test"
shutdown_grace_ms = 5000
{server_extra}

[identity]
{jwks}
issuers = ["{ISSUER}"{extra_issuers}]
audiences = ["{AUDIENCE}"]
principal_type_claim = "principal_type"
groups_claim = "groups"
deny_groups = ["tenant-martech", "tenant-complaints"]

[[workspace]]
name = "prod-analytics"
hosts = [{analytics}]
upstream = "{upstream}"
{upstream_ca}humans = "allow"

[[workspace]]
name = "prod-parallel"
hosts = ["{PARALLEL_HOST}"]
upstream = "{upstream}"
{upstream_ca}humans = "config-only"
human_groups = ["aiml-release-managers"]

[[workspace]]
name = "prod"
hosts = ["{PROD_HOST}"]
upstream = "{upstream}"
{upstream_ca}humans = "deny"

[policy]
unknown_api = "{unknown_api}"
report_only = [{report_only}]

[audit]
dir = "{d}/audit"
durability = "{durability}"

{extra_toml}
"#,
        listen = o.listen,
        admin_listen = o.admin_listen,
        analytics = analytics_hosts.join(", "),
        unknown_api = o.unknown_api,
        durability = o.durability,
        report_only = report_only.join(", "),
        server_extra = o.server_extra.join("\n"),
        extra_toml = o.extra_toml,
        extra_issuers = o
            .extra_issuers
            .iter()
            .map(|i| format!(", \"{i}\""))
            .collect::<String>(),
    )
}

/// An HTTPS client that trusts `ca` and resolves every host name to 127.0.0.1, so requests
/// can name the workspace hosts (SNI and Host) while reaching a local gateway.
pub fn local_client(
    ca: &Path,
    h2_only: bool,
) -> Result<
    hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<
            hyper_util::client::legacy::connect::HttpConnector<LoopbackResolver>,
        >,
        http_body_util::Full<bytes::Bytes>,
    >,
    String,
> {
    let mut http =
        hyper_util::client::legacy::connect::HttpConnector::new_with_resolver(LoopbackResolver);
    http.enforce_http(false);
    let tls = crate::tls::client_config(Some(ca))?;
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let connector = if h2_only {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.enable_http1().wrap_connector(http)
    };
    let mut client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new());
    client.http2_only(h2_only);
    Ok(client.build(connector))
}

/// Resolves every name to 127.0.0.1.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoopbackResolver;

impl tower::Service<hyper_util::client::legacy::connect::dns::Name> for LoopbackResolver {
    type Response = std::vec::IntoIter<std::net::SocketAddr>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        std::future::ready(Ok(
            vec![std::net::SocketAddr::from(([127, 0, 0, 1], 0))].into_iter()
        ))
    }
}

/// Actions of the synthetic trail: name, category, effect.
const SYNTHETIC_ACTIONS: &[(&str, &str, &str)] = &[
    ("clusters.list", "metadata", "allow"),
    ("dbfs.read", "download", "deny"),
    ("sql.statements.execute", "execute", "allow"),
    ("workspace.list", "metadata", "allow"),
    ("files.upload", "upload", "allow"),
];

/// Writes `records` records through the real writer (chain, segments, signed digests when
/// `signing_key` is given) for timing the trail's tools on a trail of realistic size. Each
/// request is a decision and a completion shaped like the gateway's own, one a second up to
/// now, spread over 200 principals, 3 workspaces and 5,000 assets, one in five denied.
pub fn synthetic_trail(
    dir: &Path,
    records: u64,
    signing_key: Option<PathBuf>,
) -> Result<(), String> {
    use crate::audit::{timestamp, AuditSink};
    use crate::config::{AuditConfig, Durability};
    use std::time::{Duration, SystemTime};
    let config = AuditConfig {
        dir: dir.to_path_buf(),
        durability: Durability::None,
        signing_key,
        queue_capacity: 65_536,
        segment_max_bytes: 64 * 1024 * 1024,
        segment_max_age: Duration::from_secs(3600),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| e.to_string())?;
    let (sink, handle) = AuditSink::open(&config, "gw-synth").map_err(|e| e.to_string())?;
    let start = SystemTime::now() - Duration::from_secs(records / 2);
    // Ids as a gateway makes them: a random prefix per process, then a counter.
    let prefix = format!(
        "{:016x}",
        start
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64
    );
    rt.block_on(async {
        for n in 0..records / 2 {
            let ts = timestamp(start + Duration::from_secs(n));
            let id = format!("{prefix}-{n:08x}");
            let principal = format!("user{}@bank.example", n % 200);
            let workspace = ["prod-analytics", "prod-parallel", "lab"][(n % 3) as usize];
            let (action, category, effect) = SYNTHETIC_ACTIONS[(n % 5) as usize];
            let asset = format!("dbfs:/mnt/data/table{}/part-{}.parquet", n % 50, n % 100);
            let decision = format!(
                r#"{{"ts":"{ts}","gateway":"gw-synth","request_id":"{id}","exchange":"{id}","phase":"decision","client":{{"addr":"10.1.2.3:51234","cert_subject":null}},"principal":{{"id":"{principal}","type":"user","groups":["data-scientists"],"auth":"jwt"}},"workspace":"{workspace}","request":{{"method":"GET","host":"analytics.dbx.example","path":"/api/2.0/x","query":""}},"action":{{"name":"{action}","category":"{category}"}},"asset":{{"kind":"dbfs","path":"{asset}"}},"decision":{{"effect":"{effect}","rule":"synthetic","reason":"synthetic","exception":null}}}}"#
            );
            let status = if effect == "deny" { 403 } else { 200 };
            let completion = format!(
                r#"{{"ts":"{ts}","gateway":"gw-synth","request_id":"{id}","exchange":"{id}","phase":"completion","status":{status},"bytes_in":0,"bytes_out":{},"duration_us":900,"upstream_us":700,"error":null}}"#,
                n % 4096
            );
            // A full queue only means the writer is behind: wait for it, lose nothing.
            while sink.record_decision(decision.clone().into_bytes()).await.is_err() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            while sink.record_event(completion.clone().into_bytes()).is_err() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    drop(sink);
    handle.join();
    Ok(())
}

/// The loopback OpenID Provider of the tests and the console demo (`tests/oidc/provider.mjs`:
/// panva's oidc-provider, installed by `npm ci --prefix tests/oidc`), with one confidential
/// client, `gatehouse-console`, whose only redirect URI is `redirect`. Stopped when dropped.
pub struct LoopbackProvider {
    child: std::process::Child,
    /// The issuer it names itself by, as its discovery document and ID tokens say.
    pub issuer: String,
}

impl Drop for LoopbackProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LoopbackProvider {
    /// Starts it from the repository at `repo` on a free loopback port; its own log goes to
    /// `log`.
    pub fn start(
        repo: &Path,
        client_secret: &str,
        redirect: &str,
        log: std::process::Stdio,
    ) -> Result<LoopbackProvider, String> {
        use std::io::BufRead;
        if !repo.join("tests/oidc/node_modules/oidc-provider").exists() {
            return Err("the loopback OpenID Provider is not installed: run `npm ci --prefix tests/oidc` (Node.js) from the repository's root first".to_owned());
        }
        let mut child = std::process::Command::new("node")
            .arg(repo.join("tests/oidc/provider.mjs"))
            .arg("0")
            .env("OIDC_CLIENT_ID", "gatehouse-console")
            .env("OIDC_CLIENT_SECRET", client_secret)
            .env("OIDC_REDIRECT_URIS", redirect)
            .env("OIDC_EXIT_WITH_STDIN", "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start node for the OpenID Provider: {e}"))?;
        // Its first line says it is ready, and where.
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = std::io::BufReader::new(out).read_line(&mut line);
        }
        let issuer = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v["issuer"].as_str().map(str::to_owned));
        let mut provider = LoopbackProvider {
            child,
            issuer: String::new(),
        };
        match issuer {
            Some(issuer) => {
                provider.issuer = issuer;
                Ok(provider)
            }
            // Dropping `provider` stops the process.
            None => Err("the OpenID Provider did not start (tests/oidc/provider.mjs)".to_owned()),
        }
    }
}
