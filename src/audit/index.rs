//! The trail index: a SQLite database that the review console searches instead of reading
//! the whole trail, so a search stays quick on a trail of millions of records.
//!
//! It is derived data and never the evidence:
//! - it is built from the segments and kept up to date incrementally (each pass reads only
//!   the bytes appended since the last, and only whole lines);
//! - a segment that vanished, shrank or was rewritten loses its rows and is read again; an
//!   index file that is broken or of another schema version is made anew;
//! - a search returns where the matching records are, and they are read back from the
//!   segments and matched again, so a page only ever shows what the trail itself says.
//!
//! Whether the trail holds is `verify`'s job, not the index's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row as _, Sqlite};

use super::query::{self, Filter, Hit};
use super::segment;

/// Bumped whenever the tables change: an index of another version is rebuilt.
const SCHEMA_VERSION: i64 = 3;

/// `PRAGMA application_id` of a trail index (ASCII "GHTI"): only a file carrying it is ever
/// replaced, so a mistyped `index_file` cannot delete someone else's database.
const APPLICATION_ID: i32 = 0x4748_5449;

const SCHEMA: &[&str] = &[
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    // How far each segment file has been read (always the end of a whole line), and the
    // bytes just before that point: if they change, the segment was rewritten in place.
    // AUTOINCREMENT: a dropped segment's id is never given to another.
    "CREATE TABLE segments (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        indexed INTEGER NOT NULL,
        tail BLOB NOT NULL
    )",
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
    // Newest first is `at_us DESC, gateway DESC, seq DESC`. Each index has `at_us` after its
    // value, so a filtered page is read in time order straight off one index; only records
    // of the same microsecond are sorted.
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
    // For dropping one segment's rows.
    "CREATE INDEX requests_seg ON requests (seg)",
    "CREATE INDEX completions_seg ON completions (seg)",
];

/// Bytes read from a segment at a time.
const CHUNK: usize = 4 << 20;
/// A line longer than this is never a record the gateway wrote: it is not read further.
const MAX_LINE: usize = 16 << 20;
/// Bytes kept from the end of what was indexed of a segment: a record's own `hash` and more.
const TAIL: usize = 96;
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
    /// The pass asked for had not finished when the wait ended.
    pub waited_out: bool,
}

impl Progress {
    pub fn caught_up(&self) -> bool {
        self.error.is_none() && !self.waited_out && self.indexed_bytes >= self.trail_bytes
    }
}

pub struct TrailIndex {
    dir: PathBuf,
    pool: SqlitePool,
    /// Passes asked for; a search asks for one and waits for it.
    asked: AtomicU64,
    /// The number of the last pass asked for that has finished, and where it left the
    /// index (the live `progress` may already be a later pass's, half way).
    done: tokio::sync::watch::Sender<(u64, Progress)>,
    wake: tokio::sync::Notify,
    progress: Mutex<Progress>,
    /// A read-back found a record other than the index said: rebuild at the next pass.
    stale: AtomicBool,
    /// Segments (by id) whose end is not a whole line, and their length then: not read
    /// again until they change.
    unfinished: Mutex<HashMap<i64, u64>>,
}

/// What the index knows of one segment.
struct Known {
    id: i64,
    indexed: u64,
    tail: Vec<u8>,
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

/// Microseconds since the epoch of an RFC 3339 time.
pub fn micros(ts: &str) -> Option<i64> {
    time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| (t.unix_timestamp_nanos() / 1000) as i64)
}

/// The rows of the whole lines in `bytes`, which start at `base` in their segment. Pure.
/// Lines are read as a scan reads them (`query::run`), so the index finds what a scan finds.
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
        let offset = (base + start as u64) as i64;
        let length = line.len() as i64;
        if query::contains(line, br#""phase":"completion""#) {
            if let Some(exchange) = query::string_member(line, br#""exchange":""#) {
                completions.push(Completion {
                    exchange: String::from_utf8_lossy(exchange).into_owned(),
                    offset,
                    length,
                });
            }
        } else if query::contains(line, br#""phase":"decision""#) {
            if let Ok(v) = serde_json::from_slice::<Value>(line) {
                if query::text(&v, &["phase"]) == Some("decision") {
                    rows.push(indexed_of(&v, offset, length));
                }
            }
        }
    }
    (rows, completions)
}

/// A decision record's row, from its parsed form.
fn indexed_of(v: &Value, offset: i64, length: i64) -> Indexed {
    let text = |path: &[&str]| query::text(v, path).map(str::to_owned);
    Indexed {
        at_us: micros(query::text(v, &["ts"]).unwrap_or("")).unwrap_or(i64::MIN),
        gateway: text(&["gateway"]).unwrap_or_default(),
        seq: v.get("seq").and_then(Value::as_i64).unwrap_or(0),
        exchange: text(&["exchange"]).unwrap_or_default(),
        request_id: text(&["request_id"]),
        principal: text(&["principal", "id"]),
        workspace: text(&["workspace"]),
        action: text(&["action", "name"]),
        category: text(&["action", "category"]),
        effect: text(&["decision", "effect"]),
        would_deny: text(&["decision", "would_deny"]),
        rule: text(&["decision", "rule"]),
        exception: text(&["decision", "exception"]),
        bucket: text(&["asset", "bucket"]),
        asset: query::asset_name(v),
        offset,
        length,
    }
}

/// The end of the last whole line in `bytes` (0 when there is none).
fn whole_lines(bytes: &[u8]) -> usize {
    memchr::memrchr(b'\n', bytes).map_or(0, |i| i + 1)
}

/// Reads whole lines of `path` from `from`: at least one line when one is complete (up to
/// `MAX_LINE` long), and at most about `CHUNK` bytes otherwise. Empty when no line from
/// `from` is whole yet.
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
        if end > 0 || at_eof || buf.len() >= MAX_LINE {
            buf.truncate(end);
            return Ok(buf);
        }
    }
}

/// Whether the bytes of `path` just before `at` are still `tail`.
fn tail_holds(path: &Path, at: u64, tail: &[u8]) -> bool {
    use std::os::unix::fs::FileExt;
    let Some(start) = at.checked_sub(tail.len() as u64) else {
        return false;
    };
    let mut now = vec![0; tail.len()];
    std::fs::File::open(path)
        .and_then(|f| f.read_exact_at(&mut now, start))
        .is_ok()
        && now == tail
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
        let pool = match found_at(&file) {
            Found::Foreign(what) => {
                return Err(format!(
                    "{}: {what}, not a Gatehouse trail index; move it away or name another file",
                    file.display()
                ))
            }
            Found::Nothing => {
                remove(&file)?;
                create(&file).await?
            }
            Found::Ours => match open_ours(&file).await {
                Ok(pool) => pool,
                Err(why) => {
                    // Derived data: whatever is wrong with it, start again from the trail.
                    tracing::warn!(file = %file.display(), why = %why, "rebuilding the trail index");
                    remove(&file)?;
                    create(&file).await?
                }
            },
        };
        let (done, _) = tokio::sync::watch::channel((0, Progress::default()));
        let index = Arc::new(TrailIndex {
            dir,
            pool,
            asked: AtomicU64::new(0),
            done,
            wake: tokio::sync::Notify::new(),
            progress: Mutex::new(Progress::default()),
            stale: AtomicBool::new(false),
            unfinished: Mutex::new(HashMap::new()),
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
            let finished = match self.progress.lock() {
                Ok(mut p) => {
                    p.error = result.err();
                    p.clone()
                }
                Err(_) => Progress::default(),
            };
            self.done.send_replace((serving, finished));
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
        let finished = match tokio::time::timeout(wait, done.wait_for(|d| d.0 >= mine)).await {
            Ok(Ok(finished)) => Some(finished.1.clone()),
            _ => None,
        };
        finished.unwrap_or_else(|| Progress {
            waited_out: true,
            ..self.progress()
        })
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
        let mut known: HashMap<String, Known> =
            sqlx::query("SELECT id, name, indexed, tail FROM segments")
                .fetch_all(&self.pool)
                .await
                .map_err(sql_error("reading"))?
                .into_iter()
                .map(|r| {
                    (
                        r.get::<String, _>(1),
                        Known {
                            id: r.get(0),
                            indexed: r.get::<i64, _>(2) as u64,
                            tail: r.get(3),
                        },
                    )
                })
                .collect();
        if self.stale.swap(false, Ordering::AcqRel) {
            tracing::warn!(dir = %self.dir.display(), "the trail index pointed at other records; rebuilding it");
            self.clear().await?;
            known.clear();
        }
        let sizes: HashMap<&str, u64> =
            on_disk.iter().map(|(s, l)| (s.name.as_str(), *l)).collect();
        // A segment archived away, cut short or rewritten in place: its rows go, and what is
        // there now is read afresh.
        let mut changed = Vec::new();
        for (name, k) in &known {
            let holds = match sizes.get(name.as_str()) {
                None => false,
                Some(len) if *len < k.indexed => false,
                Some(_) => {
                    let (path, at, tail) = (self.dir.join(name), k.indexed, k.tail.clone());
                    tokio::task::spawn_blocking(move || tail_holds(&path, at, &tail))
                        .await
                        .unwrap_or(false)
                }
            };
            if !holds {
                changed.push(name.clone());
            }
        }
        for name in changed {
            if let Some(k) = known.remove(&name) {
                tracing::info!(segment = %name, "a trail segment changed under its index; indexing it again");
                self.drop_segment(k.id).await?;
            }
        }
        let mut trail_bytes: u64 = sizes.values().sum();
        let mut indexed_bytes: u64 = known.values().map(|k| k.indexed).sum();
        self.set_progress(indexed_bytes, trail_bytes);
        for (seg, len) in &on_disk {
            let (id, mut from) = match known.get(&seg.name) {
                Some(k) => (k.id, k.indexed),
                None => (self.add_segment(&seg.name).await?, 0),
            };
            let unfinished_at = self
                .unfinished
                .lock()
                .ok()
                .and_then(|u| u.get(&id).copied());
            if unfinished_at == Some(*len) {
                // Nothing new since a line was found unfinished.
                trail_bytes -= len - from;
                continue;
            }
            while from < *len {
                let (path, at) = (seg.path.clone(), from);
                let (read, tail, rows, completions) = tokio::task::spawn_blocking(move || {
                    read_whole_lines(&path, at).map(|bytes| {
                        let (rows, completions) = rows_of(&bytes, at);
                        let tail = bytes[bytes.len().saturating_sub(TAIL)..].to_vec();
                        (bytes.len() as u64, tail, rows, completions)
                    })
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("{}: {e}", seg.path.display()))?;
                if read == 0 {
                    // Only a line still being written: not part of the trail yet.
                    if let Ok(mut u) = self.unfinished.lock() {
                        u.insert(id, *len);
                    }
                    trail_bytes -= len - from;
                    self.set_progress(indexed_bytes, trail_bytes);
                    break;
                }
                self.store(id, from, from + read, &tail, &rows, &completions)
                    .await?;
                from += read;
                indexed_bytes += read;
                self.set_progress(indexed_bytes, trail_bytes);
            }
        }
        self.set_progress(indexed_bytes, trail_bytes);
        Ok(())
    }

    /// The segment's id, added unread.
    async fn add_segment(&self, name: &str) -> Result<i64, String> {
        sqlx::query_scalar(
            "INSERT INTO segments (name, indexed, tail) VALUES (?, 0, x'') RETURNING id",
        )
        .bind(name)
        .fetch_one(&self.pool)
        .await
        .map_err(sql_error("adding a segment"))
    }

    /// Forgets one segment and every row read from it, in one transaction.
    async fn drop_segment(&self, id: i64) -> Result<(), String> {
        let fail = sql_error("dropping a segment");
        let mut tx = self.pool.begin().await.map_err(&fail)?;
        for sql in [
            "DELETE FROM requests WHERE seg = ?",
            "DELETE FROM completions WHERE seg = ?",
            "DELETE FROM segments WHERE id = ?",
        ] {
            sqlx::query(sql)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(&fail)?;
        }
        tx.commit().await.map_err(&fail)?;
        if let Ok(mut u) = self.unfinished.lock() {
            u.remove(&id);
        }
        Ok(())
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
        tx.commit().await.map_err(sql_error("clearing"))?;
        if let Ok(mut u) = self.unfinished.lock() {
            u.clear();
        }
        Ok(())
    }

    /// The rows of one read of `seg` (bytes `from..to`) and its new indexed length and tail,
    /// in one transaction: a crash keeps all or none. Written only if the segment is still
    /// indexed up to `from`, as this pass found it.
    async fn store(
        &self,
        seg: i64,
        from: u64,
        to: u64,
        tail: &[u8],
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
        let moved =
            sqlx::query("UPDATE segments SET indexed = ?, tail = ? WHERE id = ? AND indexed = ?")
                .bind(to as i64)
                .bind(tail)
                .bind(seg)
                .bind(from as i64)
                .execute(&mut *tx)
                .await
                .map_err(&fail)?
                .rows_affected();
        if moved != 1 {
            // Dropping `tx` rolls it back; the next pass starts from what is there.
            return Err("trail index: a segment changed in the index during this pass".into());
        }
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
        // 2.7 s for 500,000). Walking the time index newest first instead reads about
        // (skip + take) × rows / matches rows to fill the page: far fewer when matches are
        // dense and the page near the top.
        let by_time = filter.asset.is_some()
            && !has_indexed_equality(filter)
            && counted > 0
            && (counted as usize > count_cap || {
                let rows: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM requests")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(sql_error("counting"))?;
                let walk = (skip + take) as f64 * rows as f64 / counted as f64;
                walk < 4.0 * counted as f64
            });
        let mut select = QueryBuilder::<Sqlite>::new(locate(if by_time {
            "INDEXED BY requests_at"
        } else {
            ""
        }));
        push_where(&mut select, filter)?;
        select
            .push(" ORDER BY r.at_us DESC, r.gateway DESC, r.seq DESC LIMIT ")
            .push_bind(take as i64)
            .push(" OFFSET ")
            .push_bind(skip as i64);
        let places = self.places(select).await?;
        let hits = self.read_back(places, filter).await?;
        Ok(Page {
            hits,
            total: (counted as usize).min(count_cap),
            more: counted as usize > count_cap,
        })
    }

    async fn places(&self, mut select: QueryBuilder<'_, Sqlite>) -> Result<Vec<Place>, String> {
        Ok(select
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(sql_error("searching"))?
            .iter()
            .map(Place::of)
            .collect())
    }

    /// The request with this exchange id, joined with its completion.
    pub async fn request(&self, exchange: &str) -> Result<Option<Hit>, String> {
        let mut select = QueryBuilder::<Sqlite>::new(locate(""));
        select
            .push(" WHERE r.exchange = ")
            .push_bind(exchange.to_owned())
            .push(" ORDER BY r.id LIMIT 1");
        let places = self.places(select).await?;
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
        // Every denial names a principal (empty when anonymous); not every one an asset.
        let principals = self
            .most_denied("coalesce(principal, '')", "", from_us, to_us, top)
            .await?;
        let assets = self
            .most_denied(
                "asset",
                "AND asset IS NOT NULL AND asset <> ''",
                from_us,
                to_us,
                top,
            )
            .await?;
        let total = by_slot_and_rule.iter().map(|(_, _, n)| n).sum();
        Ok(DenialCounts {
            by_slot_and_rule,
            principals,
            assets,
            total,
        })
    }

    /// The `top` values of `column` among denials in `[from_us, to_us)`, most denied first,
    /// with their counts; `also` narrows the denials further (an SQL condition).
    async fn most_denied(
        &self,
        column: &'static str,
        also: &'static str,
        from_us: i64,
        to_us: i64,
        top: usize,
    ) -> Result<Vec<(String, u32)>, String> {
        let sql = format!(
            "SELECT {column}, count(*) AS n FROM requests
             WHERE effect = 'deny' AND at_us >= ?1 AND at_us < ?2 {also}
             GROUP BY 1 ORDER BY n DESC, 1 LIMIT ?3"
        );
        Ok(sqlx::query(&sql)
            .bind(from_us)
            .bind(to_us)
            .bind(top as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(sql_error("counting denials"))?
            .into_iter()
            .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1) as u32))
            .collect())
    }

    /// The records at `places`, read from the segments. A line that is not the record the
    /// index says (another gateway, seq, phase or exchange) is left out and the index
    /// rebuilt; a record that does not match the filter after all is left out.
    async fn read_back(&self, places: Vec<Place>, filter: &Filter) -> Result<Vec<Hit>, String> {
        let dir = self.dir.clone();
        let filter = filter.clone();
        let (hits, stale) = tokio::task::spawn_blocking(move || {
            let mut stale = false;
            let mut hits = Vec::with_capacity(places.len());
            for p in places {
                let decision = read_record(&dir, &p.decision).filter(|d| is_decision_of(d, &p));
                let completion = match &p.completion {
                    None => Ok(None),
                    Some(at) => read_record(&dir, at)
                        .filter(|c| is_completion_of(c, &p))
                        .map(Some)
                        .ok_or(()),
                };
                match (decision, completion) {
                    (Some(decision), Ok(completion)) => {
                        if filter.matches(&decision) {
                            hits.push(Hit {
                                decision,
                                completion,
                            });
                        }
                    }
                    _ => stale = true,
                }
            }
            (hits, stale)
        })
        .await
        .map_err(|e| e.to_string())?;
        if stale {
            self.stale.store(true, Ordering::Release);
            self.wake.notify_one();
        }
        Ok(hits)
    }
}

fn is_decision_of(record: &Value, p: &Place) -> bool {
    let text = |k: &str| query::text(record, &[k]).unwrap_or("");
    text("phase") == "decision"
        && text("exchange") == p.exchange
        && text("gateway") == p.gateway
        && record.get("seq").and_then(Value::as_i64).unwrap_or(0) == p.seq
}

fn is_completion_of(record: &Value, p: &Place) -> bool {
    query::text(record, &["phase"]) == Some("completion")
        && query::text(record, &["exchange"]).unwrap_or("") == p.exchange
}

/// The select list and joins every search shares: where a decision and its completion are.
/// `hint` names the index to read `requests` by, or is empty.
fn locate(hint: &str) -> String {
    format!(
        "SELECT r.exchange, s.name, r.offset, r.length, cs.name, c.offset, c.length,
                r.gateway, r.seq
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
    gateway: String,
    seq: i64,
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
            gateway: r.get(7),
            seq: r.get(8),
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
    if *length > MAX_LINE {
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
        q.push(" AND r.asset >= ").push_bind(prefix.clone());
        if let Some(above) = above_prefix(prefix) {
            q.push(" AND r.asset < ").push_bind(above);
        }
        q.push(" AND substr(r.asset, 1, ")
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

/// The least string above every string that starts with `prefix` (SQLite compares text as
/// UTF-8 bytes, which is code point order): the prefix with its last character raised by
/// one. `None` when there is none (empty, or only U+10FFFF).
fn above_prefix(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last as u32 + 1 {
            0xD800 => Some('\u{E000}'), // past the surrogates, which are not characters
            n => char::from_u32(n),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// What is at the index's path.
enum Found {
    Nothing,
    Ours,
    /// Something else, which is never touched: what it is.
    Foreign(String),
}

/// Reads the SQLite header (the first 100 bytes: magic, then `application_id` at 68).
fn found_at(file: &Path) -> Found {
    use std::io::Read;
    let mut head = Vec::with_capacity(100);
    match std::fs::File::open(file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Found::Nothing,
        Err(e) => return Found::Foreign(e.to_string()),
        Ok(f) => {
            if let Err(e) = f.take(100).read_to_end(&mut head) {
                return Found::Foreign(e.to_string());
            }
        }
    }
    if head.is_empty() {
        return Found::Nothing;
    }
    if head.len() < 100 || !head.starts_with(b"SQLite format 3\0") {
        return Found::Foreign("not a SQLite database".to_owned());
    }
    match i32::from_be_bytes([head[68], head[69], head[70], head[71]]) {
        APPLICATION_ID => Found::Ours,
        other => Found::Foreign(format!(
            "a SQLite database of another application (application_id {other})"
        )),
    }
}

async fn connect(file: &Path) -> Result<SqlitePool, String> {
    let options = SqliteConnectOptions::new()
        .filename(file)
        .create_if_missing(true)
        // Readers go on while a pass writes; a crash loses at most the last pass, which the
        // next one redoes.
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        // The log is emptied at each checkpoint, but a file once grown stays that large
        // without this.
        .pragma("journal_size_limit", (64u64 << 20).to_string())
        .busy_timeout(Duration::from_secs(5));
    SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .map_err(|e| format!("{}: {e}", file.display()))
}

/// An index of this version, or why not.
async fn open_ours(file: &Path) -> Result<SqlitePool, String> {
    let pool = connect(file).await?;
    let version: Result<i64, _> =
        sqlx::query_scalar("SELECT value FROM meta WHERE key = 'schema_version'")
            .fetch_one(&pool)
            .await;
    match version {
        Ok(SCHEMA_VERSION) => Ok(pool),
        Ok(other) => {
            pool.close().await;
            Err(format!("schema version {other}, not {SCHEMA_VERSION}"))
        }
        Err(e) => {
            pool.close().await;
            Err(e.to_string())
        }
    }
}

/// A new, empty index.
async fn create(file: &Path) -> Result<SqlitePool, String> {
    let pool = connect(file).await?;
    let fail = sql_error("creating");
    let mut tx = pool.begin().await.map_err(&fail)?;
    sqlx::query(&format!("PRAGMA application_id = {APPLICATION_ID}"))
        .execute(&mut *tx)
        .await
        .map_err(&fail)?;
    for statement in SCHEMA {
        sqlx::query(statement)
            .execute(&mut *tx)
            .await
            .map_err(&fail)?;
    }
    sqlx::query("INSERT INTO meta (key, value) VALUES ('schema_version', ?)")
        .bind(SCHEMA_VERSION)
        .execute(&mut *tx)
        .await
        .map_err(&fail)?;
    tx.commit().await.map_err(&fail)?;
    // Into the main file now, so its header says whose it is even if the process dies
    // before SQLite would have checkpointed.
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&pool)
        .await
        .map_err(&fail)?;
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
