//! The durable writer: one dedicated thread, a bounded queue, batched writes.
//!
//! Blocking file I/O stays off the async runtime. The request path never waits for a slot in
//! the queue: when it is full the request is refused (503) rather than forwarded unrecorded.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::chain;
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
}

/// The request path's handle on the trail. Cheap to share behind an `Arc`.
pub struct AuditSink {
    tx: mpsc::Sender<Entry>,
    durability: Durability,
    state: Arc<SharedState>,
}

#[derive(Default)]
struct SharedState {
    healthy: AtomicBool,
    written: AtomicU64,
    failed_writes: AtomicU64,
    dropped_completions: AtomicU64,
}

/// Joins the writer thread once every sink is dropped and the queue is drained.
pub struct AuditWriterHandle {
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AuditWriterHandle {
    /// Waits until the writer has flushed everything queued before the last sink was dropped.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl AuditSink {
    /// Opens (or continues) `<dir>/<gateway_id>.jsonl` and starts the writer thread.
    pub fn open(
        config: &AuditConfig,
        gateway_id: &str,
    ) -> Result<(Arc<AuditSink>, AuditWriterHandle), AuditError> {
        std::fs::create_dir_all(&config.dir)
            .map_err(|e| AuditError::Open(format!("{}: {e}", config.dir.display())))?;
        let path = config.dir.join(format!("{gateway_id}.jsonl"));
        let OpenedTrail {
            file,
            next_seq,
            good_len,
            last_hash,
            resumed_after,
        } = open_trail(&path)?;
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let state = Arc::new(SharedState {
            healthy: AtomicBool::new(true),
            ..Default::default()
        });
        let writer = Writer {
            path,
            file: Some(file),
            next_seq,
            last_hash,
            resumed_after,
            gateway: gateway_id.to_owned(),
            good_len,
            durability: config.durability,
            state: state.clone(),
            buf: Vec::with_capacity(64 * 1024),
        };
        let thread = std::thread::Builder::new()
            .name("gatehouse-audit".to_owned())
            .spawn(move || writer.run(rx))
            .map_err(|e| AuditError::Open(e.to_string()))?;
        Ok((
            Arc::new(AuditSink {
                tx,
                durability: config.durability,
                state,
            }),
            AuditWriterHandle {
                thread: Some(thread),
            },
        ))
    }

    /// Hands over a decision record and, unless durability is `none`, waits until it is in
    /// the file (and fsynced, for `every` and `group`). An error means: do not forward.
    pub async fn record_decision(&self, body: Vec<u8>) -> Result<(), AuditError> {
        // With `none` nobody waits for the write, except after a failure: then each request
        // waits for its own record, so nothing is forwarded unrecorded and the first write
        // that succeeds again restores the fast path.
        if self.durability == Durability::None && self.state.healthy.load(Ordering::Acquire) {
            return self.enqueue(Entry { body, ack: None });
        }
        let (ack, done) = oneshot::channel();
        self.enqueue(Entry {
            body,
            ack: Some(ack),
        })?;
        done.await.map_err(|_| AuditError::Stopped)?.map(|_| ())
    }

    fn enqueue(&self, entry: Entry) -> Result<(), AuditError> {
        self.tx.try_send(entry).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => AuditError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => AuditError::Stopped,
        })
    }

    /// Hands over a completion record without waiting. The request has already been
    /// forwarded, so a full queue can only be counted and logged.
    pub fn record_completion(&self, body: Vec<u8>) {
        if self.tx.try_send(Entry { body, ack: None }).is_err() {
            self.state
                .dropped_completions
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!("audit queue full or closed: a completion record was lost");
        }
    }

    /// False after a failed write, until a later write succeeds.
    pub fn is_healthy(&self) -> bool {
        self.state.healthy.load(Ordering::Acquire) && !self.tx.is_closed()
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

/// Opens the trail for appending and finds where it left off: the next `seq` and the length
/// of the last complete line (a torn last line from a crash is cut off, not continued).
/// Where an existing trail left off.
struct OpenedTrail {
    file: File,
    next_seq: u64,
    good_len: u64,
    last_hash: [u8; 32],
    resumed_after: Option<u64>,
}

fn open_trail(path: &Path) -> Result<OpenedTrail, AuditError> {
    let open_err = |e: std::io::Error| AuditError::Open(format!("{}: {e}", path.display()));
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .map_err(open_err)?;
    let len = file.metadata().map_err(open_err)?.len();
    if len == 0 || !file.metadata().map_err(open_err)?.is_file() {
        return Ok(OpenedTrail {
            file,
            next_seq: 1,
            good_len: 0,
            last_hash: chain::GENESIS,
            resumed_after: None,
        });
    }
    let tail_len = len.min(256 * 1024);
    file.seek(SeekFrom::Start(len - tail_len))
        .map_err(open_err)?;
    let mut tail = Vec::with_capacity(tail_len as usize);
    file.read_to_end(&mut tail).map_err(open_err)?;
    let complete = match tail.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None => 0,
    };
    let good_len = len - tail_len + complete as u64;
    if good_len < len {
        file.set_len(good_len).map_err(open_err)?;
    }
    let last_line = tail[..complete.saturating_sub(1)]
        .rsplit(|&b| b == b'\n')
        .next()
        .unwrap_or_default();
    // Continuing after a record we cannot read would restart or fork the chain: refuse to
    // start and let a person look at the trail instead.
    let last = chain::open(last_line).map_err(|e| {
        AuditError::Open(format!(
            "{}: the last complete record does not verify ({e}); the trail needs inspection",
            path.display()
        ))
    })?;
    Ok(OpenedTrail {
        file,
        next_seq: last.seq + 1,
        good_len,
        last_hash: last.hash,
        resumed_after: Some(last.seq),
    })
}

struct Writer {
    path: PathBuf,
    file: Option<File>,
    next_seq: u64,
    /// Hash of the last record written: the next one's `prev`.
    last_hash: [u8; 32],
    /// The seq this writer's trail continues after, when it continues one.
    resumed_after: Option<u64>,
    gateway: String,
    /// Length of the file up to the last record known to be wholly written.
    good_len: u64,
    durability: Durability,
    state: Arc<SharedState>,
    buf: Vec<u8>,
}

const MAX_BATCH: usize = 1024;

impl Writer {
    /// A record about the trail itself (start, stop), in the same chain.
    fn lifecycle(&self, phase: &str) -> Entry {
        let ts = super::timestamp(std::time::SystemTime::now());
        let body = serde_json::json!({
            "ts": ts,
            "gateway": self.gateway,
            "phase": phase,
            // The first record of a new trail says so; after a restart it names the record
            // it links to, which is the last one on disk.
            "continues_after_seq": if phase == "start" { serde_json::json!(self.resumed_after) } else { serde_json::Value::Null },
            "new_trail": phase == "start" && self.resumed_after.is_none(),
        });
        Entry {
            body: body.to_string().into_bytes(),
            ack: None,
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<Entry>) {
        let mut batch: Vec<Entry> = Vec::with_capacity(MAX_BATCH);
        batch.push(self.lifecycle("start"));
        self.write_batch(&mut batch);
        let max = if self.durability == Durability::Every {
            1
        } else {
            MAX_BATCH
        };
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < max {
                match rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            self.write_batch(&mut batch);
        }
        batch.push(self.lifecycle("stop"));
        self.write_batch(&mut batch);
        if let Some(f) = &self.file {
            let _ = f.sync_data();
        }
    }

    fn write_batch(&mut self, batch: &mut Vec<Entry>) {
        self.buf.clear();
        let first_seq = self.next_seq;
        let mut hash = self.last_hash;
        for (i, entry) in batch.iter().enumerate() {
            hash = chain::seal(&mut self.buf, first_seq + i as u64, &entry.body, &hash);
        }
        let result = self.write_and_sync();
        match result {
            Ok(()) => {
                self.good_len += self.buf.len() as u64;
                self.next_seq += batch.len() as u64;
                self.last_hash = hash;
                self.state.healthy.store(true, Ordering::Release);
                self.state
                    .written
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                for (i, entry) in batch.drain(..).enumerate() {
                    if let Some(ack) = entry.ack {
                        let _ = ack.send(Ok(first_seq + i as u64));
                    }
                }
            }
            Err(e) => {
                if self.state.healthy.swap(false, Ordering::AcqRel) {
                    tracing::error!(path = %self.path.display(), error = %e, "audit trail write failed: refusing requests until it recovers");
                }
                self.state.failed_writes.fetch_add(1, Ordering::Relaxed);
                // Forget the handle: the next batch reopens and cuts any torn tail.
                self.file = None;
                for entry in batch.drain(..) {
                    if let Some(ack) = entry.ack {
                        let _ = ack.send(Err(AuditError::WriteFailed));
                    }
                }
            }
        }
    }

    fn write_and_sync(&mut self) -> std::io::Result<()> {
        if self.file.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&self.path)?;
            if file.metadata()?.is_file() && file.metadata()?.len() > self.good_len {
                file.set_len(self.good_len)?;
            }
            self.file = Some(file);
        }
        let file = self.file.as_mut().ok_or(std::io::ErrorKind::NotFound)?;
        file.write_all(&self.buf)?;
        if self.durability != Durability::None {
            file.sync_data()?;
        }
        Ok(())
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
        }
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    async fn close(sink: Arc<AuditSink>, handle: AuditWriterHandle) {
        drop(sink);
        tokio::task::spawn_blocking(move || handle.join())
            .await
            .unwrap();
    }

    fn verify(path: &Path) -> u64 {
        let text = std::fs::read(path).unwrap();
        let mut v = chain::Verifier::default();
        for line in text.split_inclusive(|&b| b == b'\n') {
            v.next(line).unwrap();
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

        let path = dir.path().join("gw.jsonl");
        let records = lines(&path);
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
        assert_eq!(verify(&path), 7);
    }

    #[tokio::test]
    async fn a_torn_last_line_is_cut_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, handle) = AuditSink::open(&config(dir.path(), Durability::Group), "gw").unwrap();
        sink.record_decision(br#"{"a":1}"#.to_vec()).await.unwrap();
        close(sink, handle).await;
        let path = dir.path().join("gw.jsonl");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"seq\":4,\"a\"");
        std::fs::write(&path, text).unwrap();

        let (sink, handle) = AuditSink::open(&config(dir.path(), Durability::Group), "gw").unwrap();
        sink.record_decision(br#"{"b":2}"#.to_vec()).await.unwrap();
        close(sink, handle).await;
        let records = lines(&path);
        assert_eq!(records.len(), 6);
        assert_eq!(records[4]["seq"], 5);
        assert_eq!(records[4]["b"], 2);
        assert_eq!(verify(&path), 6);
    }

    #[test]
    fn an_unreadable_last_record_stops_the_writer_from_starting() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("gw.jsonl"), "{\"seq\":7}\n").unwrap();
        let err = AuditSink::open(&config(dir.path(), Durability::Group), "gw").err();
        assert!(matches!(err, Some(AuditError::Open(m)) if m.contains("needs inspection")));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn without_durability_a_failing_trail_still_refuses_after_the_first_failure() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/dev/full", dir.path().join("gw.jsonl")).unwrap();
        let (sink, _handle) = AuditSink::open(&config(dir.path(), Durability::None), "gw").unwrap();
        // The writer's first write (its start record) fails …
        for _ in 0..200 {
            if !sink.is_healthy() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
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
        std::os::unix::fs::symlink("/dev/full", dir.path().join("gw.jsonl")).unwrap();
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
