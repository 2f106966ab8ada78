//! HTTP/1.1 pipelining client for idempotent, bodiless upstream requests.
//!
//! One job: carry GET and HEAD requests from concurrent callers over a few
//! shared upstream connections, several requests in flight on each, and hand
//! every caller exactly its own response. Fewer, busier upstream connections
//! are what cut syscalls and context switches per request
//! (`shared/reference/performance.md`).
//!
//! It must never: send a request that has a body or a non-idempotent method,
//! retry a request whose response had started, hand a caller a response that
//! belongs to another request, or let a caller that went away desync a
//! connection.
//!
//! An upstream that misframes one response (a length longer than its body,
//! bytes after it) shifts every response written behind it, and no reader can
//! tell from the bytes alone. So a [`Pipeline`] is meant for one principal
//! ([`Pipelines`] keeps one per key): whatever the upstream does, it can at
//! worst shift that principal's own responses. Every misframing the bytes do
//! show ([`reader`]) ends the connection.
//!
//! Shape: one task per upstream connection runs three loops over one socket:
//! the writer encodes every request queued at that moment into one buffer and
//! writes it with one call; the reader feeds the bytes to a [`ResponseReader`]
//! and hands each response to its caller's oneshot; the ticker closes idle
//! connections and marks stalled ones busy. Callers pick a connection under
//! the pool lock and push their job onto its queue; no lock is held across an
//! await.
//!
//! Retries: a request that was never written, or whose connection was closed
//! in an orderly way (`Connection: close`, HTTP/1.0: the server processes
//! nothing behind such a response, RFC 9112 §9.6), moves to a new connection
//! for free. When the upstream's bytes break framing, the request being
//! answered and every request written behind it fail
//! ([`PipelineError::Malformed`], [`PipelineError::Desync`]); only requests
//! never written move. When a connection dies abruptly with no response in
//! progress, the oldest unanswered request may be what killed it: it is
//! charged its one retry and goes first on the new connection; the second time
//! it fails with [`PipelineError::Closed`]. Every death therefore answers or
//! fails at least one request, so retries cannot loop.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::mem;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::MissedTickBehavior;

pub mod reader;

use reader::{Event, Framing, Head, RequestKind, ResponseReader};

/// Read buffer grown by this much at a time, so large bodies take few reads.
const READ_BUF: usize = 128 * 1024;
/// Below this much free space the read buffer is grown before the next read.
const MIN_READ_SPACE: usize = 16 * 1024;
/// Bodies up to this size are read whole and handed over as one `Bytes`.
const SMALL_BODY: u64 = 64 * 1024;
/// A connection streaming a body larger than this is busy: new requests avoid it.
const BUSY_BODY: u64 = 64 * 1024;
/// Body frames buffered between the reader and a slow caller (each up to `READ_BUF`).
const BODY_FRAMES: usize = 4;
/// A body its caller dropped is read and discarded up to this size; past it,
/// closing the connection is cheaper and the requests behind it move.
const DISCARD_MAX: u64 = 1024 * 1024;
/// Write buffer capacity kept between batches.
const WRITE_BUF: usize = 4 * 1024;
const WRITE_BUF_KEEP: usize = 64 * 1024;
/// Ticker period: idle timeout granularity and stall detection.
const TICK: Duration = Duration::from_millis(25);
/// Ticks without a finished response (with requests outstanding) before a
/// connection counts as busy: 50 to 75 ms.
const SLOW_TICKS: u32 = 3;
/// Ticks without progress after which a connection whose oldest written
/// request was abandoned by its caller is dropped (about 1 s), so the live
/// requests behind that ghost move instead of waiting for it.
const ABANDONED_TICKS: u32 = 40;

/// Limits for one upstream origin.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// Upstream connections at most (a connection that is only finishing the
    /// last response the upstream announced is not counted).
    pub max_connections: usize,
    /// Requests assigned to one connection at most: queued, written, or
    /// whose body is still being read.
    pub max_depth: usize,
    /// Time allowed to establish a TCP connection.
    pub connect_timeout: Duration,
    /// A connection with nothing assigned for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            max_connections: 2,
            max_depth: 16,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Why a pipelined request got no (complete) response.
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum PipelineError {
    /// The TCP connection to the upstream could not be established.
    #[error("connecting to the upstream failed: {0}")]
    Connect(#[source] io::Error),
    /// Connecting took longer than `connect_timeout`.
    #[error("connecting to the upstream timed out")]
    Timeout,
    /// The connection closed before the response, and the request had used its one retry.
    #[error("the upstream connection closed before the response")]
    Closed,
    /// The upstream's response broke HTTP/1.1 framing; the connection was dropped.
    #[error("malformed upstream response: {0}")]
    Malformed(&'static str),
    /// Reading a response body failed.
    #[error("upstream I/O failed: {0}")]
    Io(#[source] io::Error),
    /// The connection ended inside a response body.
    #[error("the upstream response body ended early")]
    Incomplete,
    /// The request may not be pipelined (not GET/HEAD, or it declares a body).
    #[error("request not eligible for pipelining: {0}")]
    Unsupported(&'static str),
    /// Written behind a response that broke framing: its answer could not be told apart.
    #[error("an earlier response on the upstream connection broke framing: {0}")]
    Desync(&'static str),
}

/// Sends GET/HEAD requests to one upstream origin over a few pipelined
/// connections. Cloning is cheap; clones share the connections.
#[derive(Clone)]
pub struct Pipeline {
    shared: Arc<Shared>,
}

/// Response body of a pipelined request.
///
/// A small body that arrived whole is one `Bytes`; a large one streams from
/// the connection's reader through a bounded channel, so a slow consumer
/// slows the upstream read. Dropping it early is safe: the reader discards
/// the rest (or drops the connection when the rest is large).
pub struct PipelinedBody {
    kind: BodyKind,
}

enum BodyKind {
    Empty,
    Full(Bytes),
    Stream {
        rx: mpsc::Receiver<BodyEvent>,
        /// Bytes still expected when the length is known.
        left: Option<u64>,
        done: bool,
    },
}

enum BodyEvent {
    Data(Bytes),
    End,
    Failed(PipelineError),
}

type Reply = Result<Response<PipelinedBody>, PipelineError>;

struct Shared {
    addr: String,
    config: PipelineConfig,
    /// One permit per request slot (max_connections × max_depth), held until
    /// the response is fully read: callers beyond that wait here, in order,
    /// before they look at any connection.
    permits: Arc<Semaphore>,
    conns: Mutex<Vec<Arc<Conn>>>,
    /// Wakes callers that hold a permit but found no connection to use.
    changed: Notify,
    next_id: AtomicU64,
}

struct Conn {
    id: u64,
    /// Jobs assigned and not finished. Raised only under the pool lock, so
    /// the pool never assigns more than `max_depth`.
    load: AtomicUsize,
    /// Streaming a body larger than `BUSY_BODY`.
    busy_body: AtomicBool,
    /// Requests outstanding but no response finished for a while.
    busy_slow: AtomicBool,
    /// A response head went out and its body is still being read.
    responding: AtomicBool,
    /// Out of the pool: its jobs were moved or failed.
    retired: AtomicBool,
    completed: AtomicU64,
    queue: Mutex<Queue>,
    wake_writer: Notify,
}

struct Queue {
    /// Oldest first; `jobs[..written]` are on the wire awaiting their head.
    jobs: VecDeque<Job>,
    written: usize,
}

struct Job {
    req: Request<()>,
    /// How its response is framed (a HEAD answer has no body).
    kind: RequestKind,
    tx: oneshot::Sender<Reply>,
    permit: OwnedSemaphorePermit,
    /// Already charged its one retry after a connection died under it.
    retried: bool,
}

/// How a connection leaves the pool, which decides what happens to its jobs.
enum Retire {
    /// Orderly end, or the blame is already assigned: every job moves.
    Orderly,
    /// Died with no response in progress: the oldest written job is charged.
    Lost,
    /// The upstream's bytes disagreed with the requests (already failed for the request
    /// being answered): nothing written on this connection can be trusted to be answered
    /// in order, so written jobs fail and only unwritten ones move.
    Fault(&'static str),
    /// Never connected: every job fails.
    ConnectFailed(PipelineError),
}

enum Choice {
    Use(usize),
    Open,
    Wait,
}

/// What the reader does after a response.
enum Next {
    Continue,
    Stop,
}

/// Why a body could not be delivered whole; its caller has already been told.
enum Ended {
    /// The upstream broke framing or the connection inside the body.
    Fault(&'static str),
    /// The caller went away and the rest costs more to read than a new connection.
    Dropped,
}

/// Where a streamed body goes; `None` once its caller is gone.
struct Sink {
    tx: Option<mpsc::Sender<BodyEvent>>,
    discarded: u64,
}

impl Pipeline {
    /// A pipeline to `addr` ("host:port", resolved on each connect). Opens no
    /// connection until the first request.
    pub fn new(addr: String, config: PipelineConfig) -> Pipeline {
        let config = PipelineConfig {
            max_connections: config.max_connections.max(1),
            max_depth: config.max_depth.max(1),
            ..config
        };
        let slots = config
            .max_connections
            .saturating_mul(config.max_depth)
            .min(Semaphore::MAX_PERMITS);
        Pipeline {
            shared: Arc::new(Shared {
                addr,
                config,
                permits: Arc::new(Semaphore::new(slots)),
                conns: Mutex::new(Vec::new()),
                changed: Notify::new(),
                next_id: AtomicU64::new(0),
            }),
        }
    }

    /// Sends `req` and waits for its response head.
    ///
    /// `req` must be GET or HEAD without a body, its URI in origin form, its
    /// headers final (hop-by-hop removed, Host set): they are written
    /// verbatim. Response headers come back as received, hop-by-hop ones
    /// included. Dropping the future is safe at any point.
    pub async fn send(&self, req: Request<()>) -> Result<Response<PipelinedBody>, PipelineError> {
        check_request(&req)?;
        let permit = Arc::clone(&self.shared.permits)
            .acquire_owned()
            .await
            .map_err(|_| PipelineError::Closed)?;
        let (tx, rx) = oneshot::channel();
        let kind = if req.method() == Method::HEAD {
            RequestKind::Head
        } else {
            RequestKind::Get
        };
        let job = Job {
            req,
            kind,
            tx,
            permit,
            retried: false,
        };
        self.shared.dispatch(job).await;
        rx.await.unwrap_or(Err(PipelineError::Closed))
    }

    /// Upstream connections currently in the pool (open or opening).
    pub fn connections(&self) -> usize {
        lock(&self.shared.conns).len()
    }
}

/// One [`Pipeline`] per key to one upstream origin. The gateway keys by principal, so only
/// one principal's requests ever share a pipelined connection.
pub struct Pipelines {
    addr: String,
    config: PipelineConfig,
    by_key: dashmap::DashMap<Box<str>, Pipeline>,
}

/// Past this many keys, pipelines with no connection and no caller are dropped before a new
/// one is added, so keys seen once do not accumulate.
const SWEEP_AT: usize = 1024;

impl Pipelines {
    pub fn new(addr: String, config: PipelineConfig) -> Pipelines {
        Pipelines {
            addr,
            config,
            by_key: dashmap::DashMap::new(),
        }
    }

    /// The pipeline for `key`, made on first use.
    pub fn get(&self, key: &str) -> Pipeline {
        if let Some(pipeline) = self.by_key.get(key) {
            return pipeline.clone();
        }
        if self.by_key.len() >= SWEEP_AT {
            // Only this map holds an idle pipeline: its connection tasks and callers hold
            // clones of its state.
            self.by_key
                .retain(|_, pipeline| Arc::strong_count(&pipeline.shared) > 1);
        }
        self.by_key
            .entry(key.into())
            .or_insert_with(|| Pipeline::new(self.addr.clone(), self.config.clone()))
            .clone()
    }

    /// Keys with a pipeline now.
    pub fn keys(&self) -> usize {
        self.by_key.len()
    }
}

impl fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("addr", &self.shared.addr)
            .field("config", &self.shared.config)
            .field("connections", &self.connections())
            .finish()
    }
}

impl PipelineError {
    /// A copy for the next of several callers failed by one event.
    fn duplicate(&self) -> PipelineError {
        let copy_io = |e: &io::Error| io::Error::new(e.kind(), e.to_string());
        match self {
            PipelineError::Connect(e) => PipelineError::Connect(copy_io(e)),
            PipelineError::Io(e) => PipelineError::Io(copy_io(e)),
            PipelineError::Timeout => PipelineError::Timeout,
            PipelineError::Closed => PipelineError::Closed,
            PipelineError::Malformed(why) => PipelineError::Malformed(why),
            PipelineError::Incomplete => PipelineError::Incomplete,
            PipelineError::Unsupported(why) => PipelineError::Unsupported(why),
            PipelineError::Desync(why) => PipelineError::Desync(why),
        }
    }
}

impl PipelinedBody {
    fn empty() -> Self {
        PipelinedBody {
            kind: BodyKind::Empty,
        }
    }

    fn full(data: Bytes) -> Self {
        if data.is_empty() {
            return Self::empty();
        }
        PipelinedBody {
            kind: BodyKind::Full(data),
        }
    }

    fn stream(rx: mpsc::Receiver<BodyEvent>, len: Option<u64>) -> Self {
        PipelinedBody {
            kind: BodyKind::Stream {
                rx,
                left: len,
                done: false,
            },
        }
    }
}

impl Body for PipelinedBody {
    type Data = Bytes;
    type Error = PipelineError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, PipelineError>>> {
        let kind = &mut self.get_mut().kind;
        match kind {
            BodyKind::Empty => Poll::Ready(None),
            BodyKind::Full(data) => {
                let data = mem::take(data);
                *kind = BodyKind::Empty;
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            BodyKind::Stream { rx, left, done } => {
                if *done {
                    return Poll::Ready(None);
                }
                let event = ready!(rx.poll_recv(cx));
                let frame = match event {
                    Some(BodyEvent::Data(data)) => {
                        if let Some(left) = left {
                            *left = left.saturating_sub(data.len() as u64);
                            *done = *left == 0;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Some(BodyEvent::End) => None,
                    Some(BodyEvent::Failed(err)) => Some(Err(err)),
                    // The reader went away without finishing the body.
                    None => Some(Err(PipelineError::Incomplete)),
                };
                *done = true;
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Empty => true,
            BodyKind::Full(_) => false,
            BodyKind::Stream { done, .. } => *done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Empty => SizeHint::with_exact(0),
            BodyKind::Full(data) => SizeHint::with_exact(data.len() as u64),
            BodyKind::Stream { done: true, .. } => SizeHint::with_exact(0),
            BodyKind::Stream {
                left: Some(left), ..
            } => SizeHint::with_exact(*left),
            BodyKind::Stream { .. } => SizeHint::default(),
        }
    }
}

impl fmt::Debug for PipelinedBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            BodyKind::Empty => "empty",
            BodyKind::Full(_) => "full",
            BodyKind::Stream { .. } => "stream",
        };
        f.debug_struct("PipelinedBody")
            .field("kind", &kind)
            .field("size_hint", &self.size_hint())
            .finish()
    }
}

impl Shared {
    /// Puts `job` on a connection, waiting while none may take it.
    async fn dispatch(self: &Arc<Self>, job: Job) {
        let mut slot = Some(job);
        loop {
            // Registered before looking, so a change in between is not missed.
            let mut changed = pin!(self.changed.notified());
            changed.as_mut().enable();
            self.place(&mut slot);
            if slot.is_none() {
                return;
            }
            changed.await;
        }
    }

    /// Moves the job out of `slot` onto a connection, if one may take it.
    fn place(self: &Arc<Self>, slot: &mut Option<Job>) {
        let mut conns = lock(&self.conns);
        match choose(&conns, &self.config) {
            Choice::Wait => {}
            Choice::Use(i) => {
                if let Some(job) = slot.take() {
                    conns[i].enqueue(job);
                }
            }
            Choice::Open => {
                if let Some(job) = slot.take() {
                    let mut jobs = VecDeque::with_capacity(self.config.max_depth);
                    jobs.push_back(job);
                    let conn = Arc::new(Conn::new(self.next_id.fetch_add(1, Relaxed), jobs));
                    conns.push(Arc::clone(&conn));
                    drop(conns);
                    tokio::spawn(run_connection(Arc::clone(self), conn));
                }
            }
        }
    }

    /// Takes `conn` out of the pool and settles its jobs: failed, or moved in
    /// order onto a fresh connection (so a charged retry goes out first).
    /// Does nothing if `conn` already left the pool.
    fn retire(self: &Arc<Self>, conn: &Arc<Conn>, how: Retire, reason: &'static str) {
        let mut failed = Vec::new();
        let mut fresh = None;
        let moved;
        {
            let mut conns = lock(&self.conns);
            let Some(pos) = conns.iter().position(|c| Arc::ptr_eq(c, conn)) else {
                return;
            };
            conns.swap_remove(pos);
            conn.retired.store(true, Relaxed);
            let (mut jobs, written) = conn.take_jobs();
            match how {
                Retire::ConnectFailed(err) => {
                    failed.extend(jobs.drain(..).map(|job| (job.tx, err.duplicate())));
                }
                Retire::Lost if written > 0 => {
                    if jobs.front().is_some_and(|front| front.retried) {
                        if let Some(job) = jobs.pop_front() {
                            failed.push((job.tx, PipelineError::Closed));
                        }
                    } else if let Some(front) = jobs.front_mut() {
                        front.retried = true;
                    }
                }
                Retire::Fault(why) => {
                    failed.extend(
                        jobs.drain(..written)
                            .map(|job| (job.tx, PipelineError::Desync(why))),
                    );
                }
                Retire::Lost | Retire::Orderly => {}
            }
            jobs.retain(|job| !job.tx.is_closed());
            moved = jobs.len();
            if !jobs.is_empty() {
                let conn = Arc::new(Conn::new(self.next_id.fetch_add(1, Relaxed), jobs));
                conns.push(Arc::clone(&conn));
                fresh = Some(conn);
            }
        }
        tracing::debug!(
            upstream = %self.addr,
            conn = conn.id,
            reason,
            moved,
            failed = failed.len(),
            "upstream connection retired"
        );
        for (tx, err) in failed {
            let _ = tx.send(Err(err));
        }
        if let Some(conn) = fresh {
            tokio::spawn(run_connection(Arc::clone(self), conn));
        }
        self.changed.notify_waiters();
    }

    /// Retires `conn` if nothing is assigned to it; true when it is out of the pool.
    fn retire_idle(&self, conn: &Arc<Conn>) -> bool {
        let mut conns = lock(&self.conns);
        if conn.load.load(Relaxed) != 0 {
            return false;
        }
        if let Some(pos) = conns.iter().position(|c| Arc::ptr_eq(c, conn)) {
            conns.swap_remove(pos);
            conn.retired.store(true, Relaxed);
            tracing::debug!(upstream = %self.addr, conn = conn.id, "idle upstream connection closed");
        }
        drop(conns);
        self.changed.notify_waiters();
        true
    }

    /// A response was fully read (or failed): its slot is free again.
    fn finish(&self, conn: &Conn, permit: OwnedSemaphorePermit) {
        conn.responding.store(false, Relaxed);
        conn.load.fetch_sub(1, Relaxed);
        conn.completed.fetch_add(1, Relaxed);
        let was_busy = clear(&conn.busy_body) | clear(&conn.busy_slow);
        drop(permit);
        if was_busy {
            self.changed.notify_waiters();
        } else {
            self.changed.notify_one();
        }
    }

    /// Jobs left the connection unanswered (their callers gave up).
    fn release(&self, conn: &Conn, jobs: usize) {
        conn.load.fetch_sub(jobs, Relaxed);
        self.changed.notify_waiters();
    }
}

/// Head-of-line blocking is the cost of pipelining, so: an idle connection
/// first; else the least-loaded one that is neither full nor busy; else a new
/// connection; else wait.
fn choose(conns: &[Arc<Conn>], config: &PipelineConfig) -> Choice {
    let mut best: Option<(usize, usize)> = None;
    for (i, conn) in conns.iter().enumerate() {
        let load = conn.load.load(Relaxed);
        if load >= config.max_depth || conn.is_busy() {
            continue;
        }
        if load == 0 {
            return Choice::Use(i);
        }
        if best.is_none_or(|(_, least)| load < least) {
            best = Some((i, load));
        }
    }
    match best {
        Some((i, _)) => Choice::Use(i),
        None if conns.len() < config.max_connections => Choice::Open,
        None => Choice::Wait,
    }
}

impl Conn {
    fn new(id: u64, jobs: VecDeque<Job>) -> Conn {
        Conn {
            id,
            load: AtomicUsize::new(jobs.len()),
            busy_body: AtomicBool::new(false),
            busy_slow: AtomicBool::new(false),
            responding: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            completed: AtomicU64::new(0),
            queue: Mutex::new(Queue { jobs, written: 0 }),
            wake_writer: Notify::new(),
        }
    }

    fn is_busy(&self) -> bool {
        self.busy_body.load(Relaxed) || self.busy_slow.load(Relaxed)
    }

    /// Called under the pool lock, so retiring cannot miss the job.
    fn enqueue(&self, job: Job) {
        self.load.fetch_add(1, Relaxed);
        lock(&self.queue).jobs.push_back(job);
        self.wake_writer.notify_one();
    }

    /// Encodes every queued, unwritten request into `out` and marks it
    /// written; requests whose caller already left are dropped unsent.
    /// Returns how many were dropped.
    fn encode_unwritten(&self, out: &mut Vec<u8>) -> usize {
        let mut guard = lock(&self.queue);
        let queue = &mut *guard;
        let mut dropped = 0;
        let mut i = queue.written;
        while i < queue.jobs.len() {
            if queue.jobs[i].tx.is_closed() {
                queue.jobs.remove(i);
                dropped += 1;
                continue;
            }
            encode_request(&queue.jobs[i].req, out);
            i += 1;
        }
        queue.written = queue.jobs.len();
        dropped
    }

    /// The oldest written job, whose response head just arrived.
    fn pop_written(&self) -> Option<Job> {
        let mut queue = lock(&self.queue);
        if queue.written == 0 {
            return None;
        }
        let job = queue.jobs.pop_front()?;
        queue.written -= 1;
        self.responding.store(true, Relaxed);
        Some(job)
    }

    /// The oldest written request whose response head has not arrived.
    fn waiting(&self) -> Option<RequestKind> {
        let queue = lock(&self.queue);
        if queue.written == 0 {
            return None;
        }
        queue.jobs.front().map(|job| job.kind)
    }

    /// Waiting on a response nobody wants: the oldest written request's
    /// caller is gone and its response has not started.
    fn front_abandoned(&self) -> bool {
        let queue = lock(&self.queue);
        queue.written > 0
            && !self.responding.load(Relaxed)
            && queue.jobs.front().is_some_and(|job| job.tx.is_closed())
    }

    fn take_jobs(&self) -> (VecDeque<Job>, usize) {
        let mut queue = lock(&self.queue);
        let written = mem::replace(&mut queue.written, 0);
        (mem::take(&mut queue.jobs), written)
    }
}

fn check_request(req: &Request<()>) -> Result<(), PipelineError> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(PipelineError::Unsupported(
            "only GET and HEAD are pipelined",
        ));
    }
    let headers = req.headers();
    if headers.contains_key(CONTENT_LENGTH) || headers.contains_key(TRANSFER_ENCODING) {
        return Err(PipelineError::Unsupported("request declares a body"));
    }
    Ok(())
}

fn encode_request(req: &Request<()>, out: &mut Vec<u8>) {
    let target = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .filter(|target| !target.is_empty())
        .unwrap_or("/");
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

async fn run_connection(shared: Arc<Shared>, conn: Arc<Conn>) {
    let mut stream = match connect(&shared.addr, shared.config.connect_timeout).await {
        Ok(stream) => stream,
        Err(err) => {
            tracing::debug!(upstream = %shared.addr, error = %err, "upstream connect failed");
            shared.retire(&conn, Retire::ConnectFailed(err), "connect failed");
            return;
        }
    };
    let (mut rd, mut wr) = stream.split();
    let reader = pin!(read_loop(&shared, &conn, &mut rd));
    let writer = pin!(write_loop(&shared, &conn, &mut wr));
    let ticker = pin!(tick_loop(&shared, &conn));
    tokio::select! {
        () = reader => {}
        () = writer => {}
        () = ticker => {}
    }
    // Each loop retires the connection before it returns; this is a guard.
    shared.retire(&conn, Retire::Lost, "connection task ended");
}

async fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, PipelineError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => return Err(PipelineError::Connect(err)),
        Err(_) => return Err(PipelineError::Timeout),
    };
    // Requests already go out in whole batches; Nagle would only delay them.
    stream.set_nodelay(true).map_err(PipelineError::Connect)?;
    Ok(stream)
}

/// Writes, in one call per batch, every request queued since the last write.
async fn write_loop(shared: &Arc<Shared>, conn: &Arc<Conn>, wr: &mut WriteHalf<'_>) {
    let mut out = Vec::with_capacity(WRITE_BUF);
    loop {
        let dropped = conn.encode_unwritten(&mut out);
        if dropped > 0 {
            shared.release(conn, dropped);
        }
        if out.is_empty() {
            conn.wake_writer.notified().await;
            continue;
        }
        if wr.write_all(&out).await.is_err() {
            if !conn.responding.load(Relaxed) {
                return shared.retire(conn, Retire::Lost, "write failed");
            }
            // The response being read may still complete: let the reader
            // finish it (it stops after). That caller bears this death, so
            // the requests behind it move without being charged.
            shared.retire(conn, Retire::Orderly, "write failed");
            return std::future::pending().await;
        }
        out.clear();
        if out.capacity() > WRITE_BUF_KEEP {
            out = Vec::with_capacity(WRITE_BUF);
        }
    }
}

/// Closes the connection when idle, marks it busy when responses stall, and
/// drops it when it stalls on a request whose caller gave up. A tick avoids
/// a clock read per request.
async fn tick_loop(shared: &Arc<Shared>, conn: &Arc<Conn>) {
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker.tick().await;
    let idle_limit = shared
        .config
        .idle_timeout
        .as_millis()
        .div_ceil(TICK.as_millis())
        .max(1);
    let (mut idle, mut stalled) = (0u128, 0u32);
    let mut last_completed = conn.completed.load(Relaxed);
    loop {
        ticker.tick().await;
        if conn.retired.load(Relaxed) {
            continue;
        }
        let completed = conn.completed.load(Relaxed);
        if conn.load.load(Relaxed) == 0 {
            stalled = 0;
            idle += 1;
            if idle >= idle_limit && shared.retire_idle(conn) {
                return;
            }
        } else {
            idle = 0;
            stalled = if completed == last_completed {
                stalled + 1
            } else {
                0
            };
            if stalled >= SLOW_TICKS {
                conn.busy_slow.store(true, Relaxed);
            }
            if stalled >= ABANDONED_TICKS && conn.front_abandoned() {
                return shared.retire(conn, Retire::Orderly, "stalled on an abandoned request");
            }
        }
        last_completed = completed;
    }
}

/// Reads responses in order and hands each to the oldest written job; the reader says
/// what the bytes are, this loop only moves them.
async fn read_loop(shared: &Arc<Shared>, conn: &Arc<Conn>, rd: &mut ReadHalf<'_>) {
    let mut buf = BytesMut::with_capacity(READ_BUF);
    let mut reader = ResponseReader::new();
    loop {
        match reader.next(&mut buf, || conn.waiting()) {
            Event::NeedMore => match read_more(rd, &mut buf).await {
                Ok(0) => {
                    return match reader.eof(&buf) {
                        Event::Fault(why) => fault(shared, conn, why),
                        _ => shared.retire(conn, Retire::Lost, "upstream closed"),
                    }
                }
                Ok(_) => {}
                Err(_) => return shared.retire(conn, Retire::Lost, "read failed"),
            },
            Event::Head(head) => {
                let Some(job) = conn.pop_written() else {
                    // The jobs were moved away meanwhile (the connection was retired).
                    return shared.retire(conn, Retire::Orderly, "no request left to answer");
                };
                match respond(shared, conn, rd, &mut buf, &mut reader, head, job).await {
                    Next::Continue if !conn.retired.load(Relaxed) => {}
                    Next::Continue | Next::Stop => return,
                }
            }
            Event::Fault(why) => return fault(shared, conn, why),
            // Body events come only after a head, inside `respond`.
            Event::Data(_) | Event::End { .. } => {
                return fault(shared, conn, "body bytes outside a response")
            }
        }
    }
}

/// Between responses the bytes broke framing: the request they would answer fails, and so
/// does every request written behind it.
fn fault(shared: &Arc<Shared>, conn: &Arc<Conn>, why: &'static str) {
    if let Some(job) = conn.pop_written() {
        let _ = job.tx.send(Err(PipelineError::Malformed(why)));
        shared.finish(conn, job.permit);
    }
    shared.retire(conn, Retire::Fault(why), why);
}

/// Delivers one response (head and body) to `job`'s caller.
async fn respond(
    shared: &Arc<Shared>,
    conn: &Arc<Conn>,
    rd: &mut ReadHalf<'_>,
    buf: &mut BytesMut,
    reader: &mut ResponseReader,
    head: Head,
    job: Job,
) -> Next {
    let Job {
        req, tx, permit, ..
    } = job;
    drop(req);
    let last = head.last;
    if last {
        // Nothing more will be answered here, and a server that announces its close
        // processes none of the requests behind (RFC 9112 §9.6): move them now, not after
        // this body.
        shared.retire(conn, Retire::Orderly, "upstream closes the connection");
    }
    let delivered = deliver_body(conn, rd, buf, reader, head, tx).await;
    match delivered {
        Ok(()) => {}
        Err(Ended::Fault(why)) => shared.retire(conn, Retire::Fault(why), why),
        Err(Ended::Dropped) => shared.retire(conn, Retire::Orderly, "caller dropped a large body"),
    }
    shared.finish(conn, permit);
    if last || delivered.is_err() {
        Next::Stop
    } else {
        Next::Continue
    }
}

/// Hands the caller its response: whole when the body is small and already here (no
/// channel), streamed otherwise.
async fn deliver_body(
    conn: &Conn,
    rd: &mut ReadHalf<'_>,
    buf: &mut BytesMut,
    reader: &mut ResponseReader,
    head: Head,
    tx: oneshot::Sender<Reply>,
) -> Result<(), Ended> {
    if let Framing::Length(len) = head.framing {
        if len <= SMALL_BODY {
            // Small: wait for all of it and skip the channel.
            if let Err(err) = fill(rd, buf, len as usize).await {
                let _ = tx.send(Err(err));
                return Err(Ended::Fault("the connection ended inside a response body"));
            }
        }
    }
    let mut pieces: Vec<Bytes> = Vec::new();
    let mut total = 0u64;
    loop {
        match reader.next(buf, || conn.waiting()) {
            Event::Data(data) => {
                total += data.len() as u64;
                pieces.push(data);
                if total > SMALL_BODY {
                    break;
                }
            }
            Event::End { .. } => {
                let body = PipelinedBody::full(join(pieces, total));
                let _ = tx.send(Ok(head.into_response(body)));
                return Ok(());
            }
            Event::NeedMore => break,
            Event::Fault(why) => {
                let _ = tx.send(Err(PipelineError::Malformed(why)));
                return Err(Ended::Fault(why));
            }
            Event::Head(_) => {
                let _ = tx.send(Err(PipelineError::Malformed("a head inside a body")));
                return Err(Ended::Fault("a head inside a body"));
            }
        }
    }
    stream_body(conn, rd, buf, reader, head, tx, pieces).await
}

/// The pieces of a small body as one `Bytes` (one copy only when there are several).
fn join(mut pieces: Vec<Bytes>, total: u64) -> Bytes {
    if pieces.len() <= 1 {
        return pieces.pop().unwrap_or_default();
    }
    let mut joined = BytesMut::with_capacity(total as usize);
    for piece in pieces {
        joined.extend_from_slice(&piece);
    }
    joined.freeze()
}

/// Hands the head over now and the body through a bounded channel: a slow caller slows the
/// upstream read instead of growing a buffer. `first` is what was already read.
async fn stream_body(
    conn: &Conn,
    rd: &mut ReadHalf<'_>,
    buf: &mut BytesMut,
    reader: &mut ResponseReader,
    head: Head,
    tx: oneshot::Sender<Reply>,
    first: Vec<Bytes>,
) -> Result<(), Ended> {
    let known_len = match head.framing {
        Framing::Length(len) => Some(len),
        Framing::Empty => Some(0),
        Framing::Chunked | Framing::UntilClose => None,
    };
    let mut sink = Sink::open(tx, head, known_len);
    if known_len.is_some_and(|len| len > BUSY_BODY) {
        conn.busy_body.store(true, Relaxed);
    }
    let mut streamed = 0u64;
    for data in first {
        streamed += data.len() as u64;
        if !sink.push(data, reader.discard_cost()).await {
            return Err(Ended::Dropped);
        }
    }
    loop {
        match reader.next(buf, || conn.waiting()) {
            Event::NeedMore => match read_more(rd, buf).await {
                Ok(0) => {
                    if let Event::End { .. } = reader.eof(buf) {
                        sink.end().await;
                        return Ok(());
                    }
                    sink.fail(PipelineError::Incomplete);
                    return Err(Ended::Fault("the connection ended inside a response body"));
                }
                Ok(_) => {}
                Err(err) => {
                    sink.fail(PipelineError::Io(err));
                    return Err(Ended::Fault("read failed inside a response body"));
                }
            },
            Event::Data(data) => {
                streamed += data.len() as u64;
                if streamed > BUSY_BODY {
                    conn.busy_body.store(true, Relaxed);
                }
                if !sink.push(data, reader.discard_cost()).await {
                    return Err(Ended::Dropped);
                }
            }
            Event::End { .. } => {
                // A length-delimited body knows its own end: its receiver stops by itself.
                if known_len.is_none() {
                    sink.end().await;
                }
                return Ok(());
            }
            Event::Fault(why) => {
                sink.fail(PipelineError::Malformed(why));
                return Err(Ended::Fault(why));
            }
            Event::Head(_) => {
                sink.fail(PipelineError::Malformed("a head inside a body"));
                return Err(Ended::Fault("a head inside a body"));
            }
        }
    }
}

impl Sink {
    fn open(tx: oneshot::Sender<Reply>, head: Head, len: Option<u64>) -> Sink {
        let mut sink = Sink {
            tx: None,
            discarded: 0,
        };
        if tx.is_closed() {
            return sink;
        }
        let (body_tx, body_rx) = mpsc::channel(BODY_FRAMES);
        if tx
            .send(Ok(head.into_response(PipelinedBody::stream(body_rx, len))))
            .is_ok()
        {
            sink.tx = Some(body_tx);
        }
        sink
    }

    /// False once the caller is gone and reading on costs more than a new
    /// connection; `cost` is what is left to read (None: unknown).
    async fn push(&mut self, data: Bytes, cost: Option<u64>) -> bool {
        let len = data.len() as u64;
        if let Some(tx) = &self.tx {
            if tx.send(BodyEvent::Data(data)).await.is_ok() {
                return true;
            }
            self.tx = None;
        }
        self.discarded += len;
        self.discarded.saturating_add(cost.unwrap_or(0)) <= DISCARD_MAX
    }

    async fn end(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(BodyEvent::End).await;
        }
    }

    /// Never waits: if the channel is full the caller sees `Incomplete` instead.
    fn fail(&mut self, err: PipelineError) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.try_send(BodyEvent::Failed(err));
        }
    }
}

async fn read_more(rd: &mut ReadHalf<'_>, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() - buf.len() < MIN_READ_SPACE {
        buf.reserve(READ_BUF);
    }
    rd.read_buf(buf).await
}

/// Reads until `buf` holds at least `len` bytes.
async fn fill(rd: &mut ReadHalf<'_>, buf: &mut BytesMut, len: usize) -> Result<(), PipelineError> {
    if buf.len() < len {
        buf.reserve((len - buf.len()).max(MIN_READ_SPACE));
    }
    while buf.len() < len {
        match rd.read_buf(buf).await {
            Ok(0) => return Err(PipelineError::Incomplete),
            Ok(_) => {}
            Err(err) => return Err(PipelineError::Io(err)),
        }
    }
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Clears `flag`; true if it was set (one read in the common unset case).
fn clear(flag: &AtomicBool) -> bool {
    flag.load(Relaxed) && flag.swap(false, Relaxed)
}
