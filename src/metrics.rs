//! Prometheus text-format (0.0.4) metrics for gatehouse.
//!
//! Recording runs on every request, so it is atomics only (Relaxed): no locks, no allocation
//! (a series' key is set once, by its first request).
//! Rendering happens on scrape and allocates freely.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, OnceLock};

/// Histogram upper bounds in µs; `LE` holds the same bounds in seconds, written out exactly.
const BOUNDS_US: [u64; 18] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000,
];
const LE: [&str; 19] = [
    "0.00005", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
    "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "+Inf",
];

/// Fixed-bucket latency histogram, recorded in microseconds, rendered in seconds.
pub struct Histogram {
    /// Non-cumulative per-bucket counts, the last is +Inf. `_count` is their total rather than a
    /// separate counter, so a scrape racing an observation still renders `_count == +Inf`.
    buckets: [AtomicU64; LE.len()],
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub const fn new() -> Self {
        let (buckets, sum_us) = ([const { AtomicU64::new(0) }; LE.len()], AtomicU64::new(0));
        Histogram { buckets, sum_us }
    }

    /// Bounds are inclusive (`le`): exactly 50µs lands in the 0.00005 bucket.
    pub fn observe_us(&self, us: u64) {
        let i = BOUNDS_US.partition_point(|&bound| bound < us);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    fn render(&self, out: &mut String, spec: &str) {
        family(out, spec);
        let name = spec.split(' ').next().unwrap_or_default();
        let mut cumulative = 0u64;
        for (bucket, le) in self.buckets.iter().zip(LE) {
            cumulative += bucket.load(Relaxed);
            let _ = writeln!(out, "gatehouse_{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        // Integer formatting keeps the sum exact (no f64 rounding).
        let sum = self.sum_us.load(Relaxed);
        let (secs, micros) = (sum / 1_000_000, sum % 1_000_000);
        let _ = writeln!(out, "gatehouse_{name}_sum {secs}.{micros:06}");
        let _ = writeln!(out, "gatehouse_{name}_count {cumulative}");
    }
}

/// Kind of failure talking to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    Connect,
    Tls,
    Timeout,
    Reset,
    Protocol,
    Other,
}

impl UpstreamError {
    /// In discriminant order: `upstream_errors` is indexed by `kind as usize`.
    const ALL: [UpstreamError; 6] = [
        UpstreamError::Connect,
        UpstreamError::Tls,
        UpstreamError::Timeout,
        UpstreamError::Reset,
        UpstreamError::Protocol,
        UpstreamError::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamError::Connect => "connect",
            UpstreamError::Tls => "tls",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Reset => "reset",
            UpstreamError::Protocol => "protocol",
            UpstreamError::Other => "other",
        }
    }
}

/// Values sampled by the caller at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub audit_queue_depth: u64,
    pub audit_healthy: bool,
    pub jwks_age_seconds: Option<f64>,
    pub jwks_refresh_failures: u64,
    pub live_exceptions: u64,
    pub config_loaded_unix: u64,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
}

// Family specs for `family`: "name type help..." (name without the `gatehouse_` prefix).
const REQUESTS: &str = "requests_total counter Requests by workspace, category, decision and rule.";
const REQUEST_DURATION: &str = "request_duration_seconds histogram Whole-request latency.";
const UPSTREAM_DURATION: &str = "upstream_duration_seconds histogram Time to upstream headers.";
const UPSTREAM_ERRORS: &str = "upstream_errors_total counter Failed upstream exchanges by kind.";
const AUDIT_FSYNC: &str = "audit_fsync_seconds histogram Audit log fsync latency.";
const JWKS_AGE: &str = "jwks_age_seconds gauge Seconds since the JWKS was last fetched.";
const RELOADS: &str = "config_reloads_total counter Configuration reloads by outcome.";
/// Unlabelled families, in the order `render` lists their values.
const SCALARS: [&str; 11] = [
    "open_connections gauge Open client connections.",
    "connections_total counter Accepted client connections.",
    "connections_refused_total counter Connections refused by the global connection cap.",
    "rate_limited_total counter Requests answered 429.",
    "token_cache_hits_total counter Token validation cache hits.",
    "token_cache_misses_total counter Token validation cache misses.",
    "audit_queue_depth gauge Audit records waiting to be written.",
    "audit_healthy gauge 1 if the audit writer is healthy, else 0.",
    "jwks_refresh_failures_total counter Failed JWKS refreshes.",
    "live_exceptions gauge Policy exceptions currently in force.",
    "config_loaded_timestamp_seconds gauge Unix time the running configuration was loaded.",
];

const SERIES_CAPACITY: usize = 4096;
/// Bounds the per-call cost once the table is (nearly) full; in a sparse table runs are short.
const MAX_PROBE: usize = 64;
const MAX_WORKSPACES: usize = 64;
const OTHER_WORKSPACE: u16 = u16::MAX;

#[derive(Clone, Copy, Default)]
struct Key {
    workspace: u16,
    category: &'static str,
    decision: &'static str,
    rule: &'static str,
}

impl Key {
    /// Pointer identity (address + length), not content: cheap, and equal strings at different
    /// addresses merely take separate slots, which `render` merges.
    fn same(&self, o: &Key) -> bool {
        self.workspace == o.workspace
            && std::ptr::eq(self.rule, o.rule)
            && std::ptr::eq(self.category, o.category)
            && std::ptr::eq(self.decision, o.decision)
    }

    fn hash(&self) -> usize {
        // murmur3 finalizer: pointers share their high bits, so spread them over the low bits.
        fn mix(mut x: u64) -> u64 {
            x = (x ^ (x >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
            x = (x ^ (x >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
            x ^ (x >> 33)
        }
        let p = |s: &str| s.as_ptr() as usize as u64 ^ (s.len() as u64).rotate_left(48);
        let h = mix(p(self.rule) ^ u64::from(self.workspace).rotate_left(32));
        mix(h ^ p(self.category).rotate_left(21) ^ p(self.decision).rotate_left(42)) as usize
    }
}

#[derive(Default)]
struct Slot {
    /// Set once, by the first request with this key; an atomic load to read after that.
    key: OnceLock<Key>,
    count: AtomicU64,
}

/// Open-addressed, insert-only table of `requests_total` series.
struct Series {
    slots: Box<[Slot]>,
    overflow: AtomicU64,
}

impl Default for Series {
    fn default() -> Self {
        Series::with_capacity(SERIES_CAPACITY)
    }
}

impl Series {
    fn with_capacity(capacity: usize) -> Self {
        let slots = (0..capacity.next_power_of_two())
            .map(|_| Slot::default())
            .collect();
        Series {
            slots,
            overflow: AtomicU64::new(0),
        }
    }

    fn count(&self, key: Key) {
        let mask = self.slots.len() - 1;
        let mut i = key.hash() & mask;
        for _ in 0..self.slots.len().min(MAX_PROBE) {
            let slot = &self.slots[i];
            // Claiming an empty slot is one tiny initialisation; losing the race to another
            // key just moves on, like any occupied slot.
            let have = match slot.key.get() {
                Some(k) => k,
                None => {
                    let _ = slot.key.set(key);
                    slot.key.get().unwrap_or(&key)
                }
            };
            if have.same(&key) {
                slot.count.fetch_add(1, Relaxed);
                return;
            }
            i = (i + 1) & mask;
        }
        self.overflow.fetch_add(1, Relaxed);
    }

    /// Snapshot of the published series, with counts.
    fn snapshot(&self) -> impl Iterator<Item = (Key, u64)> + '_ {
        self.slots
            .iter()
            .filter_map(|s| s.key.get().map(|k| (*k, s.count.load(Relaxed))))
    }
}

/// All gateway metrics; share it as `Arc<Metrics>`.
#[derive(Default)]
pub struct Metrics {
    series: Series,
    /// Touched only when building configuration and on scrape, so a Mutex is fine.
    workspaces: Mutex<Vec<String>>,
    request_duration: Histogram,
    upstream_duration: Histogram,
    audit_fsync: Histogram,
    upstream_errors: [AtomicU64; UpstreamError::ALL.len()],
    open_connections: AtomicU64,
    connections_total: AtomicU64,
    connections_refused: AtomicU64,
    rate_limited: AtomicU64,
    token_cache_hits: AtomicU64,
    token_cache_misses: AtomicU64,
}

/// Holds one `gatehouse_open_connections` until dropped.
#[must_use = "dropping the guard marks the connection closed"]
pub struct ConnectionGuard(Arc<Metrics>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Relaxed);
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Interns a workspace name. Call when building configuration, not per request (it locks).
    /// Ids start at 1 (0 means no workspace, rendered `-`); past 64 names, all map to `other`.
    pub fn workspace_id(&self, name: &str) -> u16 {
        let mut names = self.workspaces.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = names.iter().position(|n| n == name) {
            return i as u16 + 1;
        }
        if names.len() >= MAX_WORKSPACES {
            return OTHER_WORKSPACE;
        }
        names.push(name.to_owned());
        names.len() as u16
    }

    /// Counts one request. Lock-free and allocation-free; never blocks or panics. When the
    /// series table is full, counts into one series with every label `other`.
    pub fn count_request(
        &self,
        workspace: u16,
        category: &'static str,
        decision: &'static str,
        rule: &'static str,
    ) {
        self.series.count(Key {
            workspace,
            category,
            decision,
            rule,
        });
    }

    pub fn request_duration(&self) -> &Histogram {
        &self.request_duration
    }

    pub fn upstream_duration(&self) -> &Histogram {
        &self.upstream_duration
    }

    pub fn audit_fsync(&self) -> &Histogram {
        &self.audit_fsync
    }

    pub fn upstream_error(&self, kind: UpstreamError) {
        self.upstream_errors[kind as usize].fetch_add(1, Relaxed);
    }

    /// Call on accept: the connection counts as open until the guard is dropped, unless
    /// `max` are open already (then it is counted as refused and `None` is returned). The
    /// gauge is also the count the global connection cap is enforced on.
    pub fn connection_within(self: &Arc<Self>, max: u64) -> Option<ConnectionGuard> {
        let admitted = self
            .open_connections
            .fetch_update(Relaxed, Relaxed, |open| (open < max).then_some(open + 1))
            .is_ok();
        if !admitted {
            self.connections_refused.fetch_add(1, Relaxed);
            return None;
        }
        self.connections_total.fetch_add(1, Relaxed);
        Some(ConnectionGuard(Arc::clone(self)))
    }

    /// A request answered 429.
    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Relaxed);
    }

    pub fn token_cache(&self, hit: bool) {
        let counter = if hit {
            &self.token_cache_hits
        } else {
            &self.token_cache_misses
        };
        counter.fetch_add(1, Relaxed);
    }

    /// Renders every family in Prometheus text format 0.0.4.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(8192);
        self.render_requests(&mut out);
        self.request_duration.render(&mut out, REQUEST_DURATION);
        self.upstream_duration.render(&mut out, UPSTREAM_DURATION);
        family(&mut out, UPSTREAM_ERRORS);
        for kind in UpstreamError::ALL {
            let n = self.upstream_errors[kind as usize].load(Relaxed);
            let kind = kind.as_str();
            let _ = writeln!(
                out,
                "gatehouse_upstream_errors_total{{kind=\"{kind}\"}} {n}"
            );
        }
        let c = |a: &AtomicU64| a.load(Relaxed);
        let values = [
            c(&self.open_connections),
            c(&self.connections_total),
            c(&self.connections_refused),
            c(&self.rate_limited),
            c(&self.token_cache_hits),
            c(&self.token_cache_misses),
            g.audit_queue_depth,
            u64::from(g.audit_healthy),
            g.jwks_refresh_failures,
            g.live_exceptions,
            g.config_loaded_unix,
        ];
        for (spec, value) in SCALARS.iter().zip(values) {
            family(&mut out, spec);
            let name = spec.split(' ').next().unwrap_or_default();
            let _ = writeln!(out, "gatehouse_{name} {value}");
        }
        self.audit_fsync.render(&mut out, AUDIT_FSYNC);
        if let Some(age) = g.jwks_age_seconds {
            family(&mut out, JWKS_AGE);
            let _ = writeln!(out, "gatehouse_jwks_age_seconds {}", float(age));
        }
        family(&mut out, RELOADS);
        for (outcome, n) in [("applied", g.reloads_ok), ("refused", g.reloads_failed)] {
            let _ = writeln!(
                out,
                "gatehouse_config_reloads_total{{outcome=\"{outcome}\"}} {n}"
            );
        }
        out
    }

    fn render_requests(&self, out: &mut String) {
        let names = self.workspaces.lock().unwrap_or_else(|e| e.into_inner());
        // Keyed by label values: merges equal strings behind different pointers, and sorts.
        let mut series: BTreeMap<[&str; 4], u64> = BTreeMap::new();
        for (k, n) in self.series.snapshot() {
            let ws = match k.workspace {
                0 => "-",
                id => names
                    .get(usize::from(id) - 1)
                    .map_or("other", String::as_str),
            };
            *series
                .entry([ws, k.category, k.decision, k.rule])
                .or_default() += n;
        }
        let overflow = self.series.overflow.load(Relaxed);
        if overflow > 0 {
            *series.entry(["other"; 4]).or_default() += overflow;
        }
        family(out, REQUESTS);
        for (values, n) in series {
            let mut sep = '{';
            out.push_str("gatehouse_requests_total");
            for (label, value) in REQUEST_LABELS.iter().zip(values) {
                let _ = write!(out, "{sep}{label}=\"");
                escape_label(out, value);
                out.push('"');
                sep = ',';
            }
            let _ = writeln!(out, "}} {n}");
        }
    }
}

const REQUEST_LABELS: [&str; 4] = ["workspace", "category", "decision", "rule"];

/// `spec` is "name type help...", as in the HELP and TYPE lines (name without `gatehouse_`).
fn family(out: &mut String, spec: &str) {
    let mut parts = spec.splitn(3, ' ');
    let name = parts.next().unwrap_or_default();
    let kind = parts.next().unwrap_or_default();
    let help = parts.next().unwrap_or_default();
    let _ = writeln!(out, "# HELP gatehouse_{name} {help}");
    let _ = writeln!(out, "# TYPE gatehouse_{name} {kind}");
}

/// Rust spells infinities `inf`; Prometheus wants `+Inf`/`-Inf`/`NaN`.
fn float(v: f64) -> String {
    match v {
        f64::INFINITY => "+Inf".into(),
        f64::NEG_INFINITY => "-Inf".into(),
        v if v.is_nan() => "NaN".into(),
        v => v.to_string(),
    }
}

fn escape_label(out: &mut String, value: &str) {
    for ch in value.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    type Samples = HashMap<String, f64>;

    fn ensure(ok: bool, what: &'static str) -> Result<(), &'static str> {
        ok.then_some(()).ok_or(what)
    }

    fn is_name(s: &str) -> bool {
        let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
        !s.is_empty() && !s.starts_with(|c: char| c.is_ascii_digit()) && s.chars().all(ok)
    }

    /// Minimal 0.0.4 checker. Returns `name{l="v",..}` -> value; fails on a malformed line, a
    /// sample before its family's HELP and TYPE, interleaved families, or a duplicate series.
    fn parse(text: &str) -> Result<Samples, String> {
        let (mut help, mut types) = (HashSet::new(), HashMap::new());
        let (mut done, mut current, mut samples) = (HashSet::new(), String::new(), Samples::new());
        for line in text.lines() {
            let mut step = || -> Result<(), &'static str> {
                if let Some(rest) = line.strip_prefix("# HELP ") {
                    let name = rest.split(' ').next().unwrap();
                    ensure(is_name(name), "bad HELP")?;
                    help.insert(name.to_owned());
                } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                    let (name, kind) = rest.split_once(' ').ok_or("bad TYPE")?;
                    let kinds = ["counter", "gauge", "histogram", "summary", "untyped"];
                    ensure(kinds.contains(&kind) && is_name(name), "bad TYPE")?;
                    types.insert(name.to_owned(), kind);
                } else if !line.starts_with('#') {
                    let end = line.find(['{', ' ']).ok_or("no value")?;
                    let (name, mut rest) = line.split_at(end);
                    ensure(is_name(name), "bad metric name")?;
                    let mut labels = Vec::new();
                    if let Some(mut r) = rest.strip_prefix('{') {
                        while !r.starts_with('}') {
                            let (label, after) = r.split_once("=\"").ok_or("bad label")?;
                            ensure(is_name(label), "bad label name")?;
                            let (mut value, mut chars) = (String::new(), after.char_indices());
                            r = loop {
                                match chars.next().ok_or("unterminated value")? {
                                    (_, '\\') => match chars.next() {
                                        Some((_, 'n')) => value.push('\n'),
                                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                                        _ => return Err("bad escape"),
                                    },
                                    (i, '"') => break &after[i + 1..],
                                    (_, c) => value.push(c),
                                }
                            };
                            labels.push(format!("{label}={value:?}"));
                            r = r.strip_prefix(',').unwrap_or(r);
                        }
                        rest = &r[1..];
                    }
                    let v = match rest.strip_prefix(' ').ok_or("no value")? {
                        "+Inf" => f64::INFINITY,
                        "-Inf" => f64::NEG_INFINITY,
                        v => v.parse().map_err(|_| "bad value")?,
                    };
                    let hist = |base: &&str| types.get(*base) == Some(&"histogram");
                    let fam = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s).filter(hist))
                        .unwrap_or(name);
                    ensure(
                        help.contains(fam) && types.contains_key(fam),
                        "no HELP/TYPE",
                    )?;
                    if fam != current {
                        done.insert(std::mem::replace(&mut current, fam.to_owned()));
                        ensure(!done.contains(fam), "interleaved family")?;
                    }
                    let series = format!("{name}{{{}}}", labels.join(","));
                    ensure(samples.insert(series, v).is_none(), "duplicate series")?;
                }
                Ok(())
            };
            step().map_err(|e| format!("{e}: {line:?}"))?;
        }
        Ok(samples)
    }

    /// Scrapes with default gauges; keys lose the `gatehouse_` prefix to keep asserts short.
    fn scrape(m: &Metrics, g: &Gauges) -> Samples {
        let out = m.render(g);
        let s = parse(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));
        let strip = |(k, v): (String, f64)| (k["gatehouse_".len()..].to_owned(), v);
        s.into_iter().map(strip).collect()
    }

    fn req(ws: &str, cat: &str, dec: &str, rule: &str) -> String {
        format!(
            "requests_total{{workspace={ws:?},category={cat:?},decision={dec:?},rule={rule:?}}}"
        )
    }

    fn requests(s: &Samples) -> Vec<f64> {
        let is_req = |(k, _): &(&String, &f64)| k.starts_with("requests_total");
        s.iter().filter(is_req).map(|(_, v)| *v).collect()
    }

    fn leak(s: &str) -> &'static str {
        s.to_owned().leak()
    }

    const NO_GAUGES: &Gauges = &Gauges {
        audit_queue_depth: 0,
        audit_healthy: false,
        jwks_age_seconds: None,
        jwks_refresh_failures: 0,
        live_exceptions: 0,
        config_loaded_unix: 0,
        reloads_ok: 0,
        reloads_failed: 0,
    };

    #[test]
    fn counts_by_labels_and_merges_equal_strings() {
        let m = Metrics::new();
        let ws = m.workspace_id("acme");
        assert_eq!(m.workspace_id("acme"), ws);
        // One binding per literal, so only the rule pointers differ.
        let (cat, deny, rule) = ("download", "deny", "downloads.blocked");
        let rule2 = leak(rule);
        assert!(!std::ptr::eq(rule, rule2));
        m.count_request(ws, cat, deny, rule);
        m.count_request(ws, cat, deny, rule);
        m.count_request(ws, cat, deny, rule2);
        m.count_request(ws, cat, "report_only", rule);
        m.count_request(0, "-", "allow", "default");
        assert_eq!(
            m.series.snapshot().count(),
            4,
            "rule and rule2 use two slots"
        );
        let s = scrape(&m, NO_GAUGES);
        assert_eq!(s[&req("acme", cat, deny, rule)], 3.0);
        assert_eq!(s[&req("acme", cat, "report_only", rule)], 1.0);
        assert_eq!(s[&req("-", "-", "allow", "default")], 1.0);
        assert_eq!(requests(&s).len(), 3);
    }

    #[test]
    fn requests_sorted_and_only_counted_series() {
        let m = Metrics::new();
        assert!(!m.render(NO_GAUGES).contains("gatehouse_requests_total{"));
        for rule in ["z.rule", "a.rule", "m.rule"] {
            m.count_request(0, "auth", "deny", rule);
        }
        let out = m.render(NO_GAUGES);
        let rules: Vec<_> = out
            .lines()
            .filter_map(|l| l.split("rule=").nth(1))
            .collect();
        assert_eq!(rules, ["\"a.rule\"} 1", "\"m.rule\"} 1", "\"z.rule\"} 1"]);
    }

    #[test]
    fn full_table_overflows_into_other() {
        let m = Metrics {
            series: Series::with_capacity(8),
            ..Metrics::default()
        };
        for i in 0..8 {
            m.count_request(1, "config", "deny", leak(&format!("r{i}")));
        }
        m.count_request(1, "config", "deny", "r.extra");
        m.count_request(2, "upload", "allow", "r.extra2");
        m.count_request(1, "config", "deny", "r.extra");
        // One series counted again (not r7, checked alone below; slot order follows the
        // leaked strings' addresses, which differ from run to run).
        let k = m
            .series
            .snapshot()
            .map(|(k, _)| k)
            .find(|k| k.rule != "r7")
            .unwrap();
        m.count_request(k.workspace, k.category, k.decision, k.rule);
        let s = scrape(&m, NO_GAUGES);
        assert_eq!(s[&req("other", "other", "other", "other")], 3.0);
        // Id 1 was never handed out by workspace_id, so it renders as "other" too.
        assert_eq!(s[&req("other", "config", "deny", "r7")], 1.0);
        assert_eq!(requests(&s).iter().filter(|&&v| v == 2.0).count(), 1);
        assert_eq!(requests(&s).iter().sum::<f64>(), 12.0);
    }

    #[test]
    fn workspace_cap_maps_to_other() {
        let m = Metrics::new();
        let ids: Vec<u16> = (0..64).map(|i| m.workspace_id(&format!("w{i}"))).collect();
        assert_eq!(ids, (1..=64).collect::<Vec<u16>>());
        assert_eq!(m.workspace_id("w64"), OTHER_WORKSPACE);
        m.count_request(m.workspace_id("w65"), "other", "allow", "x");
        m.count_request(ids[63], "other", "allow", "x");
        let s = scrape(&m, NO_GAUGES);
        assert_eq!(s[&req("other", "other", "allow", "x")], 1.0);
        assert_eq!(s[&req("w63", "other", "allow", "x")], 1.0);
    }

    #[test]
    fn histogram_buckets_sum_count() {
        let m = Metrics::new();
        for us in [0, 50, 51, 1_000_000, 29_999_999, 40_000_000] {
            m.request_duration().observe_us(us);
        }
        let out = m.render(NO_GAUGES);
        let s = scrape(&m, NO_GAUGES);
        let b = |le: &str| s[&format!("request_duration_seconds_bucket{{le={le:?}}}")];
        let les = [
            "0.00005", "0.0001", "0.00025", "0.5", "1", "2.5", "30", "+Inf",
        ];
        let want = [2.0, 3.0, 3.0, 3.0, 4.0, 4.0, 5.0, 6.0];
        assert_eq!(les.map(b), want);
        assert_eq!(s["request_duration_seconds_count{}"], 6.0);
        assert!(out.contains("\ngatehouse_request_duration_seconds_sum 71.000100\n"));
        let prefix = "gatehouse_request_duration_seconds_bucket{le=";
        let lines: Vec<_> = out.lines().filter_map(|l| l.strip_prefix(prefix)).collect();
        assert_eq!((lines.len(), lines[18]), (19, "\"+Inf\"} 6"));
        assert_eq!(s["upstream_duration_seconds_count{}"], 0.0);
        assert!(out.contains("\ngatehouse_upstream_duration_seconds_sum 0.000000\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        let ws = m.workspace_id("a\"b\\c\nd");
        m.count_request(ws, "other", "deny", "q\"uote");
        let out = m.render(NO_GAUGES);
        let want = r#"{workspace="a\"b\\c\nd",category="other",decision="deny",rule="q\"uote"} 1"#;
        assert!(out.contains(want), "{out}");
        let s = scrape(&m, NO_GAUGES);
        assert_eq!(s[&req("a\"b\\c\nd", "other", "deny", "q\"uote")], 1.0);
    }

    #[test]
    fn connection_guard_and_simple_counters() {
        let m = Arc::new(Metrics::new());
        let (g1, g2) = (m.connection_within(2), m.connection_within(2));
        assert!(
            m.connection_within(2).is_none(),
            "a third over a cap of two"
        );
        drop(g1);
        m.rate_limited();
        for hit in [true, true, false] {
            m.token_cache(hit);
        }
        m.upstream_error(UpstreamError::Tls);
        let s = scrape(&m, NO_GAUGES);
        assert_eq!(s["open_connections{}"], 1.0);
        drop(g2);
        assert_eq!(scrape(&m, NO_GAUGES)["open_connections{}"], 0.0);
        assert_eq!(s["connections_total{}"], 2.0);
        assert_eq!(s["connections_refused_total{}"], 1.0);
        assert_eq!(s["rate_limited_total{}"], 1.0);
        assert_eq!(s["token_cache_hits_total{}"], 2.0);
        assert_eq!(s["token_cache_misses_total{}"], 1.0);
        assert_eq!(s["upstream_errors_total{kind=\"tls\"}"], 1.0);
        assert_eq!(s["upstream_errors_total{kind=\"connect\"}"], 0.0);
        for (i, kind) in UpstreamError::ALL.into_iter().enumerate() {
            assert_eq!(kind as usize, i);
        }
    }

    #[test]
    fn concurrent_counting_is_exact() {
        let m = Arc::new(Metrics::new());
        let w = m.workspace_id("w");
        let rules = ["r.a", "r.b", "r.c", "r.d", "r.e"];
        let key = move |t: usize, i: usize| ((i % 2) as u16 * w, rules[(i * 7 + t) % 5]);
        let n = if cfg!(miri) { 100 } else { 20_000 };
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let m = Arc::clone(&m);
                std::thread::spawn(move || {
                    for i in 0..n {
                        let (ws, rule) = key(t, i);
                        m.count_request(ws, "execute", "deny", rule);
                        m.upstream_duration().observe_us(i as u64);
                    }
                })
            })
            .collect();
        for _ in 0..3 {
            scrape(&m, NO_GAUGES); // scrapes racing the writers must still parse
        }
        threads.into_iter().for_each(|t| t.join().unwrap());
        let mut expected = HashMap::new();
        for (t, i) in (0..8).flat_map(|t| (0..n).map(move |i| (t, i))) {
            *expected.entry(key(t, i)).or_insert(0.0) += 1.0;
        }
        let s = scrape(&m, NO_GAUGES);
        for ((ws, rule), n) in expected {
            let ws = ["-", "w"][usize::from(ws)];
            assert_eq!(s[&req(ws, "execute", "deny", rule)], n);
        }
        assert_eq!(requests(&s).iter().sum::<f64>(), 8.0 * n as f64);
        assert_eq!(s["upstream_duration_seconds_count{}"], 8.0 * n as f64);
    }

    #[test]
    fn full_render_parses_with_all_gauges() {
        let m = Metrics::new();
        m.count_request(m.workspace_id("w"), "credentials", "allow", "creds.ok");
        m.audit_fsync().observe_us(1234);
        let g = Gauges {
            audit_queue_depth: 7,
            audit_healthy: true,
            jwks_age_seconds: Some(12.5),
            jwks_refresh_failures: 2,
            live_exceptions: 3,
            config_loaded_unix: 1_700_000_000,
            reloads_ok: 4,
            reloads_failed: 1,
        };
        let s = scrape(&m, &g);
        assert_eq!(s["audit_queue_depth{}"], 7.0);
        assert_eq!(s["audit_healthy{}"], 1.0);
        assert_eq!(s["jwks_age_seconds{}"], 12.5);
        assert_eq!(s["jwks_refresh_failures_total{}"], 2.0);
        assert_eq!(s["live_exceptions{}"], 3.0);
        assert_eq!(s["config_loaded_timestamp_seconds{}"], 1.7e9);
        assert_eq!(s["config_reloads_total{outcome=\"applied\"}"], 4.0);
        assert_eq!(s["config_reloads_total{outcome=\"refused\"}"], 1.0);
        assert_eq!(s["audit_fsync_seconds_bucket{le=\"0.0025\"}"], 1.0);
        assert_eq!(s["audit_fsync_seconds_bucket{le=\"0.001\"}"], 0.0);
        let g = Gauges {
            jwks_age_seconds: None,
            ..g
        };
        assert!(!m.render(&g).contains("jwks_age_seconds"));
        assert_eq!(scrape(&m, &g).len(), s.len() - 1);
        let floats = [f64::INFINITY, f64::NAN, 0.25].map(float);
        assert_eq!(floats, ["+Inf", "NaN", "0.25"]);
    }

    #[test]
    fn checker_rejects_bad_input() {
        let head = "# HELP x y\n# TYPE x gauge\n";
        assert!(parse(&format!("{head}x{{a=\"\\\\\\\"\\n\"}} +Inf\n")).is_ok());
        assert!(parse("# HELP x y\nx 1\n").is_err(), "sample without TYPE");
        let interleaved = "x 1\n# HELP z y\n# TYPE z gauge\nz 1\nx 2";
        let bad = [
            "x{a=\"b} 1",
            "x{a=\"\\t\"} 1",
            "x 1\nx 1",
            "x one",
            "x{1a=\"\"} 1",
        ];
        for bad in bad.into_iter().chain([interleaved]) {
            assert!(parse(&format!("{head}{bad}\n")).is_err(), "{bad}");
        }
    }
}
