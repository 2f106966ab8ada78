//! Audit record shapes (DESIGN.md "Audit record") and the scrubbing of secrets from them.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::classify::{Action, Asset};
use crate::identity::Principal;
use crate::policy::Decision;

/// Query parameters whose values are secrets: masked before anything is recorded.
const SECRET_PARAMS: &[&str] = &[
    "token",
    "access_token",
    "id_token",
    "refresh_token",
    "code",
    "client_secret",
    "password",
    "secret",
    "api_key",
    "apikey",
    "key",
    "sig",
    "signature",
    "x-amz-signature",
    "x-amz-security-token",
    "x-amz-credential",
    "sv",
    "se",
    "skoid",
];

const MASK: &str = "***";

fn is_secret_name(name: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(name)
        .decode_utf8_lossy()
        .to_ascii_lowercase();
    SECRET_PARAMS.iter().any(|s| decoded == *s)
        || ["token", "secret", "password", "signature", "session"]
            .iter()
            .any(|w| decoded.contains(w))
}

/// A value that is a credential whatever its name: a JWT or a Databricks personal token.
fn is_secret_value(value: &str) -> bool {
    let v = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
    let v = v.trim();
    v.starts_with("eyJ") || (v.starts_with("dapi") && v.len() >= 20)
}

/// Masks secret values in `name=value` pairs separated by any of `separators`.
fn scrub_pairs<'a>(text: &'a str, separators: &[char]) -> Cow<'a, str> {
    let secret = |pair: &str| match pair.split_once('=') {
        Some((name, value)) => is_secret_name(name) || is_secret_value(value),
        None => is_secret_value(pair),
    };
    if !text.split(separators).any(secret) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let end = rest.find(separators).unwrap_or(rest.len());
        let pair = &rest[..end];
        if secret(pair) {
            if let Some((name, _)) = pair.split_once('=') {
                out.push_str(name);
                out.push('=');
            }
            out.push_str(MASK);
        } else {
            out.push_str(pair);
        }
        if end == rest.len() {
            break;
        }
        out.push_str(&rest[end..end + 1]);
        rest = &rest[end + 1..];
    }
    Cow::Owned(out)
}

/// Returns the query with the values of secret-bearing parameters masked. The raw query is
/// never recorded; parameter names are kept so the security team sees what was sent.
pub fn scrub_query(query: &str) -> Cow<'_, str> {
    scrub_pairs(query, &['&', ';'])
}

/// Returns the path with secret-bearing `;name=value` segment parameters masked.
pub fn scrub_path(path: &str) -> Cow<'_, str> {
    if !path.contains(';') {
        return Cow::Borrowed(path);
    }
    scrub_pairs(path, &[';', '/'])
}

/// RFC 3339 UTC with microseconds: `2026-11-27T05:41:08.123456Z`.
pub fn timestamp(at: SystemTime) -> String {
    let d = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let dt =
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    // Written digit by digit: this runs twice per request, and `format!` with padding showed
    // in profiles.
    let mut out = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut value: u32| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, dt.year().clamp(0, 9999) as u32);
    put(5, 2, u32::from(u8::from(dt.month())));
    put(8, 2, u32::from(dt.day()));
    put(11, 2, u32::from(dt.hour()));
    put(14, 2, u32::from(dt.minute()));
    put(17, 2, u32::from(dt.second()));
    put(20, 6, d.subsec_micros());
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Debug, Serialize)]
pub struct ClientInfo<'a> {
    pub addr: &'a str,
    pub cert_subject: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub struct RequestInfo<'a> {
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    /// Already scrubbed with `scrub_query`.
    pub query: Option<&'a str>,
}

#[derive(Serialize)]
struct PrincipalOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    groups: &'a [String],
    auth: &'static str,
}

#[derive(Serialize)]
struct ActionOut {
    name: &'static str,
    category: &'static str,
}

#[derive(Serialize)]
struct AssetOut<'a> {
    kind: &'static str,
    path: &'a str,
}

/// An S3 object (or bucket) as the trail records it.
#[derive(Debug, Serialize)]
pub struct S3AssetInfo<'a> {
    pub bucket: Option<&'a str>,
    pub key: Option<&'a str>,
    /// `bucket/key` of a copy's source.
    pub copy_source: Option<&'a str>,
    /// Every key a `DeleteObjects` names, in its body's order (at most 1,000: S3's limit, and
    /// a body naming more is refused unread).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<&'a [String]>,
}

/// Which credential an S3 request presented (never the signature or the secret).
#[derive(Debug, Serialize)]
pub struct CredentialInfo<'a> {
    pub access_key: &'a str,
    pub scheme: &'static str,
    pub temporary: bool,
}

#[derive(Serialize)]
#[serde(untagged)]
enum AssetView<'a> {
    Path(AssetOut<'a>),
    S3 {
        kind: &'static str,
        #[serde(flatten)]
        location: &'a S3AssetInfo<'a>,
    },
}

#[derive(Serialize)]
struct DecisionOut<'a> {
    effect: &'static str,
    rule: &'static str,
    reason: &'a str,
    exception: Option<&'a str>,
    /// Present only on a request a report-only rule would have denied.
    #[serde(skip_serializing_if = "Option::is_none")]
    would_deny: Option<&'static str>,
}

/// The `decision` record: written, and acknowledged, before anything goes upstream.
pub struct DecisionRecord<'a> {
    pub ts: &'a str,
    pub gateway: &'a str,
    pub request_id: &'a str,
    pub exchange: &'a str,
    pub client: ClientInfo<'a>,
    pub principal: Option<&'a Principal>,
    pub workspace: Option<&'a str>,
    pub request: RequestInfo<'a>,
    pub action: Option<&'a Action>,
    pub asset: Option<&'a Asset>,
    /// For S3 requests, recorded instead of `asset`.
    pub s3_asset: Option<&'a S3AssetInfo<'a>>,
    pub credential: Option<&'a CredentialInfo<'a>>,
    pub decision: &'a Decision,
}

#[derive(Serialize)]
struct DecisionOutRecord<'a> {
    ts: &'a str,
    gateway: &'a str,
    request_id: &'a str,
    exchange: &'a str,
    phase: &'static str,
    client: &'a ClientInfo<'a>,
    principal: Option<PrincipalOut<'a>>,
    workspace: Option<&'a str>,
    request: &'a RequestInfo<'a>,
    action: Option<ActionOut>,
    asset: Option<AssetView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credential: Option<&'a CredentialInfo<'a>>,
    decision: DecisionOut<'a>,
}

impl DecisionRecord<'_> {
    /// The record as a JSON object body *without* `seq` (the writer adds it).
    pub fn to_json(&self) -> Vec<u8> {
        let out = DecisionOutRecord {
            ts: self.ts,
            gateway: self.gateway,
            request_id: self.request_id,
            exchange: self.exchange,
            phase: "decision",
            client: &self.client,
            principal: self.principal.map(|p| PrincipalOut {
                id: &p.id,
                kind: p.kind.as_str(),
                groups: &p.groups,
                auth: p.auth.as_str(),
            }),
            workspace: self.workspace,
            request: &self.request,
            action: self.action.map(|a| ActionOut {
                name: a.name,
                category: a.category.as_str(),
            }),
            asset: match (self.s3_asset, self.asset) {
                (Some(location), _) => Some(AssetView::S3 {
                    kind: "s3",
                    location,
                }),
                (None, Some(a)) => Some(AssetView::Path(AssetOut {
                    kind: a.kind.as_str(),
                    path: &a.path,
                })),
                (None, None) => None,
            },
            credential: self.credential,
            decision: DecisionOut {
                effect: self.decision.effect.as_str(),
                rule: self.decision.rule,
                reason: &self.decision.reason,
                exception: self.decision.exception.as_deref(),
                would_deny: self.decision.would_deny,
            },
        };
        to_json_sized(&out, 1024)
    }
}

/// A `config` record: which configuration the gateway runs on, in the same chain as the
/// requests it governs. `event` is `load` (at start) or `reload`; `errors` lists why a reload
/// was refused (the running configuration stays).
pub fn config_event(
    config: &crate::config::Config,
    event: &str,
    errors: &[String],
    needs_restart: &[&str],
    by: Option<&str>,
) -> Vec<u8> {
    serde_json::json!({
        "ts": timestamp(SystemTime::now()),
        "gateway": config.server.gateway_id,
        "phase": "config",
        "event": event,
        "outcome": if errors.is_empty() { "applied" } else { "refused" },
        "errors": errors,
        "needs_restart": needs_restart,
        "by": by,
        "source": config.source.display().to_string(),
        "sha256": config.sha256,
        "workspaces": config.workspaces.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(),
        "buckets": config.buckets.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(),
        "durability": format!("{:?}", config.audit.durability).to_lowercase(),
        "signed_digests": config.audit.signing_key.is_some(),
    })
    .to_string()
    .into_bytes()
}

/// The `completion` record: what happened after the decision.
#[derive(Debug, Serialize)]
pub struct CompletionRecord<'a> {
    pub ts: &'a str,
    pub gateway: &'a str,
    pub request_id: &'a str,
    pub exchange: &'a str,
    pub phase: &'static str,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_us: u64,
    pub upstream_us: Option<u64>,
    /// Why the exchange ended abnormally (upstream unreachable, client went away …).
    pub error: Option<&'a str>,
    /// The error code an S3 upstream answered with (`SignatureDoesNotMatch`,
    /// `InvalidAccessKeyId`, `AccessDenied`, …): its verdict on the attribution.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_error: Option<&'a str>,
}

impl CompletionRecord<'_> {
    pub fn to_json(&self) -> Vec<u8> {
        to_json_sized(self, 512)
    }
}

/// Serialises into a buffer sized for the typical record up front: `to_vec` starts at 128
/// bytes and regrows (copying) three times for a decision record, on every request.
fn to_json_sized<T: Serialize>(value: &T, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity);
    match serde_json::to_writer(&mut out, value) {
        Ok(()) => out,
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_query_values_are_masked_and_names_kept() {
        assert_eq!(scrub_query("path=%2Fx&offset=0"), "path=%2Fx&offset=0");
        assert_eq!(
            scrub_query("X-Amz-Signature=abc&X-Amz-Security-Token=def&list-type=2"),
            "X-Amz-Signature=***&X-Amz-Security-Token=***&list-type=2"
        );
        assert_eq!(
            scrub_query("a=1&access_token=eyJhbGciOi&my_token=z"),
            "a=1&access_token=***&my_token=***"
        );
        assert_eq!(scrub_query("%74oken=zzz"), "%74oken=***");
        assert_eq!(scrub_query("a=1;token=z"), "a=1;token=***");
        assert_eq!(
            scrub_query("x=eyJhbGciOiJFUzI1NiJ9.e30.sig&y=dapi0123456789abcdef0123"),
            "x=***&y=***"
        );
    }

    #[test]
    fn secret_path_parameters_are_masked() {
        assert_eq!(scrub_path("/api/2.0/dbfs/read"), "/api/2.0/dbfs/read");
        assert_eq!(
            scrub_path("/api/2.0/dbfs/read;jsessionid=abc/x;a=1"),
            "/api/2.0/dbfs/read;jsessionid=***/x;a=1"
        );
    }

    #[test]
    fn timestamps_are_rfc3339_with_micros() {
        let t = UNIX_EPOCH + std::time::Duration::from_micros(1_795_000_000_123_456);
        assert_eq!(timestamp(t), "2026-11-18T11:06:40.123456Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + std::time::Duration::from_micros(951_782_400_000_007);
        assert_eq!(timestamp(t), "2000-02-29T00:00:00.000007Z");
    }
}
