//! The durable writer: one dedicated thread, a bounded queue, batched writes into segment
//! files, and a signed digest for every closed segment.
//!
//! Blocking file I/O stays off the async runtime. The request path never waits for a slot in
//! the queue: when it is full the request is refused (503) rather than forwarded unrecorded.
//! Numbering (`seq`) and sealing happen here, so file order and chain order are one.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::oneshot;

use super::digest::{self, Reason, Signer};
use super::{chain, segment, timestamp};
use crate::config::{AuditConfig, Durability};

/// Why a record could not be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error("the audit queue is full")]
    QueueFull,
    #[error("the audit trail cannot be written")]
    WriteFailed,
    #[error("the audit writer has stopped")]
    Stopped,
    #[error("cannot open the audit trail: {0}")]
    Open(String),
}

struct Entry {
    body: Vec<u8>,
    ack: Option<oneshot::Sender<Result<u64, AuditError>>>,
    /// Acknowledge only once fsynced, whatever the durability mode.
    fsync: bool,
}

impl Entry {
    fn unacknowledged(body: Vec<u8>) -> Entry {
        Entry {
            body,
            ack: None,
            fsync: false,
        }
    }
}

/// The request path's handle on the trail. Cheap to share behind an `Arc`.
pub struct AuditSink {
    tx: tokio::sync::mpsc::Sender<Entry>,
    durability: Durability,
    state: Arc<SharedState>,
}

#[derive(Default)]
struct SharedState {
    healthy: AtomicBool,
    stopped: AtomicBool,
    written: AtomicU64,
    failed_writes: AtomicU64,
    dropped_completions: AtomicU64,
    /// Records handed over and not yet taken by the writer thread.
    queued: AtomicU64,
    /// The last fsync failed: until one succeeds, every record waits for its fsync (so
    /// requests are refused while the disk cannot make records durable), whatever the mode.
    sync_failing: AtomicBool,
    fsyncs: AtomicU64,
    fsync_micros: AtomicU64,
    /// Where fsync latencies also go, once the gateway has its metrics.
    metrics: std::sync::OnceLock<Arc<crate::metrics::Metrics>>,
}

impl SharedState {
    fn observe_fsync(&self, took: Duration) {
        let micros = took.as_micros() as u64;
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.fsync_micros.fetch_add(micros, Ordering::Relaxed);
        if let Some(m) = self.metrics.get() {
            m.audit_fsync().observe_us(micros);
        }
    }
}

/// Joins the writer thread once every sink is dropped and the queue is drained.
pub struct AuditWriterHandle {
    done: mpsc::Receiver<()>,
}

impl AuditWriterHandle {
    /// Waits until the writer has flushed everything queued before the last sink was dropped,
    /// written its stop record and closed its segment with a digest. Blocks: call it off the
    /// runtime (`spawn_blocking`), which the writer may be running on.
    pub fn join(self) {
        // An error means the writer is gone without saying so (its runtime was dropped).
        let _ = self.done.recv();
    }
}

impl AuditSink {
    /// Continues the trail of `gateway_id` in `config.dir` (or starts one) and starts the
    /// writer thread. A crash's leftovers are dealt with first: a torn last line is cut and
    /// the segment the crash left open gets a `recovered` digest.
    pub fn open(
        config: &AuditConfig,
        gateway_id: &str,
    ) -> Result<(Arc<AuditSink>, AuditWriterHandle), AuditError> {
        std::fs::create_dir_all(&config.dir)
            .map_err(|e| AuditError::Open(format!("{}: {e}", config.dir.display())))?;
        let signer = match &config.signing_key {
            Some(path) => Some(Signer::load(path).map_err(AuditError::Open)?),
            None => None,
        };
        let lock = lock_trail(&config.dir, gateway_id)?;
        let opened = open_trail(&config.dir, gateway_id, signer.as_ref())?;
        let (tx, rx) = tokio::sync::mpsc::channel(config.queue_capacity.max(1));
        let state = Arc::new(SharedState {
            healthy: AtomicBool::new(true),
            ..Default::default()
        });
        let writer = Writer {
            dir: config.dir.clone(),
            gateway: gateway_id.to_owned(),
            durability: config.durability,
            max_bytes: config.segment_max_bytes,
            max_age: config.segment_max_age,
            signer,
            segment: None,
            quiet_since: Instant::now(),
            next_seq: opened.next_seq,
            last_hash: opened.last_hash,
            resumed_after: opened.resumed_after,
            digests: opened.digests,
            state: state.clone(),
            buf: Vec::with_capacity(64 * 1024),
            owed: Vec::new(),
            _lock: lock,
            syncer: match config.durability {
                Durability::Group => Some(
                    Syncer::start(state.clone(), GROUP_FSYNC_INTERVAL)
                        .map_err(|e| AuditError::Open(e.to_string()))?,
                ),
                // `none` fsyncs only records that ask for it (exception changes).
                Durability::Every | Durability::None => Some(
                    Syncer::start(state.clone(), Duration::ZERO)
                        .map_err(|e| AuditError::Open(e.to_string()))?,
                ),
            },
        };
        // On the caller's runtime when there is one: handing a record over and acknowledging
        // it are then wakeups within one thread, not two context switches per record between
        // threads (measured: they cost more than everything else the gateway does). Appends
        // to the page cache take microseconds; fsyncs run on the syncer thread.
        let (done_tx, done) = mpsc::channel();
        let run = async move {
            writer.run(rx).await;
            let _ = done_tx.send(());
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(run);
            }
            Err(_) => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .map_err(|e| AuditError::Open(e.to_string()))?;
                std::thread::Builder::new()
                    .name("gatehouse-audit".to_owned())
                    .spawn(move || runtime.block_on(run))
                    .map_err(|e| AuditError::Open(e.to_string()))?;
            }
        }
        Ok((
            Arc::new(AuditSink {
                tx,
                durability: config.durability,
                state,
            }),
            AuditWriterHandle { done },
        ))
    }

    /// Hands over a decision record and, unless durability is `none`, waits until it is in
    /// the file (and fsynced, for `every`). An error means: do not forward.
    pub async fn record_decision(&self, body: Vec<u8>) -> Result<(), AuditError> {
        // With `none` nobody waits for the write, except after a failure: then each request
        // waits for its own record, so nothing is forwarded unrecorded and the first write
        // that succeeds again restores the fast path.
        if self.durability == Durability::None && self.state.healthy.load(Ordering::Acquire) {
            return self.enqueue(Entry::unacknowledged(body));
        }
        self.record_acknowledged(body, false).await
    }

    /// Hands over a record about the gateway itself (a configuration load) without waiting.
    /// If the trail cannot take it now, it is kept and written first when it can.
    pub fn record_event(&self, body: Vec<u8>) -> Result<(), AuditError> {
        self.enqueue(Entry::unacknowledged(body))
    }

    /// Hands over a record and waits until it is written and fsynced, whatever the durability
    /// mode: for changes that must be on disk before they take effect (exception approvals).
    pub async fn record_durably(&self, body: Vec<u8>) -> Result<(), AuditError> {
        self.record_acknowledged(body, true).await
    }

    /// Waits until the record is written, and fsynced if `fsync` or the mode says so.
    async fn record_acknowledged(&self, body: Vec<u8>, fsync: bool) -> Result<(), AuditError> {
        let (ack, done) = oneshot::channel();
        self.enqueue(Entry {
            body,
            ack: Some(ack),
            fsync,
        })?;
        done.await.map_err(|_| AuditError::Stopped)?.map(|_| ())
    }

    fn enqueue(&self, entry: Entry) -> Result<(), AuditError> {
        // Counted before the send so the writer's decrement can never come first.
        self.state.queued.fetch_add(1, Ordering::Relaxed);
        self.tx.try_send(entry).map_err(|e| {
            self.state.queued.fetch_sub(1, Ordering::Relaxed);
            match e {
                TrySendError::Full(_) => AuditError::QueueFull,
                TrySendError::Closed(_) => AuditError::Stopped,
            }
        })
    }

    /// From now on fsync latencies are also observed in `metrics` (the first call wins).
    pub fn report_to(&self, metrics: Arc<crate::metrics::Metrics>) {
        let _ = self.state.metrics.set(metrics);
    }

    /// Records waiting for the writer thread.
    pub fn queue_depth(&self) -> u64 {
        self.state.queued.load(Ordering::Relaxed)
    }

    /// fsyncs of the trail so far and the time they took in total.
    pub fn fsync_totals(&self) -> (u64, Duration) {
        (
            self.state.fsyncs.load(Ordering::Relaxed),
            Duration::from_micros(self.state.fsync_micros.load(Ordering::Relaxed)),
        )
    }

    /// Hands over a completion record without waiting. The request has already been
    /// forwarded, so a full queue can only be counted and logged.
    pub fn record_completion(&self, body: Vec<u8>) {
        if self.enqueue(Entry::unacknowledged(body)).is_err() {
            self.state
                .dropped_completions
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!("audit queue full or closed: a completion record was lost");
        }
    }

    /// False after a failed write, until a later write succeeds.
    pub fn is_healthy(&self) -> bool {
        self.state.healthy.load(Ordering::Acquire)
            && !self.state.sync_failing.load(Ordering::Acquire)
            && !self.state.stopped.load(Ordering::Acquire)
    }

    pub fn records_written(&self) -> u64 {
        self.state.written.load(Ordering::Relaxed)
    }

    pub fn failed_writes(&self) -> u64 {
        self.state.failed_writes.load(Ordering::Relaxed)
    }

    pub fn dropped_completions(&self) -> u64 {
        self.state.dropped_completions.load(Ordering::Relaxed)
    }
}

/// Two processes appending to one chain would fork it: the second to start is refused.
/// The lock is the kernel's and dies with the process, so a crash leaves nothing to clean up.
fn lock_trail(dir: &Path, gateway: &str) -> Result<File, AuditError> {
    let path = dir.join(format!("{gateway}.lock"));
    let file = open_rw(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(AuditError::Open(format!(
            "{}: another gateway process is writing the trail of {gateway:?} in this directory; give each gateway its own gateway_id",
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(AuditError::Open(format!("{}: {e}", path.display()))),
    }
}

/// Where an existing trail left off.
struct OpenedTrail {
    next_seq: u64,
    last_hash: [u8; 32],
    resumed_after: Option<u64>,
    digests: DigestLog,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> AuditError + '_ {
    move |e| AuditError::Open(format!("{}: {e}", path.display()))
}

/// Cuts a torn last line (a crash mid-write) off `file`; returns the bytes that remain.
fn cut_torn_tail(file: &mut File, path: &Path) -> Result<Vec<u8>, AuditError> {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    file.read_to_end(&mut bytes).map_err(io_err(path))?;
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < bytes.len() {
        tracing::warn!(path = %path.display(), bytes = bytes.len() - complete, "cutting a torn last line left by a crash");
        file.set_len(complete as u64).map_err(io_err(path))?;
        file.sync_all().map_err(io_err(path))?;
        bytes.truncate(complete);
    }
    Ok(bytes)
}

fn open_rw(path: &Path) -> Result<File, AuditError> {
    OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))
}

fn last_line(bytes: &[u8]) -> Option<&[u8]> {
    bytes
        .strip_suffix(b"\n")?
        .rsplit(|&b| b == b'\n')
        .next()
        .filter(|l| !l.is_empty())
}

fn record_ts(line: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    v.get("ts")?.as_str().map(str::to_owned)
}

/// Finds where the trail of `gateway` left off, cutting torn tails, and attests the segment
/// a crash left without a digest.
fn open_trail(
    dir: &Path,
    gateway: &str,
    signer: Option<&Signer>,
) -> Result<OpenedTrail, AuditError> {
    let mut digests = DigestLog::open(&dir.join(segment::digest_name(gateway)))?;
    let mut segments: Vec<segment::SegmentFile> = segment::list(dir)
        .map_err(io_err(dir))?
        .into_iter()
        .filter(|s| s.gateway == gateway)
        .collect();
    while let Some(last) = segments.pop() {
        // Only regular files hold records (a device or fifo would read forever); anything
        // else is left for the writer to fail on, loudly.
        if !std::fs::metadata(&last.path).is_ok_and(|m| m.is_file()) {
            continue;
        }
        let mut file = open_rw(&last.path)?;
        let bytes = cut_torn_tail(&mut file, &last.path)?;
        let Some(line) = last_line(&bytes) else {
            // Created, then a crash before its first record was whole: nothing to keep.
            drop(file);
            std::fs::remove_file(&last.path).map_err(io_err(&last.path))?;
            continue;
        };
        // Continuing after a record we cannot read would restart or fork the chain: refuse
        // to start and let a person look at the trail instead.
        let link = chain::open(line).map_err(|e| {
            AuditError::Open(format!(
                "{}: the last complete record does not verify ({e}); the trail needs inspection",
                last.path.display()
            ))
        })?;
        if digests.last_segment.as_deref() != Some(last.name.as_str()) {
            let first_line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
            digests.push(
                digest::Entry {
                    reason: Reason::Recovered,
                    segment: Some(last.name.clone()),
                    first_seq: Some(last.first_seq),
                    last_seq: Some(link.seq),
                    first_ts: record_ts(first_line),
                    last_ts: record_ts(line),
                    records: bytes.iter().filter(|&&b| b == b'\n').count() as u64,
                    bytes: bytes.len() as u64,
                    segment_sha256: Some(hex::encode(Sha256::digest(&bytes))),
                    last_record_hash: Some(hex::encode(link.hash)),
                    ..digests.blank(gateway)
                },
                signer,
            );
            digests.flush().map_err(io_err(&digests.path))?;
        }
        return Ok(OpenedTrail {
            next_seq: link.seq + 1,
            last_hash: link.hash,
            resumed_after: Some(link.seq),
            digests,
        });
    }
    Ok(OpenedTrail {
        next_seq: 1,
        last_hash: chain::GENESIS,
        resumed_after: None,
        digests,
    })
}

/// The append-only digest log, with digests sealed but not yet written kept in `pending`
/// (they are retried before any further record is accepted).
struct DigestLog {
    path: PathBuf,
    file: Option<Arc<File>>,
    good_len: u64,
    next_seq: u64,
    last_hash: [u8; 32],
    /// The segment named by the newest digest that names one.
    last_segment: Option<String>,
    pending: Vec<u8>,
}

impl DigestLog {
    fn open(path: &Path) -> Result<DigestLog, AuditError> {
        let mut file = open_rw(path)?;
        let bytes = cut_torn_tail(&mut file, path)?;
        let mut log = DigestLog {
            path: path.to_path_buf(),
            file: Some(Arc::new(file)),
            good_len: bytes.len() as u64,
            next_seq: 1,
            last_hash: digest::NO_PREVIOUS,
            last_segment: None,
            pending: Vec::new(),
        };
        let mut lines = bytes
            .strip_suffix(b"\n")
            .unwrap_or_default()
            .rsplit(|&b| b == b'\n')
            .filter(|l| !l.is_empty());
        let Some(newest) = lines.next() else {
            return Ok(log);
        };
        let unreadable = |_| {
            AuditError::Open(format!(
                "{}: the last digest cannot be read; the trail needs inspection",
                path.display()
            ))
        };
        let newest = digest::open(newest, None).map_err(unreadable)?;
        log.next_seq = newest.entry.digest_seq + 1;
        log.last_hash = newest.hash;
        log.last_segment = newest.entry.segment.clone();
        for line in lines {
            if log.last_segment.is_some() {
                break;
            }
            log.last_segment = digest::open(line, None).map_err(unreadable)?.entry.segment;
        }
        Ok(log)
    }

    /// An entry with this log's fields and nothing attested yet.
    fn blank(&self, gateway: &str) -> digest::Entry {
        digest::Entry {
            digest_seq: self.next_seq,
            gateway: gateway.to_owned(),
            ts: timestamp(SystemTime::now()),
            reason: Reason::Interval,
            segment: None,
            first_seq: None,
            last_seq: None,
            first_ts: None,
            last_ts: None,
            records: 0,
            bytes: 0,
            segment_sha256: None,
            last_record_hash: None,
            prev_digest: hex::encode(self.last_hash),
            key_id: String::new(),
        }
    }

    fn push(&mut self, entry: digest::Entry, signer: Option<&Signer>) {
        if entry.segment.is_some() {
            self.last_segment = entry.segment.clone();
        }
        let (line, hash) = digest::seal(entry, signer);
        self.pending.extend_from_slice(&line);
        self.next_seq += 1;
        self.last_hash = hash;
    }

    /// Writes and fsyncs what is pending.
    fn flush(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let result = append_durably(
            &mut self.file,
            &self.path,
            self.good_len,
            &self.pending,
            true,
        );
        if result.is_ok() {
            self.good_len += self.pending.len() as u64;
            self.pending.clear();
        }
        result
    }
}

/// Appends `bytes` to the file at `path`, (re)opening it when a failure dropped the handle,
/// and then first cutting whatever a failed write left past `good_len`. On failure the
/// handle is dropped so the next attempt starts clean.
fn append_durably(
    handle: &mut Option<Arc<File>>,
    path: &Path,
    good_len: u64,
    bytes: &[u8],
    sync: bool,
) -> std::io::Result<()> {
    let result = (|| {
        if handle.is_none() {
            let file = OpenOptions::new().create(true).append(true).open(path)?;
            let meta = file.metadata()?;
            if meta.is_file() && meta.len() > good_len {
                file.set_len(good_len)?;
            }
            *handle = Some(Arc::new(file));
        }
        let mut file: &File = handle.as_deref().ok_or(std::io::ErrorKind::NotFound)?;
        file.write_all(bytes)?;
        if sync {
            file.sync_data()?;
        }
        Ok(())
    })();
    if result.is_err() {
        *handle = None;
    }
    result
}

/// The segment being written.
struct Segment {
    name: String,
    path: PathBuf,
    /// Shared with the background syncer in `group` mode.
    file: Option<Arc<File>>,
    first_seq: u64,
    records: u64,
    /// Length up to the last record known to be wholly written.
    bytes: u64,
    /// SHA-256 over exactly those bytes, kept up to date so closing needs no re-read.
    hasher: Sha256,
    opened: Instant,
    first_written: Option<SystemTime>,
    last_written: Option<SystemTime>,
    last_hash: [u8; 32],
}

struct Writer {
    dir: PathBuf,
    gateway: String,
    durability: Durability,
    max_bytes: u64,
    max_age: Duration,
    signer: Option<Signer>,
    segment: Option<Segment>,
    /// Since when no segment has been open: an interval this long with no records gets a
    /// digest of its own.
    quiet_since: Instant,
    next_seq: u64,
    /// Hash of the last record written: the next one's `prev`.
    last_hash: [u8; 32],
    /// The seq this writer's trail continues after, when it continues one.
    resumed_after: Option<u64>,
    digests: DigestLog,
    state: Arc<SharedState>,
    buf: Vec<u8>,
    /// Records without an ack whose write failed, in order.
    owed: Vec<Vec<u8>>,
    /// Held for the writer's life: one writer per gateway id and directory.
    _lock: File,
    /// `group`: fsyncs written segments in the background.
    syncer: Option<Syncer>,
}

/// How often, at most, `group` mode fsyncs the open segment in the background: the most a
/// power loss (not a crash of the gateway: written records are in the kernel by then) can
/// take from the trail.
pub const GROUP_FSYNC_INTERVAL: Duration = Duration::from_millis(10);

/// The fsync thread, so the writer (on the request runtime) never waits for the disk.
/// `group`: the writer hands it the segment after each write; it fsyncs the newest one, then
/// rests until the interval is over. `every`: it also gets the batch's acknowledgements and
/// sends them once the fsync that covers their records has returned.
struct Syncer {
    tx: mpsc::Sender<SyncJob>,
}

type Ack = (oneshot::Sender<Result<u64, AuditError>>, u64);

struct SyncJob {
    file: Arc<File>,
    acks: Vec<Ack>,
}

impl Syncer {
    fn start(state: Arc<SharedState>, rest: Duration) -> std::io::Result<Syncer> {
        let (tx, rx) = mpsc::channel::<SyncJob>();
        std::thread::Builder::new()
            .name("gatehouse-audit-sync".to_owned())
            .spawn(move || {
                while let Ok(SyncJob { mut file, mut acks }) = rx.recv() {
                    // One fsync of the newest segment covers every job queued: an older
                    // segment was fsynced when it was closed, before the newer one took a write.
                    while let Ok(newer) = rx.try_recv() {
                        file = newer.file;
                        acks.extend(newer.acks);
                    }
                    let started = Instant::now();
                    let result = file.sync_data();
                    drop(file);
                    state.observe_fsync(started.elapsed());
                    state.sync_failing.store(result.is_err(), Ordering::Release);
                    match result {
                        Ok(()) => {
                            for (ack, seq) in acks {
                                let _ = ack.send(Ok(seq));
                            }
                        }
                        Err(e) => {
                            state.healthy.store(false, Ordering::Release);
                            state.failed_writes.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(error = %e, "audit trail fsync failed");
                            for (ack, _) in acks {
                                let _ = ack.send(Err(AuditError::WriteFailed));
                            }
                        }
                    }
                    std::thread::sleep(rest.saturating_sub(started.elapsed()));
                }
            })?;
        Ok(Syncer { tx })
    }

    /// Asks for an fsync of `file`, with the acknowledgements to send once it is done.
    fn submit(&self, file: &Arc<File>, acks: Vec<Ack>) {
        if let Err(mpsc::SendError(job)) = self.tx.send(SyncJob {
            file: file.clone(),
            acks,
        }) {
            for (ack, _) in job.acks {
                let _ = ack.send(Err(AuditError::Stopped));
            }
        }
    }
}

const MAX_BATCH: usize = 1024;
/// Records nobody waits for, kept across a failed write. While the trail fails every request
/// is refused, so this only grows by completions of requests already in flight.
const MAX_OWED: usize = 16_384;

impl Writer {
    /// A record about the trail itself (start, stop), in the same chain.
    fn lifecycle(&self, phase: &str) -> Entry {
        let body = serde_json::json!({
            "ts": timestamp(SystemTime::now()),
            "gateway": self.gateway,
            "phase": phase,
            // The first record of a new trail says so; after a restart it names the record
            // it links to, which is the last one on disk.
            "continues_after_seq": if phase == "start" { serde_json::json!(self.resumed_after) } else { serde_json::Value::Null },
            "new_trail": phase == "start" && self.resumed_after.is_none(),
        });
        Entry::unacknowledged(body.to_string().into_bytes())
    }

    async fn run(mut self, mut rx: tokio::sync::mpsc::Receiver<Entry>) {
        let mut batch: Vec<Entry> = Vec::with_capacity(MAX_BATCH);
        batch.push(self.lifecycle("start"));
        self.write_batch(&mut batch);
        loop {
            // Everything queued at this moment is one batch: one write, and in `every` mode
            // one fsync that covers each of its records (group commit).
            match tokio::time::timeout(self.until_due(), rx.recv_many(&mut batch, MAX_BATCH)).await
            {
                Ok(0) => break,
                Ok(n) => {
                    self.state.queued.fetch_sub(n as u64, Ordering::Relaxed);
                    self.write_batch(&mut batch);
                }
                Err(_) => {}
            }
            self.on_clock();
        }
        batch.push(self.lifecycle("stop"));
        self.write_batch(&mut batch);
        self.close_segment(Reason::Stop);
        self.syncer = None;
        self.state.stopped.store(true, Ordering::Release);
    }

    /// How long until the open segment reaches its age, or the quiet interval ends.
    fn until_due(&self) -> Duration {
        let since = self.segment.as_ref().map_or(self.quiet_since, |s| s.opened);
        self.max_age
            .saturating_sub(since.elapsed())
            .max(Duration::from_millis(1))
    }

    /// Rotation by age, digests for quiet intervals, retries of digests that failed.
    fn on_clock(&mut self) {
        match &self.segment {
            Some(s) if s.opened.elapsed() >= self.max_age => self.close_segment(Reason::Rotate),
            None if self.quiet_since.elapsed() >= self.max_age => {
                let entry = self.digests.blank(&self.gateway);
                self.digests.push(entry, self.signer.as_ref());
                self.quiet_since = Instant::now();
                self.flush_digests();
            }
            _ if !self.digests.pending.is_empty() => self.flush_digests(),
            _ => {}
        }
    }

    fn flush_digests(&mut self) {
        if let Err(e) = self.digests.flush() {
            self.failed(&self.digests.path.clone(), &e);
        }
    }

    fn failed(&self, path: &Path, e: &std::io::Error) {
        if self.state.healthy.swap(false, Ordering::AcqRel) {
            tracing::error!(path = %path.display(), error = %e, "audit trail write failed: refusing requests until it recovers");
        }
        self.state.failed_writes.fetch_add(1, Ordering::Relaxed);
    }

    fn write_batch(&mut self, batch: &mut Vec<Entry>) {
        if batch.is_empty() {
            return;
        }
        if !self.owed.is_empty() {
            let owed = self.owed.drain(..).map(Entry::unacknowledged);
            batch.splice(0..0, owed);
        }
        self.buf.clear();
        let first_seq = self.next_seq;
        let mut hash = self.last_hash;
        for (i, entry) in batch.iter().enumerate() {
            hash = chain::seal(&mut self.buf, first_seq + i as u64, &entry.body, &hash);
        }
        // Digests owed from earlier go first: no record is accepted while the digest log
        // cannot be written.
        let result = self
            .digests
            .flush()
            .map_err(|e| (self.digests.path.clone(), e))
            .and_then(|()| self.append_to_segment());
        match result {
            Ok(()) => {
                let now = SystemTime::now();
                let segment = self.segment.as_mut().expect("append opened a segment");
                segment.records += batch.len() as u64;
                segment.bytes += self.buf.len() as u64;
                segment.hasher.update(&self.buf);
                segment.first_written.get_or_insert(now);
                segment.last_written = Some(now);
                segment.last_hash = hash;
                self.next_seq += batch.len() as u64;
                self.last_hash = hash;
                self.state.healthy.store(true, Ordering::Release);
                self.state
                    .written
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                // Acknowledged now once written, or by the syncer once on disk (`every`, and
                // records that ask for it).
                let every = self.durability == Durability::Every
                    || self.state.sync_failing.load(Ordering::Acquire);
                let mut after_fsync = Vec::new();
                for (i, entry) in batch.drain(..).enumerate() {
                    let Some(ack) = entry.ack else { continue };
                    let seq = first_seq + i as u64;
                    if every || entry.fsync {
                        after_fsync.push((ack, seq));
                    } else {
                        let _ = ack.send(Ok(seq));
                    }
                }
                if let (Some(syncer), Some(file)) = (&self.syncer, &segment.file) {
                    if !after_fsync.is_empty() || self.durability == Durability::Group {
                        syncer.submit(file, after_fsync);
                    }
                } else {
                    // No syncer (cannot happen: every mode has one); never leave a request
                    // waiting.
                    for (ack, seq) in after_fsync {
                        let _ = ack.send(Ok(seq));
                    }
                }
                if segment.bytes >= self.max_bytes {
                    self.close_segment(Reason::Rotate);
                }
            }
            Err((path, e)) => {
                self.failed(&path, &e);
                for entry in batch.drain(..) {
                    match entry.ack {
                        // Its request is refused: nothing was forwarded unrecorded.
                        Some(ack) => {
                            let _ = ack.send(Err(AuditError::WriteFailed));
                        }
                        // Nobody waits for it (a completion of a request already forwarded, a
                        // start or config record): kept and written first once writing works.
                        None if self.owed.len() < MAX_OWED => self.owed.push(entry.body),
                        None => {
                            self.state
                                .dropped_completions
                                .fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    }

    fn append_to_segment(&mut self) -> Result<(), (PathBuf, std::io::Error)> {
        let segment = self.segment.get_or_insert_with(|| {
            let name = segment::segment_name(&self.gateway, self.next_seq);
            Segment {
                path: self.dir.join(&name),
                name,
                file: None,
                first_seq: self.next_seq,
                records: 0,
                bytes: 0,
                hasher: Sha256::new(),
                opened: Instant::now(),
                first_written: None,
                last_written: None,
                last_hash: chain::GENESIS,
            }
        });
        append_durably(
            &mut segment.file,
            &segment.path,
            segment.bytes,
            &self.buf,
            false,
        )
        .map_err(|e| (segment.path.clone(), e))
    }

    /// Closes the open segment and attests it with a digest. A segment that never took a
    /// record is removed instead; at stop, a digest is written either way.
    fn close_segment(&mut self, reason: Reason) {
        let mut entry = self.digests.blank(&self.gateway);
        entry.reason = reason;
        match self.segment.take() {
            Some(segment) if segment.records > 0 => {
                // Whatever durability promised per record, a closed segment is on disk.
                if let Some(Err(e)) = segment.file.as_ref().map(|f| f.sync_all()) {
                    self.failed(&segment.path, &e);
                }
                entry.segment = Some(segment.name);
                entry.first_seq = Some(segment.first_seq);
                entry.last_seq = Some(segment.first_seq + segment.records - 1);
                entry.first_ts = segment.first_written.map(timestamp);
                entry.last_ts = segment.last_written.map(timestamp);
                entry.records = segment.records;
                entry.bytes = segment.bytes;
                entry.segment_sha256 = Some(hex::encode(segment.hasher.finalize()));
                entry.last_record_hash = Some(hex::encode(segment.last_hash));
            }
            Some(segment) => {
                drop(segment.file);
                let _ = std::fs::remove_file(&segment.path);
                if reason != Reason::Stop {
                    return;
                }
            }
            None if reason != Reason::Stop => return,
            None => {}
        }
        self.digests.push(entry, self.signer.as_ref());
        self.quiet_since = Instant::now();
        self.flush_digests();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, durability: Durability) -> AuditConfig {
        AuditConfig {
            dir: dir.to_path_buf(),
            durability,
            signing_key: None,
            queue_capacity: 16,
            segment_max_bytes: 64 * 1024 * 1024,
            segment_max_age: Duration::from_secs(3600),
        }
    }

    /// Every record of every segment, in chain order.
    fn records(dir: &Path) -> Vec<serde_json::Value> {
        segment::list(dir)
            .unwrap()
            .iter()
            .flat_map(|s| {
                std::fs::read_to_string(&s.path)
                    .unwrap()
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn digests(dir: &Path, gateway: &str) -> Vec<digest::Entry> {
        std::fs::read(dir.join(segment::digest_name(gateway)))
            .unwrap_or_default()
            .split_inclusive(|&b| b == b'\n')
            .map(|l| digest::open(l, None).unwrap().entry)
            .collect()
    }

    /// `every` and `group` both have a record in the file when its request is acknowledged;
    /// `every` has fsynced it by then, `group` fsyncs it in the background shortly after.
    #[tokio::test]
    async fn acknowledged_records_are_written_and_fsynced_as_the_mode_promises() {
        for durability in [Durability::Every, Durability::Group] {
            let dir = tempfile::tempdir().unwrap();
            let (sink, handle) = AuditSink::open(&config(dir.path(), durability), "gw").unwrap();
            sink.record_decision(br#"{"phase":"decision","n":1}"#.to_vec())
                .await
                .unwrap();
            assert!(
                records(dir.path()).iter().any(|r| r["n"] == 1),
                "{durability:?}: acknowledged but not in the file"
            );
            if durability == Durability::Every {
                assert!(
                    sink.fsync_totals().0 >= 1,
                    "every: acknowledged before an fsync"
                );
            }
            let mut synced = false;
            for _ in 0..500 {
                if sink.fsync_totals().0 >= 1 {
                    synced = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(synced, "{durability:?}: never fsynced");
            assert_eq!(sink.queue_depth(), 0);
            // A record that must be on disk (an exception change) waits for its fsync.
            let before = sink.fsync_totals().0;
            sink.record_durably(br#"{"phase":"exception"}"#.to_vec())
                .await
                .unwrap();
            assert!(
                sink.fsync_totals().0 > before,
                "{durability:?}: durable record not fsynced"
            );
            close(sink, handle).await;
        }
    }

    async fn close(sink: Arc<AuditSink>, handle: AuditWriterHandle) {
        drop(sink);
        tokio::task::spawn_blocking(move || handle.join())
            .await
            .unwrap();
    }

    fn verify(dir: &Path) -> u64 {
        let mut v = chain::Verifier::default();
        for s in segment::list(dir).unwrap() {
            for line in std::fs::read(&s.path)
                .unwrap()
                .split_inclusive(|&b| b == b'\n')
            {
                v.next(line).unwrap();
            }
        }
        v.records
    }

    #[tokio::test]
    async fn records_are_chained_in_file_order_and_the_chain_continues_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, handle) = AuditSink::open(&config(dir.path(), Durability::Group), "gw").unwrap();
        sink.record_decision(br#"{"phase":"decision","n":1}"#.to_vec())
            .await
            .unwrap();
        sink.record_completion(br#"{"phase":"completion","n":2}"#.to_vec());
        close(sink, handle).await;

        let (sink, handle) = AuditSink::open(&config(dir.path(), Durability::Every), "gw").unwrap();
        sink.record_decision(br#"{"n":3}"#.to_vec()).await.unwrap();
        close(sink, handle).await;

        let records = records(dir.path());
        let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
        let phases: Vec<&str> = records
            .iter()
            .map(|r| r["phase"].as_str().unwrap_or("-"))
            .collect();
        assert_eq!(
            phases,
            vec![
                "start",
                "decision",
                "completion",
                "stop",
                "start",
                "-",
                "stop"
            ]
        );
        assert_eq!(records[0]["new_trail"], true);
        assert_eq!(records[4]["new_trail"], false);
        assert_eq!(records[4]["continues_after_seq"], 4);
        assert_eq!(records[4]["prev"], records[3]["hash"]);
        assert_eq!(verify(dir.path()), 7);

        // One segment per run, each closed at stop with a digest that links to the one before.
        let names: Vec<String> = segment::list(dir.path())
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(
            names,
            vec![
                segment::segment_name("gw", 1),
                segment::segment_name("gw", 5)
            ]
        );
        let d = digests(dir.path(), "gw");
        assert_eq!(d.len(), 2);
        assert_eq!(
            (d[0].reason, d[0].first_seq, d[0].last_seq),
            (Reason::Stop, Some(1), Some(4))
        );
        assert_eq!(
            (d[1].reason, d[1].first_seq, d[1].last_seq),
            (Reason::Stop, Some(5), Some(7))
        );
        assert_eq!(d[1].digest_seq, 2);
        assert_eq!(
            d[1].last_record_hash.as_deref(),
            records[6]["hash"].as_str()
        );
        let bytes = std::fs::read(dir.path().join(&names[1])).unwrap();
        assert_eq!(
            d[1].segment_sha256,
            Some(hex::encode(Sha256::digest(&bytes)))
        );
        assert_eq!(d[1].bytes, bytes.len() as u64);
    }

    #[tokio::test]
    async fn segments_rotate_by_size_and_each_closed_segment_gets_a_digest() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), Durability::Every);
        cfg.segment_max_bytes = 1; // every batch closes its segment
        let (sink, handle) = AuditSink::open(&cfg, "gw").unwrap();
        for n in 0..3 {
            sink.record_decision(format!(r#"{{"n":{n}}}"#).into_bytes())
                .await
                .unwrap();
        }
        close(sink, handle).await;
        assert_eq!(segment::list(dir.path()).unwrap().len(), 5);
        let d = digests(dir.path(), "gw");
        let reasons: Vec<Reason> = d.iter().map(|e| e.reason).collect();
        // start, three records, stop: each in a segment of its own; the stop record's segment
        // is closed by its size too, so the stop digest attests no further segment.
        assert_eq!(
            reasons,
            vec![
                Reason::Rotate,
                Reason::Rotate,
                Reason::Rotate,
                Reason::Rotate,
                Reason::Rotate,
                Reason::Stop
            ]
        );
        assert_eq!(d[5].segment, None);
        assert_eq!(verify(dir.path()), 5);
    }

    #[tokio::test]
    async fn a_quiet_interval_gets_a_digest_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), Durability::Group);
        cfg.segment_max_age = Duration::from_millis(100);
        let (sink, handle) = AuditSink::open(&cfg, "gw").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        // The start record's segment ages out, then quiet intervals follow.
        while digests(dir.path(), "gw").len() < 3 {
            assert!(Instant::now() < deadline, "no quiet-interval digests");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        close(sink, handle).await;
        let d = digests(dir.path(), "gw");
        assert_eq!(d[0].reason, Reason::Rotate);
        assert_eq!(d[0].records, 1);
        assert_eq!(d[1].reason, Reason::Interval);
        assert_eq!((d[1].segment.as_deref(), d[1].records), (None, 0));
        assert_eq!(d.last().unwrap().reason, Reason::Stop);
        assert_eq!(verify(dir.path()), 2);
    }

    #[tokio::test]
    async fn a_segment_a_crash_left_without_digest_is_attested_as_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, handle) = AuditSink::open(&config(dir.path(), Durability::Group), "gw").unwrap();
        sink.record_decision(br#"{"a":1}"#.to_vec()).await.unwrap();
        close(sink, handle).await;
        // What a crash leaves: no stop digest, and half a record.
        std::fs::write(dir.path().join(segment::digest_name("gw")), "").unwrap();
        let first = dir.path().join(segment::segment_name("gw", 1));
        let mut text = std::fs::read_to_string(&first).unwrap();
        text.push_str("{\"seq\":4,\"a\"");
        std::fs::write(&first, text).unwrap();

        let (sink, handle) = AuditSink::open(&config(dir.path(), Durability::Group), "gw").unwrap();
        sink.record_decision(br#"{"b":2}"#.to_vec()).await.unwrap();
        close(sink, handle).await;
        let d = digests(dir.path(), "gw");
        assert_eq!(d[0].reason, Reason::Recovered);
        assert_eq!(
            (d[0].first_seq, d[0].last_seq, d[0].records),
            (Some(1), Some(3), 3)
        );
        let bytes = std::fs::read(&first).unwrap();
        assert_eq!(
            d[0].segment_sha256,
            Some(hex::encode(Sha256::digest(&bytes)))
        );
        assert_eq!(d[1].first_seq, Some(4));
        let records = records(dir.path());
        assert_eq!(records.len(), 6);
        assert_eq!(records[4]["b"], 2);
        assert_eq!(verify(dir.path()), 6);
    }

    #[tokio::test]
    async fn a_second_writer_for_the_same_trail_is_refused_until_the_first_stops() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), Durability::Group);
        let (sink, handle) = AuditSink::open(&cfg, "gw").unwrap();
        let err = AuditSink::open(&cfg, "gw").err();
        assert!(
            matches!(&err, Some(AuditError::Open(m)) if m.contains("another gateway process")),
            "{err:?}"
        );
        // Another gateway id shares the directory without trouble.
        let (other, other_handle) = AuditSink::open(&cfg, "gw-2").unwrap();
        close(other, other_handle).await;
        close(sink, handle).await;
        let (sink, handle) = AuditSink::open(&cfg, "gw").unwrap();
        close(sink, handle).await;
    }

    #[test]
    fn an_unreadable_last_record_stops_the_writer_from_starting() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(segment::segment_name("gw", 7)),
            "{\"seq\":7}\n",
        )
        .unwrap();
        let err = AuditSink::open(&config(dir.path(), Durability::Group), "gw").err();
        assert!(matches!(err, Some(AuditError::Open(m)) if m.contains("needs inspection")));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn without_durability_a_failing_trail_still_refuses_after_the_first_failure() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/dev/full", dir.path().join(segment::segment_name("gw", 1)))
            .unwrap();
        let (sink, _handle) = AuditSink::open(&config(dir.path(), Durability::None), "gw").unwrap();
        // The writer's first write (its start record) fails …
        for _ in 0..200 {
            if !sink.is_healthy() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!sink.is_healthy());
        // … and from then on every request waits for its record and is refused.
        assert_eq!(
            sink.record_decision(br#"{"x":2}"#.to_vec()).await,
            Err(AuditError::WriteFailed)
        );
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn an_unwritable_trail_refuses_and_reports_unhealthy() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/dev/full", dir.path().join(segment::segment_name("gw", 1)))
            .unwrap();
        let (sink, _handle) =
            AuditSink::open(&config(dir.path(), Durability::Group), "gw").unwrap();
        let err = sink
            .record_decision(br#"{"x":1}"#.to_vec())
            .await
            .unwrap_err();
        assert_eq!(err, AuditError::WriteFailed);
        assert!(!sink.is_healthy());
        assert!(sink.failed_writes() >= 1);
    }
}
