//! The trail index: a SQLite database that the review console searches instead of reading
//! the whole trail, so a search stays quick on a trail of millions of records.
//!
//! It is derived data and never the evidence:
//! - it is built from the segments and kept up to date incrementally (each pass reads only
//!   the bytes appended since the last, and only whole lines);
//! - it is rebuilt from nothing whenever it no longer fits them (a segment shrank or
//!   vanished, the file is unreadable, its schema is another version);
//! - a search returns where the matching records are, and they are read back from the
//!   segments and matched again, so a page only ever shows what the trail itself says.
//!
//! Whether the trail holds is `verify`'s job, not the index's.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row as _, Sqlite};

use super::query::{self, Filter, Hit};
use super::segment;

/// Bumped whenever the tables change: an index of another version is rebuilt.
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &[&str] = &[
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    // How far each segment file has been read: always the end of a whole line.
    "CREATE TABLE segments (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, indexed INTEGER NOT NULL)",
    // One row per decision record: the fields a search filters on, and where the line is.
    "CREATE TABLE requests (
        id INTEGER PRIMARY KEY,
        at_us INTEGER NOT NULL,
        gateway TEXT NOT NULL,
        seq INTEGER NOT NULL,
        exchange TEXT NOT NULL,
        request_id TEXT,
        principal TEXT,
        workspace TEXT,
        action TEXT,
        category TEXT,
        effect TEXT,
        would_deny TEXT,
        rule TEXT,
        exception TEXT,
        bucket TEXT,
        asset TEXT,
        seg INTEGER NOT NULL,
        offset INTEGER NOT NULL,
        length INTEGER NOT NULL,
        UNIQUE (gateway, seq)
    )",
    // Where each completion record is, by the exchange it completes.
    "CREATE TABLE completions (
        exchange TEXT PRIMARY KEY,
        seg INTEGER NOT NULL,
        offset INTEGER NOT NULL,
        length INTEGER NOT NULL
    ) WITHOUT ROWID",
    // Newest first is `at_us DESC, id DESC`; each index ends in `at_us` (and, implicitly, the
    // rowid), so a filtered page is read in order straight off one index.
    "CREATE INDEX requests_at ON requests (at_us)",
    "CREATE INDEX requests_principal ON requests (principal, at_us)",
    // Also covers the denials page's counts (by slot and rule, principal, asset): they read
    // this index alone, not the rows.
    "CREATE INDEX requests_effect ON requests (effect, at_us, rule, principal, asset)",
    "CREATE INDEX requests_rule ON requests (rule, at_us)",
    "CREATE INDEX requests_action ON requests (action, at_us)",
    "CREATE INDEX requests_bucket ON requests (bucket, at_us) WHERE bucket IS NOT NULL",
    "CREATE INDEX requests_exception ON requests (exception, at_us) WHERE exception IS NOT NULL",
    "CREATE INDEX requests_would_deny ON requests (at_us) WHERE would_deny IS NOT NULL",
    "CREATE INDEX requests_asset ON requests (asset) WHERE asset IS NOT NULL",
    "CREATE INDEX requests_exchange ON requests (exchange)",
    "CREATE INDEX requests_request_id ON requests (request_id)",
];

/// Bytes read from a segment at a time.
const CHUNK: usize = 4 << 20;
/// Rows per INSERT statement (19 parameters each, well under SQLite's 32,766).
const ROWS_PER_INSERT: usize = 400;
/// A pass runs at least this often, so that a page finds at most about this much of the
/// trail still to index.
const QUIET_PASS: Duration = Duration::from_secs(1);

/// How far the index has read the trail, for the console's notice while it catches up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub indexed_bytes: u64,
    pub trail_bytes: u64,
    /// Why the last pass failed, if it did.
    pub error: Option<String>,
}

impl Progress {
    pub fn caught_up(&self) -> bool {
        self.error.is_none() && self.indexed_bytes >= self.trail_bytes
    }
}

pub struct TrailIndex {
    dir: PathBuf,
    pool: SqlitePool,
    /// Passes asked for; a search asks for one and waits for it.
    asked: AtomicU64,
    /// The number of the last pass asked for that has finished.
    done: tokio::sync::watch::Sender<u64>,
    wake: tokio::sync::Notify,
    progress: Mutex<Progress>,
    /// A read-back found a record other than the index said: rebuild at the next pass.
    stale: AtomicBool,
}

/// One page of matches, newest first.
#[derive(Debug, Clone)]
pub struct Page {
    pub hits: Vec<Hit>,
    /// Matches, counted up to the cap given to [`TrailIndex::page`].
    pub total: usize,
    /// Whether there are more matches than `total` says.
    pub more: bool,
}

/// Denials over a period as SQL counts them: the console draws them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DenialCounts {
    /// (slot, rule, denials)
    pub by_slot_and_rule: Vec<(usize, String, u32)>,
    pub principals: Vec<(String, u32)>,
    pub assets: Vec<(String, u32)>,
    pub total: u32,
}

/// What a decision record contributes to the index.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Indexed {
    at_us: i64,
    gateway: String,
    seq: i64,
    exchange: String,
    request_id: Option<String>,
    principal: Option<String>,
    workspace: Option<String>,
    action: Option<String>,
    category: Option<String>,
    effect: Option<String>,
    would_deny: Option<String>,
    rule: Option<String>,
    exception: Option<String>,
    bucket: Option<String>,
    asset: Option<String>,
    offset: i64,
    length: i64,
}

/// Where a completion record is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Completion {
    exchange: String,
    offset: i64,
    length: i64,
}

/// The fields of a trail line the index reads; everything else is skipped unparsed.
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(default)]
    seq: i64,
    #[serde(borrow, default)]
    ts: Cow<'a, str>,
    #[serde(borrow, default)]
    gateway: Cow<'a, str>,
    #[serde(borrow, default)]
    phase: Cow<'a, str>,
    #[serde(borrow, default)]
    exchange: Cow<'a, str>,
    #[serde(borrow)]
    request_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    principal: Option<Named<'a>>,
    #[serde(borrow)]
    workspace: Option<Cow<'a, str>>,
    #[serde(borrow)]
    action: Option<ActionLine<'a>>,
    asset: Option<Value>,
    #[serde(borrow)]
    decision: Option<DecisionLine<'a>>,
}

#[derive(Deserialize)]
struct Named<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ActionLine<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    category: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct DecisionLine<'a> {
    #[serde(borrow)]
    effect: Option<Cow<'a, str>>,
    #[serde(borrow)]
    rule: Option<Cow<'a, str>>,
    #[serde(borrow)]
    exception: Option<Cow<'a, str>>,
    #[serde(borrow)]
    would_deny: Option<Cow<'a, str>>,
}

/// Microseconds since the epoch of an RFC 3339 time.
pub fn micros(ts: &str) -> Option<i64> {
    time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| (t.unix_timestamp_nanos() / 1000) as i64)
}

/// The rows of the whole lines in `bytes`, which start at `base` in their segment. Pure.
fn rows_of(bytes: &[u8], base: u64) -> (Vec<Indexed>, Vec<Completion>) {
    let mut rows = Vec::new();
    let mut completions = Vec::new();
    let mut at = 0usize;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        let start = at;
        at += line.len();
        let Some(line) = line.strip_suffix(b"\n") else {
            break; // not whole yet
        };
        let decision = query::contains(line, br#""phase":"decision""#);
        if !decision && !query::contains(line, br#""phase":"completion""#) {
            continue;
        }
        let Ok(l) = serde_json::from_slice::<Line>(line) else {
            continue;
        };
        let offset = (base + start as u64) as i64;
        let length = line.len() as i64;
        let owned = |c: Option<Cow<str>>| c.map(Cow::into_owned);
        match l.phase.as_ref() {
            "completion" => completions.push(Completion {
                exchange: l.exchange.into_owned(),
                offset,
                length,
            }),
            "decision" => {
                let asset = l
                    .asset
                    .as_ref()
                    .and_then(|a| query::asset_name(&serde_json::json!({ "asset": a })));
                let bucket = l
                    .asset
                    .as_ref()
                    .and_then(|a| a.get("bucket"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let (action, category) = match l.action {
                    Some(a) => (owned(a.name), owned(a.category)),
                    None => (None, None),
                };
                let d = l.decision;
                let (effect, rule, exception, would_deny) = match d {
                    Some(d) => (
                        owned(d.effect),
                        owned(d.rule),
                        owned(d.exception),
                        owned(d.would_deny),
                    ),
                    None => (None, None, None, None),
                };
                rows.push(Indexed {
                    // A time that is not one sorts first, as its text does in a scan.
                    at_us: micros(&l.ts).unwrap_or(i64::MIN),
                    gateway: l.gateway.into_owned(),
                    seq: l.seq,
                    exchange: l.exchange.into_owned(),
                    request_id: owned(l.request_id),
                    principal: l.principal.and_then(|p| owned(p.id)),
                    workspace: owned(l.workspace),
                    action,
                    category,
                    effect,
                    would_deny,
                    rule,
                    exception,
                    bucket,
                    asset,
                    offset,
                    length,
                });
            }
            _ => {}
        }
    }
    (rows, completions)
}

/// The end of the last whole line in `bytes` (0 when there is none).
fn whole_lines(bytes: &[u8]) -> usize {
    memchr::memrchr(b'\n', bytes).map_or(0, |i| i + 1)
}

/// Reads whole lines of `path` from `from`: at least one line when one is complete, however
/// long, and at most about `CHUNK` bytes otherwise.
fn read_whole_lines(path: &Path, from: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::with_capacity(CHUNK);
    loop {
        let before = buf.len();
        (&mut file).take(CHUNK as u64).read_to_end(&mut buf)?;
        let end = whole_lines(&buf);
        let at_eof = buf.len() - before < CHUNK;
        if end > 0 || at_eof {
            buf.truncate(end);
            return Ok(buf);
        }
    }
}

fn sql_error(what: &str) -> impl Fn(sqlx::Error) -> String + '_ {
    move |e| format!("trail index: {what}: {e}")
}

impl TrailIndex {
    /// Opens (or creates, or rebuilds) the index of `dir` at `file` and starts the task that
    /// keeps it up to date (stop it with the gateway).
    pub async fn start(
        dir: PathBuf,
        file: PathBuf,
    ) -> Result<(Arc<TrailIndex>, tokio::task::JoinHandle<()>), String> {
        let pool = match open(&file).await {
            Ok(pool) => pool,
            Err(why) => {
                // Derived data: whatever is wrong with it, start again from the trail.
                tracing::warn!(file = %file.display(), why = %why, "rebuilding the trail index");
                remove(&file)?;
                open(&file).await?
            }
        };
        let (done, _) = tokio::sync::watch::channel(0);
        let index = Arc::new(TrailIndex {
            dir,
            pool,
            asked: AtomicU64::new(0),
            done,
            wake: tokio::sync::Notify::new(),
            progress: Mutex::new(Progress::default()),
            stale: AtomicBool::new(false),
        });
        let keep = index.clone();
        let task = tokio::spawn(async move { keep.run().await });
        Ok((index, task))
    }

    async fn run(&self) {
        loop {
            let serving = self.asked.load(Ordering::Acquire);
            let result = self.pass().await;
            if let Err(e) = &result {
                tracing::error!(error = %e, "the trail index could not read the trail");
            }
            if let Ok(mut p) = self.progress.lock() {
                p.error = result.err();
            }
            self.done.send_replace(serving);
            if self.asked.load(Ordering::Acquire) == serving {
                let _ = tokio::time::timeout(QUIET_PASS, self.wake.notified()).await;
            }
        }
    }

    /// Brings the index up to date with everything in the trail now, waiting at most `wait`;
    /// returns how far it got.
    pub async fn refresh(&self, wait: Duration) -> Progress {
        let mine = self.asked.fetch_add(1, Ordering::AcqRel) + 1;
        let mut done = self.done.subscribe();
        self.wake.notify_one();
        let _ = tokio::time::timeout(wait, done.wait_for(|d| *d >= mine)).await;
        self.progress()
    }

    pub fn progress(&self) -> Progress {
        self.progress.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// One pass: every whole line appended to the trail since the last.
    async fn pass(&self) -> Result<(), String> {
        let dir = self.dir.clone();
        let on_disk = tokio::task::spawn_blocking(
            move || -> std::io::Result<Vec<(segment::SegmentFile, u64)>> {
                segment::list(&dir)?
                    .into_iter()
                    .map(|s| {
                        let len = std::fs::metadata(&s.path)?.len();
                        Ok((s, len))
                    })
                    .collect()
            },
        )
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let mut known: HashMap<String, (i64, u64)> =
            sqlx::query("SELECT id, name, indexed FROM segments")
                .fetch_all(&self.pool)
                .await
                .map_err(sql_error("reading"))?
                .into_iter()
                .map(|r| {
                    (
                        r.get::<String, _>(1),
                        (r.get::<i64, _>(0), r.get::<i64, _>(2) as u64),
                    )
                })
                .collect();
        let sizes: HashMap<&str, u64> =
            on_disk.iter().map(|(s, l)| (s.name.as_str(), *l)).collect();
        let no_longer_fits = known
            .iter()
            .any(|(name, (_, indexed))| sizes.get(name.as_str()).is_none_or(|len| len < indexed));
        if no_longer_fits || self.stale.swap(false, Ordering::AcqRel) {
            tracing::info!(dir = %self.dir.display(), "the trail changed under its index; rebuilding it");
            self.clear().await?;
            known.clear();
        }
        let mut trail_bytes: u64 = sizes.values().sum();
        let mut indexed_bytes: u64 = known.values().map(|(_, i)| i).sum();
        self.set_progress(indexed_bytes, trail_bytes);
        for (seg, len) in &on_disk {
            let (id, mut from) = match known.get(&seg.name) {
                Some(k) => *k,
                None => (self.add_segment(&seg.name).await?, 0),
            };
            while from < *len {
                let (path, at) = (seg.path.clone(), from);
                let (read, rows, completions) = tokio::task::spawn_blocking(move || {
                    read_whole_lines(&path, at).map(|bytes| {
                        let (rows, completions) = rows_of(&bytes, at);
                        (bytes.len() as u64, rows, completions)
                    })
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("{}: {e}", seg.path.display()))?;
                if read == 0 {
                    // Only a line still being written: not part of the trail yet.
                    trail_bytes -= len - from;
                    self.set_progress(indexed_bytes, trail_bytes);
                    break;
                }
                self.store(id, from + read, &rows, &completions).await?;
                from += read;
                indexed_bytes += read;
                self.set_progress(indexed_bytes, trail_bytes);
            }
        }
        Ok(())
    }

    /// The segment's id, added unread. Another gateway's console sharing this index may have
    /// added it a moment ago: rows are unique by (gateway, seq), so reading it twice is
    /// harmless.
    async fn add_segment(&self, name: &str) -> Result<i64, String> {
        let fail = sql_error("adding a segment");
        sqlx::query("INSERT OR IGNORE INTO segments (name, indexed) VALUES (?, 0)")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(&fail)?;
        sqlx::query_scalar("SELECT id FROM segments WHERE name = ?")
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .map_err(&fail)
    }

    fn set_progress(&self, indexed_bytes: u64, trail_bytes: u64) {
        if let Ok(mut p) = self.progress.lock() {
            p.indexed_bytes = indexed_bytes;
            p.trail_bytes = trail_bytes.max(indexed_bytes);
        }
    }

    async fn clear(&self) -> Result<(), String> {
        let mut tx = self.pool.begin().await.map_err(sql_error("clearing"))?;
        for table in ["requests", "completions", "segments"] {
            sqlx::query(&format!("DELETE FROM {table}"))
                .execute(&mut *tx)
                .await
                .map_err(sql_error("clearing"))?;
        }
        tx.commit().await.map_err(sql_error("clearing"))
    }

    /// The rows of one read and the segment's new indexed length, in one transaction: a
    /// crash keeps both or neither.
    async fn store(
        &self,
        seg: i64,
        indexed: u64,
        rows: &[Indexed],
        completions: &[Completion],
    ) -> Result<(), String> {
        let fail = sql_error("writing");
        let mut tx = self.pool.begin().await.map_err(&fail)?;
        for batch in rows.chunks(ROWS_PER_INSERT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT OR IGNORE INTO requests (at_us, gateway, seq, exchange, request_id, principal, workspace, action, category, effect, would_deny, rule, exception, bucket, asset, seg, offset, length) ",
            );
            q.push_values(batch, |mut b, r| {
                b.push_bind(r.at_us)
                    .push_bind(&r.gateway)
                    .push_bind(r.seq)
                    .push_bind(&r.exchange)
                    .push_bind(&r.request_id)
                    .push_bind(&r.principal)
                    .push_bind(&r.workspace)
                    .push_bind(&r.action)
                    .push_bind(&r.category)
                    .push_bind(&r.effect)
                    .push_bind(&r.would_deny)
                    .push_bind(&r.rule)
                    .push_bind(&r.exception)
                    .push_bind(&r.bucket)
                    .push_bind(&r.asset)
                    .push_bind(seg)
                    .push_bind(r.offset)
                    .push_bind(r.length);
            });
            q.build().execute(&mut *tx).await.map_err(&fail)?;
        }
        for batch in completions.chunks(ROWS_PER_INSERT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT OR REPLACE INTO completions (exchange, seg, offset, length) ",
            );
            q.push_values(batch, |mut b, c| {
                b.push_bind(&c.exchange)
                    .push_bind(seg)
                    .push_bind(c.offset)
                    .push_bind(c.length);
            });
            q.build().execute(&mut *tx).await.map_err(&fail)?;
        }
        sqlx::query("UPDATE segments SET indexed = max(indexed, ?) WHERE id = ?")
            .bind(indexed as i64)
            .bind(seg)
            .execute(&mut *tx)
            .await
            .map_err(&fail)?;
        tx.commit().await.map_err(&fail)
    }

    /// The matches `skip..skip + take` counted from the newest, each joined with its
    /// completion, and how many match (counted up to `count_cap`).
    pub async fn page(
        &self,
        filter: &Filter,
        skip: usize,
        take: usize,
        count_cap: usize,
    ) -> Result<Page, String> {
        let mut count =
            QueryBuilder::<Sqlite>::new("SELECT count(*) FROM (SELECT 1 FROM requests r");
        push_where(&mut count, filter)?;
        count
            .push(" LIMIT ")
            .push_bind(count_cap as i64 + 1)
            .push(")");
        let counted: i64 = count
            .build()
            .fetch_one(&self.pool)
            .await
            .map_err(sql_error("counting"))?
            .get(0);
        // An asset prefix is a range on its own index, whose matches SQLite then sorts by
        // time: quick for a few thousand, seconds for every request in the trail (measured:
        // 2.7 s for 500,000). When there are more matches than the pages show, they are
        // dense, and walking the time index newest first finds a page at once.
        let by_time =
            filter.asset.is_some() && counted as usize > count_cap && !has_indexed_equality(filter);
        let mut select = QueryBuilder::<Sqlite>::new(locate(if by_time {
            "INDEXED BY requests_at"
        } else {
            ""
        }));
        push_where(&mut select, filter)?;
        select
            .push(" ORDER BY r.at_us DESC, r.id DESC LIMIT ")
            .push_bind(take as i64)
            .push(" OFFSET ")
            .push_bind(skip as i64);
        let places = select
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(sql_error("searching"))?
            .iter()
            .map(Place::of)
            .collect();
        let hits = self.read_back(places, filter).await?;
        Ok(Page {
            hits,
            total: (counted as usize).min(count_cap),
            more: counted as usize > count_cap,
        })
    }

    /// The request with this exchange id, joined with its completion.
    pub async fn request(&self, exchange: &str) -> Result<Option<Hit>, String> {
        let mut select = QueryBuilder::<Sqlite>::new(locate(""));
        select
            .push(" WHERE r.exchange = ")
            .push_bind(exchange.to_owned())
            .push(" ORDER BY r.id LIMIT 1");
        let places = select
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(sql_error("searching"))?
            .iter()
            .map(Place::of)
            .collect();
        let filter = Filter::default();
        Ok(self.read_back(places, &filter).await?.into_iter().next())
    }

    /// Denials in `[start, start + slots × slot_secs)` (seconds since the epoch) by slot and
    /// rule, and the `top` most denied principals and assets.
    pub async fn denials(
        &self,
        start: i64,
        slot_secs: i64,
        slots: usize,
        top: usize,
    ) -> Result<DenialCounts, String> {
        let (from_us, to_us) = (
            start * 1_000_000,
            (start + slot_secs * slots as i64) * 1_000_000,
        );
        let fail = sql_error("counting denials");
        let by_slot_and_rule = sqlx::query(
            "SELECT (at_us / 1000000 - ?1) / ?2 AS slot, coalesce(rule, ''), count(*) FROM requests
             WHERE effect = 'deny' AND at_us >= ?3 AND at_us < ?4 GROUP BY slot, 2",
        )
        .bind(start)
        .bind(slot_secs.max(1))
        .bind(from_us)
        .bind(to_us)
        .fetch_all(&self.pool)
        .await
        .map_err(&fail)?
        .into_iter()
        .map(|r| {
            (
                r.get::<i64, _>(0).clamp(0, slots as i64 - 1) as usize,
                r.get::<String, _>(1),
                r.get::<i64, _>(2) as u32,
            )
        })
        .collect::<Vec<_>>();
        let most = |column: &'static str| {
            let sql = format!(
                "SELECT coalesce({column}, ''), count(*) AS n FROM requests
                 WHERE effect = 'deny' AND at_us >= ?1 AND at_us < ?2 {}
                 GROUP BY 1 ORDER BY n DESC, 1 LIMIT ?3",
                if column == "asset" {
                    "AND asset IS NOT NULL AND asset <> ''"
                } else {
                    ""
                }
            );
            let pool = self.pool.clone();
            let fail = &fail;
            async move {
                sqlx::query(&sql)
                    .bind(from_us)
                    .bind(to_us)
                    .bind(top as i64)
                    .fetch_all(&pool)
                    .await
                    .map_err(fail)
                    .map(|rows| {
                        rows.into_iter()
                            .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1) as u32))
                            .collect::<Vec<_>>()
                    })
            }
        };
        let principals = most("principal").await?;
        let assets = most("asset").await?;
        let total = by_slot_and_rule.iter().map(|(_, _, n)| n).sum();
        Ok(DenialCounts {
            by_slot_and_rule,
            principals,
            assets,
            total,
        })
    }

    /// The records at `places`, read from the segments. A record that is not what the index
    /// says (another exchange, or not a match) is left out and the index rebuilt.
    async fn read_back(&self, places: Vec<Place>, filter: &Filter) -> Result<Vec<Hit>, String> {
        let dir = self.dir.clone();
        let filter = filter.clone();
        let (hits, stale) = tokio::task::spawn_blocking(move || {
            let mut stale = false;
            let mut hits = Vec::with_capacity(places.len());
            for p in places {
                let decision = read_record(&dir, &p.decision);
                let fits = decision.as_ref().is_some_and(|d| {
                    query::text(d, &["exchange"]).unwrap_or("") == p.exchange && filter.matches(d)
                });
                let Some(decision) = decision.filter(|_| fits) else {
                    stale = true;
                    continue;
                };
                let completion = p.completion.as_ref().and_then(|c| read_record(&dir, c));
                if completion
                    .as_ref()
                    .is_some_and(|c| query::text(c, &["exchange"]).unwrap_or("") != p.exchange)
                {
                    stale = true;
                    continue;
                }
                hits.push(Hit {
                    decision,
                    completion,
                });
            }
            (hits, stale)
        })
        .await
        .map_err(|e| e.to_string())?;
        if stale {
            tracing::warn!(dir = %self.dir.display(), "the trail index pointed at other records; rebuilding it");
            self.stale.store(true, Ordering::Release);
            self.wake.notify_one();
        }
        Ok(hits)
    }
}

/// The select list and joins every search shares: where a decision and its completion are.
/// `hint` names the index to read `requests` by, or is empty.
fn locate(hint: &str) -> String {
    format!(
        "SELECT r.exchange, s.name, r.offset, r.length, cs.name, c.offset, c.length
         FROM requests r {hint} JOIN segments s ON s.id = r.seg
         LEFT JOIN completions c ON c.exchange = r.exchange
         LEFT JOIN segments cs ON cs.id = c.seg"
    )
}

/// Whether the filter names a value that an index of its own (value, time) gives in time
/// order.
fn has_indexed_equality(f: &Filter) -> bool {
    [
        &f.principal,
        &f.rule,
        &f.action,
        &f.bucket,
        &f.exception,
        &f.request_id,
    ]
    .iter()
    .any(|v| v.is_some())
}

/// A line's place: segment file name, offset and length.
type At = (String, u64, usize);

struct Place {
    exchange: String,
    decision: At,
    completion: Option<At>,
}

impl Place {
    fn of(r: &sqlx::sqlite::SqliteRow) -> Place {
        let completion = match (
            r.get::<Option<String>, _>(4),
            r.get::<Option<i64>, _>(5),
            r.get::<Option<i64>, _>(6),
        ) {
            (Some(name), Some(offset), Some(length)) => {
                Some((name, offset as u64, length as usize))
            }
            _ => None,
        };
        Place {
            exchange: r.get(0),
            decision: (
                r.get(1),
                r.get::<i64, _>(2) as u64,
                r.get::<i64, _>(3) as usize,
            ),
            completion,
        }
    }
}

/// The record at `at`, read from its segment; `None` when it is not there.
fn read_record(dir: &Path, at: &At) -> Option<Value> {
    use std::os::unix::fs::FileExt;
    let (name, offset, length) = at;
    // Only a segment file of this directory, whatever the index says.
    if name.contains('/') || segment::parse_name(name).is_none() {
        return None;
    }
    let file = std::fs::File::open(dir.join(name)).ok()?;
    let mut line = vec![0; *length];
    file.read_exact_at(&mut line, *offset).ok()?;
    serde_json::from_slice(&line).ok()
}

/// ` WHERE …` for `filter`, its values bound. Each condition says what `Filter::matches`
/// says, so the index finds exactly what a scan of the trail finds.
fn push_where(q: &mut QueryBuilder<Sqlite>, f: &Filter) -> Result<(), String> {
    q.push(" WHERE 1 = 1");
    let equal = [
        ("principal", &f.principal),
        ("workspace", &f.workspace),
        ("action", &f.action),
        ("category", &f.category),
        ("rule", &f.rule),
        ("exception", &f.exception),
        ("bucket", &f.bucket),
        ("request_id", &f.request_id),
    ];
    for (column, value) in equal {
        if let Some(v) = value {
            q.push(format!(" AND r.{column} = ")).push_bind(v.clone());
        }
    }
    match f.decision.as_deref() {
        None => {}
        Some("would_deny") => {
            q.push(" AND r.would_deny IS NOT NULL");
        }
        Some(effect) => {
            q.push(" AND r.effect = ").push_bind(effect.to_owned());
        }
    }
    if let Some(prefix) = &f.asset {
        // A range the asset index answers, then the exact test.
        q.push(" AND r.asset >= ")
            .push_bind(prefix.clone())
            .push(" AND r.asset < ")
            .push_bind(format!("{prefix}\u{10FFFF}"))
            .push(" AND substr(r.asset, 1, ")
            .push_bind(prefix.chars().count() as i64)
            .push(") = ")
            .push_bind(prefix.clone());
    }
    let bound =
        |text: &str| micros(text).ok_or_else(|| format!("{text:?} is not an RFC 3339 time"));
    if let Some(since) = &f.since {
        q.push(" AND r.at_us >= ").push_bind(bound(since)?);
    }
    if let Some(until) = &f.until {
        q.push(" AND r.at_us <= ").push_bind(bound(until)?);
    }
    Ok(())
}

async fn open(file: &Path) -> Result<SqlitePool, String> {
    let options = SqliteConnectOptions::new()
        .filename(file)
        .create_if_missing(true)
        // Readers go on while a pass writes; a crash loses at most the last pass, which the
        // next one redoes.
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let version: Option<i64> =
        sqlx::query_scalar("SELECT value FROM meta WHERE key = 'schema_version'")
            .fetch_optional(&pool)
            .await
            .ok()
            .flatten();
    match version {
        Some(SCHEMA_VERSION) => return Ok(pool),
        Some(other) => {
            pool.close().await;
            return Err(format!("schema version {other}, not {SCHEMA_VERSION}"));
        }
        None => {}
    }
    let empty: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master")
        .fetch_one(&pool)
        .await
        .map_err(|e| format!("{}: {e}", file.display()))?;
    if empty != 0 {
        pool.close().await;
        return Err("not a trail index".to_owned());
    }
    let mut tx = pool.begin().await.map_err(sql_error("creating"))?;
    for statement in SCHEMA {
        sqlx::query(statement)
            .execute(&mut *tx)
            .await
            .map_err(sql_error("creating"))?;
    }
    sqlx::query("INSERT INTO meta (key, value) VALUES ('schema_version', ?)")
        .bind(SCHEMA_VERSION)
        .execute(&mut *tx)
        .await
        .map_err(sql_error("creating"))?;
    tx.commit().await.map_err(sql_error("creating"))?;
    Ok(pool)
}

/// Removes the index and SQLite's files beside it.
fn remove(file: &Path) -> Result<(), String> {
    for suffix in ["", "-wal", "-shm"] {
        let mut path = file.as_os_str().to_owned();
        path.push(suffix);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", Path::new(&path).display())),
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
