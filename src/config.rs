//! TOML → validated, immutable `Config`.
//!
//! Parsing happens in two steps: each section is deserialised on its own (so one bad section
//! does not hide errors in the others), then the raw values are checked and turned into domain
//! types. Every problem is collected and reported at once, each naming the key that is wrong.
//! This module never opens sockets; it reads only the configuration file itself.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

/// One problem in a configuration file, naming the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// How a workspace treats people (principals of type `user`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HumansMode {
    Allow,
    /// Only members of `human_groups`, only serving-endpoint configuration and its reads.
    ConfigOnly,
    Deny,
}

impl HumansMode {
    pub fn as_str(self) -> &'static str {
        match self {
            HumansMode::Allow => "allow",
            HumansMode::ConfigOnly => "config-only",
            HumansMode::Deny => "deny",
        }
    }
}

/// What to do with `/api/…` paths the catalog cannot name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownApi {
    Deny,
    Record,
}

/// When the audit writer acknowledges a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Each record is written and fsynced on its own before the request goes on.
    Every,
    /// Records are written and fsynced in batches; each request waits for its batch.
    Group,
    /// Records are queued and written in batches; nobody waits, nothing is fsynced.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// A parsed upstream base URL: scheme and authority, no path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub scheme: Scheme,
    /// `host[:port]` as written (lower-cased).
    pub authority: String,
}

impl Upstream {
    /// `host:port`, with the scheme's default port when none is written.
    pub fn authority_with_port(&self) -> String {
        let has_port = self
            .authority
            .parse::<http::uri::Authority>()
            .is_ok_and(|a| a.port_u16().is_some());
        if has_port {
            self.authority.clone()
        } else {
            let port = match self.scheme {
                Scheme::Http => 80,
                Scheme::Https => 443,
            };
            format!("{}:{port}", self.authority)
        }
    }

    pub fn scheme_str(&self) -> &'static str {
        match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub client_ca: Option<PathBuf>,
    pub admin_listen: SocketAddr,
    pub gateway_id: String,
    pub connect_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub upstream_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Runtime worker threads; 1 runs everything on one thread (the cheapest per request).
    pub workers: usize,
    /// A principal's bodiless GET/HEAD to plain-HTTP upstreams share pipelined connections.
    /// Off by default: an upstream that misframes a response shifts the responses pipelined
    /// behind it, which keying by principal confines to that principal's own requests.
    pub upstream_pipelining: bool,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    File(PathBuf),
    Url {
        url: String,
        refresh: Duration,
        ca_file: Option<PathBuf>,
    },
}

#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub jwks: JwksSource,
    pub issuers: Vec<String>,
    pub audiences: Vec<String>,
    pub principal_type_claim: String,
    pub groups_claim: String,
    pub deny_groups: Vec<String>,
    pub leeway: Duration,
    pub token_cache_entries: usize,
}

#[derive(Debug, Clone)]
pub struct WorkspaceConfig {
    pub name: String,
    pub hosts: Vec<String>,
    pub upstream: Upstream,
    pub upstream_ca: Option<PathBuf>,
    pub humans: HumansMode,
    pub human_groups: Vec<String>,
    pub source_cidrs: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub unknown_api: UnknownApi,
    pub report_only: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub dir: PathBuf,
    pub durability: Durability,
    pub signing_key: Option<PathBuf>,
    pub queue_capacity: usize,
    /// A segment is closed (and gets its digest) at this size …
    pub segment_max_bytes: u64,
    /// … or at this age; a quiet interval this long gets a digest of its own.
    pub segment_max_age: Duration,
}

/// Sections that later stages of the product use (S3, buckets, exceptions, admin, limits).
/// They are parsed and checked now so a full production file validates today.
#[derive(Debug, Clone, Default)]
pub struct LaterSections {
    pub s3: Option<RawS3>,
    pub buckets: Vec<RawBucket>,
    pub exceptions: Option<RawExceptions>,
    pub admin: Option<RawAdmin>,
    pub limits: Option<RawLimits>,
    pub console: Option<RawConsole>,
}

/// The S3 side: which hosts are S3, where they go, who the access keys belong to.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// Exact host names and `*.suffix` patterns, lower-case.
    pub hosts: Vec<String>,
    pub upstream: Upstream,
    pub upstream_ca: Option<PathBuf>,
    pub access_keys: Vec<AccessKeyConfig>,
    /// Access-point host → bucket.
    pub access_points: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct AccessKeyConfig {
    pub id: String,
    pub principal: String,
    pub service_principal: bool,
    pub workspace: Option<String>,
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketClass {
    Lab,
    ProdOutput,
    Raw,
}

impl BucketClass {
    pub fn as_str(self) -> &'static str {
        match self {
            BucketClass::Lab => "lab",
            BucketClass::ProdOutput => "prod-output",
            BucketClass::Raw => "raw",
        }
    }
}

#[derive(Debug, Clone)]
pub struct BucketConfig {
    pub name: String,
    pub class: BucketClass,
    pub workspaces: Vec<String>,
    pub retention_days: u32,
    pub readers: Vec<String>,
    /// Principal ids that may change who can reach the bucket (its ACL, policy, public access
    /// block, ownership controls); none by default.
    pub governance_admins: Vec<String>,
}

/// A validated configuration. Immutable: reload builds a new one and swaps it.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub identity: IdentityConfig,
    pub workspaces: Vec<WorkspaceConfig>,
    pub policy: PolicyConfig,
    pub audit: AuditConfig,
    pub s3: Option<S3Config>,
    pub buckets: Vec<BucketConfig>,
    pub exceptions: Option<ExceptionsConfig>,
    pub limits: LimitsConfig,
    /// `[console]`: the review console on the admin listener; `None` when not configured.
    pub console: Option<ConsoleConfig>,
    pub later: LaterSections,
    /// Directory the file was read from: relative paths in it are resolved against the
    /// current directory, like every other tool, but we keep it for messages.
    pub source: PathBuf,
    /// SHA-256 of the configuration text, hex: which file was in force is in the trail.
    pub sha256: String,
}

// ---- raw, as written -------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: String,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    admin_listen: String,
    #[serde(default = "default_gateway_id")]
    gateway_id: String,
    #[serde(default = "default_connect_ms")]
    connect_timeout_ms: u64,
    #[serde(default = "default_header_read_ms")]
    header_read_timeout_ms: u64,
    #[serde(default = "default_idle_ms")]
    idle_timeout_ms: u64,
    #[serde(default = "default_upstream_ms")]
    upstream_timeout_ms: u64,
    #[serde(default = "default_grace_ms")]
    shutdown_grace_ms: u64,
    /// 0: one per available core.
    #[serde(default)]
    workers: usize,
    /// Off unless asked for: see `ServerConfig::upstream_pipelining`.
    #[serde(default)]
    upstream_pipelining: bool,
}

fn default_gateway_id() -> String {
    "gw-1".to_owned()
}
fn default_connect_ms() -> u64 {
    5_000
}
fn default_header_read_ms() -> u64 {
    30_000
}
fn default_idle_ms() -> u64 {
    90_000
}
fn default_upstream_ms() -> u64 {
    300_000
}
fn default_grace_ms() -> u64 {
    30_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    jwks_file: Option<PathBuf>,
    jwks_url: Option<String>,
    #[serde(default = "default_jwks_refresh")]
    jwks_refresh_secs: u64,
    jwks_ca: Option<PathBuf>,
    #[serde(default)]
    issuers: Vec<String>,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default = "default_type_claim")]
    principal_type_claim: String,
    #[serde(default = "default_groups_claim")]
    groups_claim: String,
    #[serde(default)]
    deny_groups: Vec<String>,
    #[serde(default = "default_leeway")]
    leeway_secs: u64,
    #[serde(default = "default_token_cache")]
    token_cache_entries: usize,
}

fn default_jwks_refresh() -> u64 {
    300
}
fn default_type_claim() -> String {
    "principal_type".to_owned()
}
fn default_groups_claim() -> String {
    "groups".to_owned()
}
fn default_leeway() -> u64 {
    30
}
fn default_token_cache() -> usize {
    100_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkspace {
    name: String,
    hosts: Vec<String>,
    upstream: String,
    upstream_ca: Option<PathBuf>,
    humans: String,
    #[serde(default)]
    human_groups: Vec<String>,
    #[serde(default)]
    source_cidrs: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default = "default_unknown_api")]
    unknown_api: String,
    #[serde(default)]
    report_only: Vec<String>,
}

impl Default for RawPolicy {
    fn default() -> Self {
        RawPolicy {
            unknown_api: default_unknown_api(),
            report_only: Vec::new(),
        }
    }
}

fn default_unknown_api() -> String {
    "deny".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    dir: PathBuf,
    #[serde(default = "default_durability")]
    durability: String,
    signing_key: Option<PathBuf>,
    #[serde(default = "default_queue")]
    queue_capacity: usize,
    #[serde(default = "default_segment_bytes")]
    segment_max_bytes: u64,
    #[serde(default = "default_segment_age")]
    segment_max_age_secs: u64,
}

fn default_durability() -> String {
    "group".to_owned()
}
fn default_queue() -> usize {
    65_536
}
fn default_segment_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_segment_age() -> u64 {
    3600
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawS3 {
    pub hosts: Vec<String>,
    pub upstream: String,
    pub upstream_ca: Option<PathBuf>,
    #[serde(default)]
    pub access_key: Vec<RawAccessKey>,
    #[serde(default)]
    pub access_point: Vec<RawAccessPoint>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessPoint {
    pub host: String,
    pub bucket: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessKey {
    pub id: String,
    pub principal: String,
    pub principal_type: String,
    pub workspace: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBucket {
    pub name: String,
    pub class: String,
    #[serde(default)]
    pub workspaces: Vec<String>,
    pub retention_days: Option<u32>,
    #[serde(default)]
    pub readers: Vec<String>,
    #[serde(default)]
    pub governance_admins: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExceptions {
    #[serde(default = "default_store")]
    pub store: String,
    #[serde(default)]
    pub approver_groups: Vec<String>,
    pub max_days: Option<u32>,
    #[serde(default)]
    pub required_approvals: RawRequiredApprovals,
    pub refresh_secs: Option<u64>,
}

/// Embedded SQLite under `var/` unless a store is named.
fn default_store() -> String {
    "sqlite://var/gatehouse.db".to_owned()
}

/// `[exceptions.required_approvals]`: approvals needed per kind.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawRequiredApprovals {
    pub raw_bucket: Option<u32>,
    pub download: Option<u32>,
    pub workspace_access: Option<u32>,
}

/// `[exceptions]`, validated: where exceptions live and who approves them.
#[derive(Debug, Clone)]
pub struct ExceptionsConfig {
    /// `sqlite://PATH` or `postgres://…` (may hold a password: never log it whole).
    pub store: String,
    pub approver_groups: Vec<String>,
    pub max_days: u32,
    pub required: crate::exceptions::model::Required,
    /// The safety net under change notifications: a full re-read this often.
    pub refresh: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    #[serde(default)]
    pub operator_groups: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub per_principal_rps: Option<u32>,
    pub burst: Option<u32>,
    pub max_connections: Option<usize>,
}

/// `[limits]`: per-principal request rates and the cap on open client connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Sustained requests per second per principal; `None`: not limited.
    pub per_principal_rps: Option<u32>,
    /// Requests a principal may send at once above the sustained rate.
    pub burst: u32,
    /// Open client connections on the data listener, all clients together.
    pub max_connections: usize,
}

/// Enough for 10,000 idle keep-alive clients with room to spare; beyond it, new connections
/// are closed at once (and counted) rather than exhausting file descriptors.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            per_principal_rps: None,
            burst: 0,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

fn check_limits(raw: Option<&RawLimits>, errors: &mut Errors) -> LimitsConfig {
    let Some(raw) = raw else {
        return LimitsConfig::default();
    };
    if raw.per_principal_rps == Some(0) {
        errors.push(
            "limits.per_principal_rps",
            "must be greater than 0 (leave it out for no limit)",
        );
    }
    if raw.burst == Some(0) {
        errors.push("limits.burst", "must be greater than 0");
    }
    if raw.burst.is_some() && raw.per_principal_rps.is_none() {
        errors.push("limits.burst", "needs per_principal_rps");
    }
    if raw.max_connections == Some(0) {
        errors.push("limits.max_connections", "must be greater than 0");
    }
    LimitsConfig {
        per_principal_rps: raw.per_principal_rps,
        // A burst of one second's worth unless told otherwise.
        burst: raw.burst.or(raw.per_principal_rps).unwrap_or(0),
        max_connections: raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsole {
    pub oidc_issuer: String,
    pub client_id: String,
    pub client_secret_file: PathBuf,
    pub redirect_url: String,
    #[serde(default)]
    pub auditor_groups: Vec<String>,
    pub session_idle: Option<String>,
    pub session_max: Option<String>,
    /// PEM bundle to trust for the provider instead of the system's roots.
    pub oidc_ca_file: Option<PathBuf>,
    #[serde(default = "default_principal_claim")]
    pub principal_claim: String,
    pub index_file: Option<PathBuf>,
}

fn default_principal_claim() -> String {
    "sub".to_owned()
}

/// `[console]`: who may log in to the review console, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// The provider's issuer URL, exactly as its ID tokens name it (no trailing `/`).
    pub oidc_issuer: String,
    pub client_id: String,
    /// Read when the console starts; never kept in the configuration (which is logged and
    /// compared on reload).
    pub client_secret_file: PathBuf,
    /// Where the provider sends the browser back; its path is served by the console.
    pub redirect_url: String,
    pub auditor_groups: Vec<String>,
    /// A session unused this long ends.
    pub session_idle: Duration,
    /// A session ends this long after login, however busy.
    pub session_max: Duration,
    pub oidc_ca_file: Option<PathBuf>,
    /// The ID-token claim that names a person as the data path names them (its `sub`), so
    /// the exception rules compare the console's approver with requesters like with like.
    pub principal_claim: String,
    /// The trail index the console searches; `None` puts it in the trail directory as
    /// `console-index.<gateway_id>.sqlite`.
    pub index_file: Option<PathBuf>,
}

pub const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
pub const DEFAULT_SESSION_MAX: Duration = Duration::from_secs(8 * 3600);

/// Plain `http://` only for a loopback host: anywhere else the code, the client secret and
/// the ID token would cross the network in clear.
fn secure_url(value: &str, key: &str, errors: &mut Errors) -> Option<http::Uri> {
    let Ok(uri) = value.parse::<http::Uri>() else {
        errors.push(key, format!("{value:?} is not a URL"));
        return None;
    };
    let host = uri.host().unwrap_or("");
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match uri.scheme_str() {
        Some("https") => Some(uri),
        Some("http") if loopback => Some(uri),
        Some("http") => {
            errors.push(
                key,
                "must be https:// (plain http only on a loopback address)",
            );
            None
        }
        _ => {
            errors.push(key, format!("{value:?} is not an http(s) URL"));
            None
        }
    }
}

/// Paths the admin listener already answers (the API, health, metrics, the console's pages).
fn takes_a_served_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
        || path.starts_with("/v1/")
        || crate::console::is_page(path)
}

fn check_console(raw: &RawConsole, errors: &mut Errors) -> Option<ConsoleConfig> {
    let issuer = raw.oidc_issuer.trim_end_matches('/').to_owned();
    let issuer_ok = secure_url(&issuer, "console.oidc_issuer", errors).is_some();
    let redirect_ok = match secure_url(&raw.redirect_url, "console.redirect_url", errors) {
        Some(uri) if uri.query().is_some() || uri.path() == "/" => {
            errors.push(
                "console.redirect_url",
                "needs a path of its own (for example https://gw.example:9443/auth/callback) and no query",
            );
            false
        }
        Some(uri) if takes_a_served_path(uri.path()) => {
            errors.push(
                "console.redirect_url",
                format!("its path {:?} is already served on the admin listener; use e.g. /auth/callback", uri.path()),
            );
            false
        }
        Some(_) => true,
        None => false,
    };
    if raw.client_id.trim().is_empty() {
        errors.push("console.client_id", "must not be empty");
    }
    if raw.principal_claim.trim().is_empty() {
        errors.push("console.principal_claim", "must name an ID-token claim");
    }
    must_exist(
        &raw.client_secret_file,
        "console.client_secret_file",
        errors,
    );
    if let Some(ca) = &raw.oidc_ca_file {
        must_exist(ca, "console.oidc_ca_file", errors);
    }
    let duration =
        |text: &Option<String>, key: &str, default: Duration, errors: &mut Errors| match text
            .as_deref()
            .map(parse_duration)
        {
            None => Some(default),
            Some(Some(d)) if !d.is_zero() => Some(d),
            Some(_) => {
                errors.push(key, "must be a duration such as 30m, 8h or 1d");
                None
            }
        };
    let idle = duration(
        &raw.session_idle,
        "console.session_idle",
        DEFAULT_SESSION_IDLE,
        errors,
    );
    let max = duration(
        &raw.session_max,
        "console.session_max",
        DEFAULT_SESSION_MAX,
        errors,
    );
    if let (Some(idle), Some(max)) = (idle, max) {
        if idle > max {
            errors.push(
                "console.session_idle",
                "must not be longer than session_max",
            );
        }
    }
    Some(ConsoleConfig {
        oidc_issuer: issuer,
        client_id: raw.client_id.trim().to_owned(),
        client_secret_file: raw.client_secret_file.clone(),
        redirect_url: raw.redirect_url.clone(),
        auditor_groups: raw.auditor_groups.clone(),
        session_idle: idle?,
        session_max: max?,
        oidc_ca_file: raw.oidc_ca_file.clone(),
        principal_claim: raw.principal_claim.trim().to_owned(),
        index_file: raw.index_file.clone(),
    })
    .filter(|_| issuer_ok && redirect_ok)
}

const TOP_LEVEL_KEYS: &[&str] = &[
    "server",
    "identity",
    "workspace",
    "s3",
    "bucket",
    "policy",
    "audit",
    "exceptions",
    "admin",
    "limits",
    "console",
];

/// Rule ids that `[policy] report_only` may name: the policy's own denials, so a new or
/// tightened block can be watched before it bites. Never `identity.*` (an unverified caller is
/// never let through), and not the download and credential blocks, which are the platform's
/// core guarantee; transport rules (malformed requests) keep the parsers honest and are not
/// policy at all.
pub const REPORTABLE_RULES: &[&str] = &[
    "principal.denied_group",
    "workspace.humans_denied",
    "workspace.config_only",
    "api.unknown",
    "buckets.unknown",
    "buckets.raw_blocked",
    "buckets.lab_workspace",
    "buckets.lab_retention",
    "buckets.lab_versioning",
    "buckets.lab_governance",
    "buckets.prod_output_people",
    "buckets.prod_output_writer",
    "buckets.prod_output_governance",
    "buckets.prod_output_reader",
];

// ---- loading ---------------------------------------------------------------------------

impl Config {
    /// Reads and validates a configuration file, reporting every problem at once.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                key: path.display().to_string(),
                message: format!("cannot read the configuration file: {e}"),
            }])
        })?;
        let mut config = Config::parse(&text)?;
        config.source = path.to_path_buf();
        Ok(config)
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        let mut errors = Errors::default();
        let table: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(e) => {
                return Err(ConfigErrors(vec![ConfigError {
                    key: "(file)".to_owned(),
                    message: e.to_string().trim().replace('\n', " "),
                }]))
            }
        };
        for key in table.keys() {
            if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
                errors.push(key, "unknown section");
            }
        }

        let server: Option<RawServer> = section(&table, "server", true, &mut errors);
        let identity: Option<RawIdentity> = section(&table, "identity", true, &mut errors);
        let workspaces: Vec<RawWorkspace> = array_section(&table, "workspace", &mut errors);
        let policy: RawPolicy = section(&table, "policy", false, &mut errors).unwrap_or_default();
        let audit: Option<RawAudit> = section(&table, "audit", true, &mut errors);
        let later = LaterSections {
            s3: section(&table, "s3", false, &mut errors),
            buckets: array_section(&table, "bucket", &mut errors),
            exceptions: section(&table, "exceptions", false, &mut errors),
            admin: section(&table, "admin", false, &mut errors),
            limits: section(&table, "limits", false, &mut errors),
            console: section(&table, "console", false, &mut errors),
        };

        let server = server.and_then(|s| check_server(s, &mut errors));
        let identity = identity.and_then(|i| check_identity(i, &mut errors));
        let workspaces = check_workspaces(workspaces, &mut errors);
        let policy = check_policy(policy, &mut errors);
        let audit = audit.and_then(|a| check_audit(a, &mut errors));
        let s3 = later
            .s3
            .as_ref()
            .and_then(|s| check_s3(s, &workspaces, &mut errors));
        let buckets = check_buckets(&later.buckets, &workspaces, &mut errors);
        if let Some(s3) = &s3 {
            for (host, bucket) in &s3.access_points {
                if !buckets.iter().any(|b| &b.name == bucket) {
                    errors.push(
                        "s3.access_point",
                        format!(
                            "access point {host:?} maps to {bucket:?}, which no [[bucket]] names"
                        ),
                    );
                }
            }
        }
        let exceptions = later
            .exceptions
            .as_ref()
            .and_then(|e| check_exceptions(e, &mut errors));
        let limits = check_limits(later.limits.as_ref(), &mut errors);
        let console = later
            .console
            .as_ref()
            .and_then(|c| check_console(c, &mut errors));
        // Approvals in the console must name people as the data path does (no self-approval,
        // one approval per person): the same provider.
        if let (Some(c), Some(i)) = (&console, &identity) {
            let same = |a: &str| a.trim_end_matches('/') == c.oidc_issuer;
            if !i.issuers.iter().any(|x| same(x)) {
                errors.push(
                    "console.oidc_issuer",
                    format!(
                        "{:?} is not among [identity] issuers: the console must sign people in at the provider whose tokens the gateway accepts, so an approver is the same principal everywhere",
                        c.oidc_issuer
                    ),
                );
            }
        }

        match (server, identity, policy, audit) {
            (Some(server), Some(identity), Some(policy), Some(audit)) if errors.0.is_empty() => {
                Ok(Config {
                    server,
                    identity,
                    workspaces,
                    policy,
                    audit,
                    s3,
                    buckets,
                    exceptions,
                    limits,
                    console,
                    later,
                    source: PathBuf::new(),
                    sha256: {
                        use sha2::Digest;
                        hex::encode(sha2::Sha256::digest(text.as_bytes()))
                    },
                })
            }
            _ => {
                if errors.0.is_empty() {
                    errors.push("(file)", "invalid configuration");
                }
                Err(ConfigErrors(errors.0))
            }
        }
    }
}

#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            key: key.into(),
            message: message.into(),
        });
    }
}

fn section<T: DeserializeOwned>(
    table: &toml::Table,
    name: &str,
    required: bool,
    errors: &mut Errors,
) -> Option<T> {
    match table.get(name) {
        None => {
            if required {
                errors.push(name, "missing section");
            }
            None
        }
        Some(value) => match value.clone().try_into::<T>() {
            Ok(v) => Some(v),
            Err(e) => {
                errors.push(name, clean_serde_message(&e.to_string()));
                None
            }
        },
    }
}

fn array_section<T: DeserializeOwned>(
    table: &toml::Table,
    name: &str,
    errors: &mut Errors,
) -> Vec<T> {
    let Some(value) = table.get(name) else {
        return Vec::new();
    };
    let Some(items) = value.as_array() else {
        errors.push(name, format!("must be an array of tables: [[{name}]]"));
        return Vec::new();
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match item.clone().try_into::<T>() {
            Ok(v) => out.push(v),
            Err(e) => errors.push(format!("{name}[{i}]"), clean_serde_message(&e.to_string())),
        }
    }
    out
}

fn clean_serde_message(message: &str) -> String {
    message.trim().replace('\n', " ")
}

fn check_server(raw: RawServer, errors: &mut Errors) -> Option<ServerConfig> {
    let listen = parse_addr(&raw.listen, "server.listen", errors);
    let admin = parse_addr(&raw.admin_listen, "server.admin_listen", errors);
    let tls = match (raw.tls_cert, raw.tls_key) {
        (Some(cert), Some(key)) => {
            must_exist(&cert, "server.tls_cert", errors);
            must_exist(&key, "server.tls_key", errors);
            Some(TlsFiles { cert, key })
        }
        (None, None) => None,
        (Some(_), None) => {
            errors.push("server.tls_key", "tls_cert is set but tls_key is not");
            None
        }
        (None, Some(_)) => {
            errors.push("server.tls_cert", "tls_key is set but tls_cert is not");
            None
        }
    };
    if let Some(ca) = &raw.client_ca {
        must_exist(ca, "server.client_ca", errors);
        if tls.is_none() {
            errors.push(
                "server.client_ca",
                "client certificates need TLS: set tls_cert and tls_key",
            );
        }
    }
    if raw.gateway_id.is_empty()
        || !raw
            .gateway_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        errors.push(
            "server.gateway_id",
            "must be non-empty letters, digits, '-', '_' or '.'",
        );
    }
    for (key, value) in [
        ("server.connect_timeout_ms", raw.connect_timeout_ms),
        ("server.header_read_timeout_ms", raw.header_read_timeout_ms),
        ("server.idle_timeout_ms", raw.idle_timeout_ms),
        ("server.upstream_timeout_ms", raw.upstream_timeout_ms),
    ] {
        if value == 0 {
            errors.push(key, "must be greater than 0");
        }
    }
    Some(ServerConfig {
        listen: listen?,
        tls,
        client_ca: raw.client_ca,
        admin_listen: admin?,
        gateway_id: raw.gateway_id,
        connect_timeout: Duration::from_millis(raw.connect_timeout_ms),
        header_read_timeout: Duration::from_millis(raw.header_read_timeout_ms),
        idle_timeout: Duration::from_millis(raw.idle_timeout_ms),
        upstream_timeout: Duration::from_millis(raw.upstream_timeout_ms),
        shutdown_grace: Duration::from_millis(raw.shutdown_grace_ms),
        workers: if raw.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            raw.workers
        },
        upstream_pipelining: raw.upstream_pipelining,
    })
}

fn check_identity(raw: RawIdentity, errors: &mut Errors) -> Option<IdentityConfig> {
    let jwks = match (raw.jwks_file, raw.jwks_url) {
        (Some(file), None) => {
            must_exist(&file, "identity.jwks_file", errors);
            Some(JwksSource::File(file))
        }
        (None, Some(url)) => {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                errors.push("identity.jwks_url", "must be an http:// or https:// URL");
            }
            if raw.jwks_refresh_secs == 0 {
                errors.push("identity.jwks_refresh_secs", "must be greater than 0");
            }
            if let Some(ca) = &raw.jwks_ca {
                must_exist(ca, "identity.jwks_ca", errors);
            }
            Some(JwksSource::Url {
                url,
                refresh: Duration::from_secs(raw.jwks_refresh_secs.max(1)),
                ca_file: raw.jwks_ca,
            })
        }
        (Some(_), Some(_)) => {
            errors.push("identity.jwks_url", "set jwks_file or jwks_url, not both");
            None
        }
        (None, None) => {
            errors.push("identity.jwks_file", "set jwks_file or jwks_url");
            None
        }
    };
    if raw.issuers.is_empty() {
        errors.push("identity.issuers", "at least one issuer is required");
    }
    if raw.audiences.is_empty() {
        errors.push("identity.audiences", "at least one audience is required");
    }
    if raw.principal_type_claim.is_empty() {
        errors.push("identity.principal_type_claim", "must not be empty");
    }
    if raw.groups_claim.is_empty() {
        errors.push("identity.groups_claim", "must not be empty");
    }
    if raw.leeway_secs > 300 {
        errors.push("identity.leeway_secs", "at most 300 seconds");
    }
    if raw.token_cache_entries == 0 {
        errors.push("identity.token_cache_entries", "must be greater than 0");
    }
    Some(IdentityConfig {
        jwks: jwks?,
        issuers: raw.issuers,
        audiences: raw.audiences,
        principal_type_claim: raw.principal_type_claim,
        groups_claim: raw.groups_claim,
        deny_groups: raw.deny_groups,
        leeway: Duration::from_secs(raw.leeway_secs),
        token_cache_entries: raw.token_cache_entries,
    })
}

fn check_workspaces(raw: Vec<RawWorkspace>, errors: &mut Errors) -> Vec<WorkspaceConfig> {
    if raw.is_empty() {
        errors.push("workspace", "at least one [[workspace]] is required");
    }
    let mut names = HashSet::new();
    let mut hosts: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, w) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("workspace[{i}].{k}");
        if w.name.is_empty() {
            errors.push(key("name"), "must not be empty");
        } else if !names.insert(w.name.clone()) {
            errors.push(
                key("name"),
                format!("duplicate workspace name {:?}", w.name),
            );
        }
        if w.hosts.is_empty() {
            errors.push(key("hosts"), "at least one host is required");
        }
        let mut ws_hosts = Vec::with_capacity(w.hosts.len());
        for h in &w.hosts {
            match normalize_host_pattern(h) {
                Some(h) => {
                    if let Some(other) = hosts.insert(h.clone(), w.name.clone()) {
                        errors.push(
                            key("hosts"),
                            format!("host {h:?} is already routed to workspace {other:?}"),
                        );
                    }
                    ws_hosts.push(h);
                }
                None => errors.push(key("hosts"), format!("{h:?} is not a valid host name")),
            }
        }
        let upstream = parse_upstream(&w.upstream, &key("upstream"), errors);
        if let Some(ca) = &w.upstream_ca {
            must_exist(ca, &key("upstream_ca"), errors);
        }
        let humans = match w.humans.as_str() {
            "allow" => Some(HumansMode::Allow),
            "config-only" => Some(HumansMode::ConfigOnly),
            "deny" => Some(HumansMode::Deny),
            other => {
                errors.push(
                    key("humans"),
                    format!("{other:?} is not one of allow, config-only, deny"),
                );
                None
            }
        };
        if humans == Some(HumansMode::ConfigOnly) && w.human_groups.is_empty() {
            errors.push(
                key("human_groups"),
                "config-only needs at least one group whose members may make configuration changes",
            );
        }
        let mut cidrs = Vec::new();
        for c in &w.source_cidrs {
            match c.parse::<ipnet::IpNet>() {
                Ok(n) => cidrs.push(n),
                Err(_) => errors.push(key("source_cidrs"), format!("{c:?} is not a CIDR block")),
            }
        }
        if let (Some(upstream), Some(humans)) = (upstream, humans) {
            out.push(WorkspaceConfig {
                name: w.name,
                hosts: ws_hosts,
                upstream,
                upstream_ca: w.upstream_ca,
                humans,
                human_groups: w.human_groups,
                source_cidrs: cidrs,
            });
        }
    }
    out
}

fn check_policy(raw: RawPolicy, errors: &mut Errors) -> Option<PolicyConfig> {
    let unknown_api = match raw.unknown_api.as_str() {
        "deny" => Some(UnknownApi::Deny),
        "record" => Some(UnknownApi::Record),
        other => {
            errors.push(
                "policy.unknown_api",
                format!("{other:?} is not one of deny, record"),
            );
            None
        }
    };
    for rule in &raw.report_only {
        if !REPORTABLE_RULES.contains(&rule.as_str()) {
            errors.push(
                "policy.report_only",
                format!(
                    "{rule:?} is not a rule id that can be reported only (one of {})",
                    REPORTABLE_RULES.join(", ")
                ),
            );
        }
    }
    Some(PolicyConfig {
        unknown_api: unknown_api?,
        report_only: raw.report_only,
    })
}

fn check_audit(raw: RawAudit, errors: &mut Errors) -> Option<AuditConfig> {
    let durability = match raw.durability.as_str() {
        "every" => Some(Durability::Every),
        "group" => Some(Durability::Group),
        "none" => Some(Durability::None),
        other => {
            errors.push(
                "audit.durability",
                format!("{other:?} is not one of every, group, none"),
            );
            None
        }
    };
    if raw.dir.as_os_str().is_empty() {
        errors.push("audit.dir", "must not be empty");
    }
    if raw.queue_capacity == 0 {
        errors.push("audit.queue_capacity", "must be greater than 0");
    }
    if raw.segment_max_bytes < 4096 {
        errors.push("audit.segment_max_bytes", "must be at least 4096");
    }
    if raw.segment_max_age_secs == 0 {
        errors.push("audit.segment_max_age_secs", "must be greater than 0");
    }
    if let Some(path) = &raw.signing_key {
        if let Err(e) = crate::audit::digest::Signer::load(path) {
            errors.push("audit.signing_key", e);
        }
    }
    Some(AuditConfig {
        dir: raw.dir,
        durability: durability?,
        signing_key: raw.signing_key,
        queue_capacity: raw.queue_capacity,
        segment_max_bytes: raw.segment_max_bytes,
        segment_max_age: Duration::from_secs(raw.segment_max_age_secs),
    })
}

fn check_s3(raw: &RawS3, workspaces: &[WorkspaceConfig], errors: &mut Errors) -> Option<S3Config> {
    let known: HashSet<&str> = workspaces.iter().map(|w| w.name.as_str()).collect();
    let workspace_hosts: HashSet<&str> = workspaces
        .iter()
        .flat_map(|w| w.hosts.iter().map(String::as_str))
        .collect();
    let upstream = parse_upstream(&raw.upstream, "s3.upstream", errors);
    if let Some(ca) = &raw.upstream_ca {
        must_exist(ca, "s3.upstream_ca", errors);
    }
    if raw.hosts.is_empty() {
        errors.push("s3.hosts", "at least one host is required");
    }
    let mut hosts = Vec::with_capacity(raw.hosts.len());
    for h in &raw.hosts {
        match normalize_host_pattern(h) {
            Some(h) if workspace_hosts.contains(h.as_str()) => errors.push(
                "s3.hosts",
                format!("host {h:?} is also routed to a workspace"),
            ),
            Some(h) => hosts.push(h),
            None => errors.push("s3.hosts", format!("{h:?} is not a valid host name")),
        }
    }
    let mut ids = HashSet::new();
    let mut access_keys = Vec::with_capacity(raw.access_key.len());
    for (i, k) in raw.access_key.iter().enumerate() {
        let key = |f: &str| format!("s3.access_key[{i}].{f}");
        let valid_id = (16..=128).contains(&k.id.len())
            && k.id
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if !valid_id {
            errors.push(
                key("id"),
                "must be an access key id (16–128 upper-case letters and digits)",
            );
        } else if !ids.insert(k.id.clone()) {
            errors.push(key("id"), format!("duplicate access key id {:?}", k.id));
        }
        if k.principal.is_empty() {
            errors.push(key("principal"), "must not be empty");
        }
        let service_principal = match k.principal_type.as_str() {
            "service_principal" => true,
            "user" => false,
            _ => {
                errors.push(key("principal_type"), "must be user or service_principal");
                false
            }
        };
        if let Some(w) = &k.workspace {
            if !known.contains(w.as_str()) {
                errors.push(key("workspace"), format!("no [[workspace]] is named {w:?}"));
            }
        }
        access_keys.push(AccessKeyConfig {
            id: k.id.clone(),
            principal: k.principal.clone(),
            service_principal,
            workspace: k.workspace.clone(),
            groups: k.groups.clone(),
        });
    }
    let mut access_points = Vec::new();
    for (i, ap) in raw.access_point.iter().enumerate() {
        match normalize_host_pattern(&ap.host) {
            Some(h) if !h.starts_with("*.") => access_points.push((h, ap.bucket.clone())),
            _ => errors.push(
                format!("s3.access_point[{i}].host"),
                format!("{:?} is not an access point host name", ap.host),
            ),
        }
    }
    Some(S3Config {
        hosts,
        upstream: upstream?,
        upstream_ca: raw.upstream_ca.clone(),
        access_keys,
        access_points,
    })
}

fn check_buckets(
    raw: &[RawBucket],
    workspaces: &[WorkspaceConfig],
    errors: &mut Errors,
) -> Vec<BucketConfig> {
    let known: HashSet<&str> = workspaces.iter().map(|w| w.name.as_str()).collect();
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, b) in raw.iter().enumerate() {
        let key = |f: &str| format!("bucket[{i}].{f}");
        let valid_name = (3..=63).contains(&b.name.len())
            && b.name
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-');
        if !valid_name {
            errors.push(
                key("name"),
                format!("{:?} is not an S3 bucket name", b.name),
            );
        } else if !names.insert(b.name.clone()) {
            errors.push(key("name"), format!("duplicate bucket {:?}", b.name));
        }
        let class = match b.class.as_str() {
            "lab" => Some(BucketClass::Lab),
            "prod-output" => Some(BucketClass::ProdOutput),
            "raw" => Some(BucketClass::Raw),
            _ => {
                errors.push(key("class"), "must be one of lab, prod-output, raw");
                None
            }
        };
        for w in &b.workspaces {
            if !known.contains(w.as_str()) {
                errors.push(
                    key("workspaces"),
                    format!("no [[workspace]] is named {w:?}"),
                );
            }
        }
        if class == Some(BucketClass::Lab) && b.workspaces.is_empty() {
            errors.push(
                key("workspaces"),
                "a lab bucket names the workspaces whose compute may use it",
            );
        }
        let retention_days = b.retention_days.unwrap_or(90);
        if retention_days == 0 {
            errors.push(key("retention_days"), "must be greater than 0");
        }
        let mut admins = HashSet::new();
        for admin in &b.governance_admins {
            let plain = !admin.is_empty()
                && !admin.starts_with("group:")
                && admin.chars().all(|c| !c.is_whitespace() && !c.is_control());
            if !plain {
                errors.push(
                    key("governance_admins"),
                    format!("{admin:?} is not a principal id (one principal, not a group)"),
                );
            } else if !admins.insert(admin.as_str()) {
                errors.push(
                    key("governance_admins"),
                    format!("{admin:?} is named twice"),
                );
            }
        }
        if let Some(class) = class {
            out.push(BucketConfig {
                name: b.name.clone(),
                class,
                workspaces: b.workspaces.clone(),
                retention_days,
                readers: b.readers.clone(),
                governance_admins: b.governance_admins.clone(),
            });
        }
    }
    out
}

fn check_exceptions(raw: &RawExceptions, errors: &mut Errors) -> Option<ExceptionsConfig> {
    let before = errors.0.len();
    if !(raw.store.starts_with("sqlite://")
        || raw.store.starts_with("postgres://")
        || raw.store.starts_with("postgresql://"))
    {
        errors.push("exceptions.store", "must be a sqlite:// or postgres:// URL");
    }
    if raw.approver_groups.is_empty() {
        errors.push(
            "exceptions.approver_groups",
            "name at least one group whose members approve exceptions",
        );
    }
    let max_days = raw.max_days.unwrap_or(30);
    if max_days == 0 {
        errors.push("exceptions.max_days", "must be at least 1");
    }
    let defaults = crate::exceptions::model::Required::default();
    let r = &raw.required_approvals;
    let required = crate::exceptions::model::Required {
        raw_bucket: r.raw_bucket.unwrap_or(defaults.raw_bucket),
        download: r.download.unwrap_or(defaults.download),
        workspace_access: r.workspace_access.unwrap_or(defaults.workspace_access),
    };
    if [
        required.raw_bucket,
        required.download,
        required.workspace_access,
    ]
    .contains(&0)
    {
        errors.push(
            "exceptions.required_approvals",
            "every kind needs at least one approval",
        );
    }
    let refresh = raw.refresh_secs.unwrap_or(30);
    if refresh == 0 {
        errors.push("exceptions.refresh_secs", "must be at least 1");
    }
    (errors.0.len() == before).then(|| ExceptionsConfig {
        store: raw.store.clone(),
        approver_groups: raw.approver_groups.clone(),
        max_days,
        required,
        refresh: Duration::from_secs(refresh),
    })
}

/// `45s`, `30m`, `4h`, `7d`: the durations operators and approvers type.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let units = [("s", 1u64), ("m", 60), ("h", 3600), ("d", 86_400)];
    units.into_iter().find_map(|(suffix, secs)| {
        let n = text.strip_suffix(suffix)?.parse::<u64>().ok()?;
        Some(Duration::from_secs(n.checked_mul(secs)?))
    })
}

fn parse_addr(value: &str, key: &str, errors: &mut Errors) -> Option<SocketAddr> {
    match value.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            errors.push(key, format!("{value:?} is not an IP:port address"));
            None
        }
    }
}

fn must_exist(path: &Path, key: &str, errors: &mut Errors) {
    if !path.exists() {
        errors.push(key, format!("file {} does not exist", path.display()));
    }
}

/// Parses `http://host[:port]` or `https://host[:port]` (an optional trailing `/` is allowed;
/// any other path is refused so the forwarded path is exactly the classified one).
fn parse_upstream(value: &str, key: &str, errors: &mut Errors) -> Option<Upstream> {
    let (scheme, rest) = if let Some(rest) = value.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else if let Some(rest) = value.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else {
        errors.push(
            key,
            format!("{value:?} must start with http:// or https://"),
        );
        return None;
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty()
        || authority.contains(['/', '?', '#', '@'])
        || authority.parse::<http::uri::Authority>().is_err()
    {
        errors.push(
            key,
            format!("{value:?} must be scheme://host[:port] with no path, query or user"),
        );
        return None;
    }
    Some(Upstream {
        scheme,
        authority: authority.to_ascii_lowercase(),
    })
}

/// Lower-cases a host name or `*.suffix` pattern and rejects anything else.
pub fn normalize_host_pattern(host: &str) -> Option<String> {
    let h = host.trim().to_ascii_lowercase();
    let bare = h.strip_prefix("*.").unwrap_or(&h);
    let valid = !bare.is_empty()
        && bare.len() <= 253
        && bare
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b':')
        && !bare.starts_with('.')
        && !bare.ends_with('.');
    valid.then_some(h)
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
