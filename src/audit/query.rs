//! `gatehouse audit query`: searches the trail. Decision records are filtered; each match is
//! joined with its completion record (by `exchange`). Reading is streaming, one line at a time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::Value;

/// What to look for; every field that is set must match.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub principal: Option<String>,
    pub workspace: Option<String>,
    pub action: Option<String>,
    pub category: Option<String>,
    /// `allow`, `deny` or `would_deny`.
    pub decision: Option<String>,
    pub rule: Option<String>,
    pub exception: Option<String>,
    pub bucket: Option<String>,
    /// Prefix of the asset as the request named it (`dbfs:/tmp/`, `s3://bucket/key`).
    pub asset: Option<String>,
    pub request_id: Option<String>,
    /// Lower bound on `ts`, as an RFC 3339 UTC string.
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: Option<usize>,
}

/// Turns `1h`, `30m`, `2d`, `45s` or an RFC 3339 UTC time into a bound comparable with `ts`.
pub fn time_bound(text: &str, now: SystemTime) -> Result<String, String> {
    if let Some(back) = crate::config::parse_duration(text) {
        let at = now.checked_sub(back).unwrap_or(SystemTime::UNIX_EPOCH);
        return Ok(super::timestamp(at));
    }
    // Re-written in the trail's own fixed-width form, so that comparing text compares time
    // (`…08:00:00Z` as written sorts after `…08:00:00.5…Z`).
    if let Ok(at) =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        let nanos = at.unix_timestamp_nanos().max(0) as u128;
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(nanos as u64);
        return Ok(super::timestamp(at));
    }
    Err(format!(
        "{text:?} is neither a duration (30s, 15m, 1h, 7d) nor an RFC 3339 UTC time (2026-11-27T08:00:00Z)"
    ))
}

pub(super) fn text<'a>(record: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut v = record;
    for p in path {
        v = v.get(*p)?;
    }
    v.as_str()
}

/// The asset as the request named it: `s3://bucket/key`, or the path (`dbfs:/x`). An S3
/// request without a bucket (`ListBuckets`) names no data and so no asset.
pub fn asset_name(record: &Value) -> Option<String> {
    let asset = record.get("asset")?;
    if asset.get("kind").and_then(Value::as_str) == Some("s3") {
        let bucket = asset.get("bucket").and_then(Value::as_str)?;
        let key = asset.get("key").and_then(Value::as_str).unwrap_or("");
        return Some(format!("s3://{bucket}/{key}"));
    }
    asset.get("path").and_then(Value::as_str).map(str::to_owned)
}

impl Filter {
    /// Byte strings every matching line must contain: each exact-match value, quoted, when
    /// JSON writes it verbatim (no quote, backslash or control character to escape).
    fn needles(&self) -> Vec<Vec<u8>> {
        [
            &self.principal,
            &self.workspace,
            &self.action,
            &self.category,
            &self.decision,
            &self.rule,
            &self.exception,
            &self.bucket,
            &self.request_id,
        ]
        .into_iter()
        .flatten()
        .filter(|v| verbatim(v))
        .map(|v| format!("\"{v}\"").into_bytes())
        .chain(self.asset.iter().flat_map(|a| asset_needles(a)))
        .collect()
    }

    /// Whether a line's `ts` (read without parsing) is outside the time bounds.
    fn out_of_time(&self, line: &[u8]) -> bool {
        if self.since.is_none() && self.until.is_none() {
            return false;
        }
        let Some(ts) = string_member(line, br#""ts":""#) else {
            return false;
        };
        self.since.as_deref().is_some_and(|s| ts < s.as_bytes())
            || self.until.as_deref().is_some_and(|u| ts > u.as_bytes())
    }

    /// Whether a decision record matches. Pure.
    pub fn matches(&self, r: &Value) -> bool {
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        let ts = text(r, &["ts"]).unwrap_or("");
        eq(&self.principal, text(r, &["principal", "id"]))
            && eq(&self.workspace, text(r, &["workspace"]))
            && eq(&self.action, text(r, &["action", "name"]))
            && eq(&self.category, text(r, &["action", "category"]))
            && self.decision.as_deref().is_none_or(|d| decision_is(r, d))
            && eq(&self.rule, text(r, &["decision", "rule"]))
            && eq(&self.exception, text(r, &["decision", "exception"]))
            && eq(&self.bucket, text(r, &["asset", "bucket"]))
            && eq(&self.request_id, text(r, &["request_id"]))
            && self
                .asset
                .as_deref()
                .is_none_or(|prefix| asset_name(r).is_some_and(|a| a.starts_with(prefix)))
            && self.since.as_deref().is_none_or(|s| ts >= s)
            && self.until.as_deref().is_none_or(|u| ts <= u)
    }
}

/// One matching request: its decision and, when written, its completion.
#[derive(Debug, Clone)]
pub struct Hit {
    pub decision: Value,
    pub completion: Option<Value>,
}

/// Scans every segment of `dir`, gateway by gateway, in chain order.
pub fn run(dir: &Path, filter: &Filter) -> Result<Vec<Hit>, String> {
    let needles = filter.needles();
    let mut hits: Vec<Hit> = Vec::new();
    let mut waiting: HashMap<Vec<u8>, usize> = HashMap::new();
    for_each_line(dir, |line| {
        // Cheap byte checks first; most lines of a large trail are never parsed.
        let is_completion = contains(line, br#""phase":"completion""#);
        if is_completion {
            let Some(exchange) = string_member(line, br#""exchange":""#) else {
                return;
            };
            if let Some(i) = waiting.remove(exchange) {
                hits[i].completion = serde_json::from_slice(line).ok();
            }
            return;
        }
        if !contains(line, br#""phase":"decision""#)
            || filter.limit.is_some_and(|l| hits.len() >= l)
            || !needles.iter().all(|n| contains(line, n))
            || filter.out_of_time(line)
        {
            return;
        }
        let Ok(record) = serde_json::from_slice::<Value>(line) else {
            return;
        };
        if filter.matches(&record) {
            let exchange = text(&record, &["exchange"])
                .unwrap_or("")
                .as_bytes()
                .to_vec();
            waiting.insert(exchange, hits.len());
            hits.push(Hit {
                decision: record,
                completion: None,
            });
        }
    })?;
    Ok(hits)
}

/// Calls `f` with every line (without its newline) of every segment of `dir`, in chain order.
pub fn for_each_line(dir: &Path, mut f: impl FnMut(&[u8])) -> Result<(), String> {
    use std::io::BufRead;
    let mut line = Vec::with_capacity(4096);
    for path in trail_files(dir)? {
        let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => f(line.strip_suffix(b"\n").unwrap_or(&line)),
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        }
    }
    Ok(())
}

/// Whether JSON writes `value` as is (nothing to escape), so it can be searched for in bytes.
pub(super) fn verbatim(value: &str) -> bool {
    !value.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20)
}

/// Byte strings every record whose asset starts with `prefix` contains: for `s3://b/k…` the
/// bucket (whole when the prefix names it whole) and the start of the key; otherwise the
/// quoted start of the path.
pub(super) fn asset_needles(prefix: &str) -> Vec<Vec<u8>> {
    if !verbatim(prefix) {
        return Vec::new();
    }
    match prefix.strip_prefix("s3://") {
        Some(rest) => match rest.split_once('/') {
            Some((bucket, key)) => {
                let mut n = vec![format!("\"{bucket}\"").into_bytes()];
                if !key.is_empty() {
                    n.push(format!("\"{key}").into_bytes());
                }
                n
            }
            None => vec![format!("\"{rest}").into_bytes()],
        },
        None => vec![format!("\"{prefix}").into_bytes()],
    }
}

pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

/// The raw value of the first string member starting with `key` (`"exchange":"`), for values
/// the gateway writes without escapes.
pub(super) fn string_member<'a>(line: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let start = memchr::memmem::find(line, key)? + key.len();
    let len = memchr::memchr(b'"', &line[start..])?;
    Some(&line[start..start + len])
}

/// Every segment file of `dir` in chain order, or why there is none.
pub fn trail_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let files: Vec<PathBuf> = super::segment::list(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .into_iter()
        .map(|s| s.path)
        .collect();
    if files.is_empty() {
        return Err(format!(
            "{}: no trail segments (<gateway>.<seq>.jsonl) here",
            dir.display()
        ));
    }
    Ok(files)
}

/// Whether a decision record's outcome is `want`: `allow` or `deny` by its effect, or
/// `would_deny` for a request let through only because its rule is report-only.
fn decision_is(r: &Value, want: &str) -> bool {
    match want {
        "would_deny" => text(r, &["decision", "would_deny"]).is_some(),
        _ => text(r, &["decision", "effect"]) == Some(want),
    }
}

/// The hits as an aligned table.
pub fn table(hits: &[Hit]) -> String {
    let mut rows = vec![[
        "ts".to_owned(),
        "principal".to_owned(),
        "workspace".to_owned(),
        "action".to_owned(),
        "asset".to_owned(),
        "effect".to_owned(),
        "rule".to_owned(),
        "status".to_owned(),
        "request_id".to_owned(),
    ]];
    for h in hits {
        let d = &h.decision;
        let get = |p: &[&str]| text(d, p).unwrap_or("-").to_owned();
        rows.push([
            get(&["ts"]),
            get(&["principal", "id"]),
            get(&["workspace"]),
            get(&["action", "name"]),
            asset_name(d).unwrap_or_else(|| "-".to_owned()),
            get(&["decision", "effect"]),
            get(&["decision", "rule"]),
            h.completion
                .as_ref()
                .and_then(|c| c.get("status"))
                .map_or("-".to_owned(), |s| s.to_string()),
            get(&["request_id"]),
        ]);
    }
    let rows: Vec<Vec<String>> = rows.into_iter().map(Vec::from).collect();
    crate::report::aligned_table(&rows)
}

/// The hits as JSON lines: the decision record with its completion under `completion`.
pub fn json_lines(hits: &[Hit]) -> String {
    let mut out = String::new();
    for h in hits {
        let mut d = h.decision.clone();
        if let Some(obj) = d.as_object_mut() {
            obj.insert(
                "completion".to_owned(),
                h.completion.clone().unwrap_or(Value::Null),
            );
        }
        out.push_str(&d.to_string());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    /// `effect` "would_deny" writes what report-only mode records: an allow naming the rule.
    fn decision(principal: &str, effect: &str, ts: &str) -> Value {
        let decision = match effect {
            "would_deny" => json!({"effect": "allow", "rule": "api.unknown", "exception": null,
                                   "would_deny": "api.unknown"}),
            _ => json!({"effect": effect, "rule": "downloads.blocked", "exception": null}),
        };
        json!({"ts": ts, "phase": "decision", "exchange": principal, "principal": {"id": principal},
               "workspace": "prod-analytics", "action": {"name": "dbfs.read", "category": "download"},
               "asset": {"kind": "dbfs", "path": "dbfs:/tmp/x.csv"}, "decision": decision})
    }

    /// A report-only request is an allow (it went upstream) and is also found as would_deny.
    #[test]
    fn report_only_requests_are_allowed_and_would_deny() {
        let carol = decision("carol", "would_deny", "2026-11-27T10:00:00.000000Z");
        let alice = decision("alice", "deny", "2026-11-27T10:00:00.000000Z");
        let by = |d: &str| Filter {
            decision: Some(d.into()),
            ..Default::default()
        };
        assert!(by("allow").matches(&carol));
        assert!(by("would_deny").matches(&carol));
        assert!(!by("deny").matches(&carol));
        assert!(!by("would_deny").matches(&alice));
    }

    /// The byte pre-checks may only skip lines the full match would reject: a scan of a real
    /// trail file gives, for every filter, exactly what matching every record gives.
    #[test]
    fn byte_prechecks_never_change_what_a_scan_finds() {
        let dir = tempfile::tempdir().unwrap();
        let mut records = vec![
            decision("alice", "deny", "2026-11-27T08:00:00.000000Z"),
            decision(
                "bob \"the\" builder",
                "allow",
                "2026-11-27T09:00:00.000000Z",
            ),
            decision("carol", "would_deny", "2026-11-27T10:00:00.000000Z"),
        ];
        records.push(json!({"ts": "2026-11-27T11:00:00.000000Z", "phase": "decision", "exchange": "s3",
            "principal": {"id": "sp-etl"}, "asset": {"kind": "s3", "bucket": "buk-raw", "key": "landing/a.csv"},
            "decision": {"effect": "deny"}}));
        records.push(json!({"ts": "2026-11-27T11:00:01.000000Z", "phase": "completion", "exchange": "s3", "status": 403}));
        let mut text = Vec::new();
        let mut prev = super::super::chain::GENESIS;
        for (i, r) in records.iter().enumerate() {
            prev =
                super::super::chain::seal(&mut text, i as u64 + 1, r.to_string().as_bytes(), &prev);
        }
        std::fs::write(
            dir.path()
                .join(super::super::segment::segment_name("gw", 1)),
            text,
        )
        .unwrap();
        let filters = [
            Filter {
                principal: Some("bob \"the\" builder".into()),
                ..Default::default()
            },
            Filter {
                principal: Some("alice".into()),
                decision: Some("deny".into()),
                ..Default::default()
            },
            Filter {
                asset: Some("s3://buk-r".into()),
                ..Default::default()
            },
            Filter {
                asset: Some("s3://buk-raw/landing/".into()),
                ..Default::default()
            },
            Filter {
                asset: Some("s3://buk-raw/other/".into()),
                ..Default::default()
            },
            Filter {
                asset: Some("dbfs:/tmp/".into()),
                ..Default::default()
            },
            Filter {
                since: Some("2026-11-27T09:00:00Z".into()),
                until: Some("2026-11-27T10:30:00Z".into()),
                ..Default::default()
            },
            Filter {
                decision: Some("would_deny".into()),
                ..Default::default()
            },
        ];
        for f in filters {
            let found: Vec<String> = run(dir.path(), &f)
                .unwrap()
                .iter()
                .map(|h| h.decision["exchange"].as_str().unwrap().to_owned())
                .collect();
            let expected: Vec<String> = records
                .iter()
                .filter(|r| r["phase"] == "decision" && f.matches(r))
                .map(|r| r["exchange"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(found, expected, "{f:?}");
            assert!(
                !expected.is_empty() || f.asset.as_deref() == Some("s3://buk-raw/other/"),
                "{f:?}"
            );
        }
        let s3 = run(
            dir.path(),
            &Filter {
                bucket: Some("buk-raw".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(s3[0].completion.as_ref().unwrap()["status"], 403);
    }

    #[test]
    fn filters_match_every_field_they_name() {
        let r = decision("alice", "deny", "2026-11-27T08:00:00.000000Z");
        let f = |f: Filter| f.matches(&r);
        assert!(f(Filter::default()));
        assert!(f(Filter {
            principal: Some("alice".into()),
            decision: Some("deny".into()),
            ..Default::default()
        }));
        assert!(!f(Filter {
            principal: Some("bob".into()),
            ..Default::default()
        }));
        assert!(f(Filter {
            asset: Some("dbfs:/tmp/".into()),
            ..Default::default()
        }));
        assert!(!f(Filter {
            asset: Some("dbfs:/prod/".into()),
            ..Default::default()
        }));
        assert!(f(Filter {
            since: Some("2026-11-27T07:00:00Z".into()),
            ..Default::default()
        }));
        assert!(!f(Filter {
            until: Some("2026-11-27T07:00:00Z".into()),
            ..Default::default()
        }));
        let s3 = json!({"asset": {"kind": "s3", "bucket": "buk-raw", "key": "a/b.csv"}});
        assert!(Filter {
            bucket: Some("buk-raw".into()),
            asset: Some("s3://buk-raw/a/".into()),
            ..Default::default()
        }
        .matches(&s3));
    }

    #[test]
    fn time_bounds_accept_durations_and_rfc3339() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(
            time_bound("1h", now).unwrap(),
            super::super::timestamp(now - Duration::from_secs(3600))
        );
        assert_eq!(
            time_bound("2026-11-27T08:00:00Z", now).unwrap(),
            "2026-11-27T08:00:00.000000Z"
        );
        assert_eq!(
            time_bound("2026-11-27T09:00:00.5+01:00", now).unwrap(),
            "2026-11-27T08:00:00.500000Z",
            "offsets and fractions are re-written in the trail's own form"
        );
        assert!(time_bound("yesterday", now).is_err());
    }
}
