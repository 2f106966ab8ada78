//! HTTP/1.1 pipelining client for idempotent, bodiless upstream requests.
//!
//! One job: carry GET and HEAD requests from many concurrent callers over a
//! few shared upstream connections, several requests in flight on each, and
//! hand every caller exactly its own response. Fewer, busier upstream
//! connections are what cut syscalls and context switches per request
//! (`shared/reference/performance.md`).
//!
//! It must never: send a request that has a body or a non-idempotent method,
//! retry a request whose response had started, hand a caller a response that
//! belongs to another request, or let a caller that went away desync a
//! connection.
//!
//! Shape: one task per upstream connection runs three loops over one socket:
//! the writer encodes every request queued at that moment into one buffer and
//! writes it with one call; the reader parses responses strictly in order and
//! hands each to its caller's oneshot; the ticker closes idle connections and
//! marks stalled ones busy. Callers pick a connection under the pool lock and
//! push their job onto its queue; no lock is held across an await.
//!
//! Retries: a request that was never written, or whose connection was closed
//! in an orderly way (`Connection: close`, HTTP/1.0, a malformed response
//! already blamed on its own request), moves to a new connection for free.
//! When a connection dies abruptly with no response in progress, the oldest
//! unanswered request may be what killed it: it is charged its one retry and
//! goes first on the new connection; the second time it fails with
//! [`PipelineError::Closed`]. Every death therefore answers or fails at least
//! one request, so retries cannot loop.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::mem::{self, MaybeUninit};
use std::ops::Range;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::MissedTickBehavior;

/// Most header lines accepted in one response head.
const MAX_HEADERS: usize = 128;
/// Largest response head (and largest chunked trailer section) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size line (size plus extensions) accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;
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

enum HeadError {
    Closed,
    Io,
    Malformed(&'static str),
}

enum Parsed {
    Final(Head),
    Interim,
    Partial,
}

struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    facts: FramingFacts,
}

/// What the headers say about framing and persistence.
#[derive(Default)]
struct FramingFacts {
    content_length: Option<u64>,
    bad_length: bool,
    chunked: bool,
    other_coding: bool,
    close: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Header name and value positions inside a response head.
#[derive(Clone, Copy, Default)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

enum Decoder {
    Length(u64),
    Chunked(ChunkDecoder),
    UntilClose,
}

enum Piece {
    Data(Bytes),
    NeedMore,
    Done,
}

/// Where a streamed body goes; `None` once its caller is gone.
struct Sink {
    tx: Option<mpsc::Sender<BodyEvent>>,
    discarded: u64,
}

#[derive(Default)]
struct ChunkDecoder {
    state: ChunkState,
}

#[derive(Default, Clone, Copy)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    /// Trailer bytes seen so far; trailers are dropped.
    Trailers(usize),
}

/// One decoding step over the front of a chunked body.
enum Step {
    /// Framing bytes to drop.
    Skip(usize),
    /// Body bytes at the front.
    Data(usize),
    NeedMore,
    /// The body ends after this many framing bytes.
    Done(usize),
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
        let job = Job {
            req,
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

/// Reads responses in order and hands each to the oldest written job.
async fn read_loop(shared: &Arc<Shared>, conn: &Arc<Conn>, rd: &mut ReadHalf<'_>) {
    let mut buf = BytesMut::with_capacity(READ_BUF);
    loop {
        let head = match read_head(rd, &mut buf).await {
            Ok(head) => head,
            Err(HeadError::Closed) => return shared.retire(conn, Retire::Lost, "upstream closed"),
            Err(HeadError::Io) => return shared.retire(conn, Retire::Lost, "read failed"),
            Err(HeadError::Malformed(why)) => {
                // The oldest written request is the one whose response came out wrong.
                if let Some(job) = conn.pop_written() {
                    let _ = job.tx.send(Err(PipelineError::Malformed(why)));
                    shared.finish(conn, job.permit);
                }
                return shared.retire(conn, Retire::Orderly, why);
            }
        };
        let Some(job) = conn.pop_written() else {
            // A response nobody asked for (a 408 before an idle close, or our
            // jobs were moved away): nothing after it can be trusted.
            return shared.retire(conn, Retire::Orderly, "unsolicited response");
        };
        match respond(shared, conn, rd, &mut buf, head, job).await {
            Next::Continue if !conn.retired.load(Relaxed) => {}
            Next::Continue | Next::Stop => return,
        }
    }
}

/// Delivers one response (head and body) to `job`'s caller.
async fn respond(
    shared: &Arc<Shared>,
    conn: &Arc<Conn>,
    rd: &mut ReadHalf<'_>,
    buf: &mut BytesMut,
    head: Head,
    job: Job,
) -> Next {
    let Job {
        req, tx, permit, ..
    } = job;
    let framing = match head.framing(req.method() == Method::HEAD) {
        Ok(framing) => framing,
        Err(why) => {
            let _ = tx.send(Err(PipelineError::Malformed(why)));
            shared.finish(conn, permit);
            shared.retire(conn, Retire::Orderly, why);
            return Next::Stop;
        }
    };
    drop(req);
    let last = head.is_last() || framing == Framing::UntilClose;
    if last {
        // Nothing more will be answered here: move the requests behind this
        // one to a new connection now, not after this body.
        shared.retire(conn, Retire::Orderly, "upstream closes the connection");
    }
    let delivered = deliver_body(conn, rd, buf, head, tx, framing).await;
    if let Err(why) = delivered {
        shared.retire(conn, Retire::Orderly, why);
    }
    shared.finish(conn, permit);
    if last || delivered.is_err() {
        Next::Stop
    } else {
        Next::Continue
    }
}

/// Err means the connection cannot carry another response; the caller has
/// already been given the error (as its result or through its body).
async fn deliver_body(
    conn: &Conn,
    rd: &mut ReadHalf<'_>,
    buf: &mut BytesMut,
    head: Head,
    tx: oneshot::Sender<Reply>,
    framing: Framing,
) -> Result<(), &'static str> {
    match framing {
        Framing::Empty => {
            let _ = tx.send(Ok(head.into_response(PipelinedBody::empty())));
            Ok(())
        }
        Framing::Length(len) if len <= SMALL_BODY => {
            // Small: wait for all of it and skip the channel.
            let len = len as usize;
            match fill(rd, buf, len).await {
                Ok(()) => {
                    let body = PipelinedBody::full(buf.split_to(len).freeze());
                    let _ = tx.send(Ok(head.into_response(body)));
                    Ok(())
                }
                Err(err) => {
                    let _ = tx.send(Err(err));
                    Err("connection ended inside a response body")
                }
            }
        }
        Framing::Length(len) => stream_body(conn, rd, buf, head, tx, Decoder::Length(len)).await,
        Framing::Chunked => match whole_chunked(buf) {
            Ok(Some(data)) => {
                let _ = tx.send(Ok(head.into_response(PipelinedBody::full(data))));
                Ok(())
            }
            Ok(None) => {
                let decoder = Decoder::Chunked(ChunkDecoder::default());
                stream_body(conn, rd, buf, head, tx, decoder).await
            }
            Err(why) => {
                let _ = tx.send(Err(PipelineError::Malformed(why)));
                Err(why)
            }
        },
        Framing::UntilClose => stream_body(conn, rd, buf, head, tx, Decoder::UntilClose).await,
    }
}

/// Hands the head over now and the body through a bounded channel: a slow
/// caller slows the upstream read instead of growing a buffer.
async fn stream_body(
    conn: &Conn,
    rd: &mut ReadHalf<'_>,
    buf: &mut BytesMut,
    head: Head,
    tx: oneshot::Sender<Reply>,
    mut decoder: Decoder,
) -> Result<(), &'static str> {
    let known_len = decoder.known_len();
    let mut sink = Sink::open(tx, head, known_len);
    let mut streamed = 0u64;
    if known_len.is_some_and(|len| len > BUSY_BODY) {
        conn.busy_body.store(true, Relaxed);
    }
    loop {
        match decoder.next(buf) {
            Ok(Piece::Data(data)) => {
                streamed += data.len() as u64;
                if streamed > BUSY_BODY {
                    conn.busy_body.store(true, Relaxed);
                }
                if !sink.push(data, decoder.discard_cost()).await {
                    return Err("caller dropped a large body");
                }
            }
            Ok(Piece::NeedMore) => match read_more(rd, buf).await {
                Ok(0) if matches!(decoder, Decoder::UntilClose) => {
                    sink.end().await;
                    return Ok(());
                }
                Ok(0) => {
                    sink.fail(PipelineError::Incomplete);
                    return Err("connection ended inside a response body");
                }
                Ok(_) => {}
                Err(err) => {
                    sink.fail(PipelineError::Io(err));
                    return Err("read failed inside a response body");
                }
            },
            Ok(Piece::Done) => {
                // A length-delimited body knows its own end.
                if !matches!(decoder, Decoder::Length(_)) {
                    sink.end().await;
                }
                return Ok(());
            }
            Err(why) => {
                sink.fail(PipelineError::Malformed(why));
                return Err(why);
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

impl Decoder {
    fn next(&mut self, buf: &mut BytesMut) -> Result<Piece, &'static str> {
        match self {
            Decoder::Length(0) => Ok(Piece::Done),
            Decoder::Length(_) | Decoder::UntilClose if buf.is_empty() => Ok(Piece::NeedMore),
            Decoder::Length(left) => {
                let take = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= take as u64;
                Ok(Piece::Data(buf.split_to(take).freeze()))
            }
            Decoder::UntilClose => Ok(Piece::Data(buf.split().freeze())),
            Decoder::Chunked(chunks) => loop {
                match chunks.step(&buf[..])? {
                    Step::Skip(n) => buf.advance(n),
                    Step::Data(n) => return Ok(Piece::Data(buf.split_to(n).freeze())),
                    Step::NeedMore => return Ok(Piece::NeedMore),
                    Step::Done(n) => {
                        buf.advance(n);
                        return Ok(Piece::Done);
                    }
                }
            },
        }
    }

    fn known_len(&self) -> Option<u64> {
        match self {
            Decoder::Length(len) => Some(*len),
            Decoder::Chunked(_) | Decoder::UntilClose => None,
        }
    }

    /// Bytes left to read if the body were discarded. A close-delimited body
    /// never pays: its connection ends anyway.
    fn discard_cost(&self) -> Option<u64> {
        match self {
            Decoder::Length(left) => Some(*left),
            Decoder::Chunked(_) => None,
            Decoder::UntilClose => Some(u64::MAX),
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

/// Reads up to the next final response head, skipping interim (1xx) ones.
async fn read_head(rd: &mut ReadHalf<'_>, buf: &mut BytesMut) -> Result<Head, HeadError> {
    loop {
        if !buf.is_empty() {
            match parse_head(buf).map_err(HeadError::Malformed)? {
                Parsed::Final(head) => return Ok(head),
                Parsed::Interim => continue,
                Parsed::Partial if buf.len() >= MAX_HEAD => {
                    return Err(HeadError::Malformed("response head too large"));
                }
                Parsed::Partial => {}
            }
        }
        match read_more(rd, buf).await {
            Ok(0) => return Err(HeadError::Closed),
            Ok(_) => {}
            Err(_) => return Err(HeadError::Io),
        }
    }
}

/// Parses one response head off the front of `buf`. Header values share the
/// read buffer instead of being copied.
fn parse_head(buf: &mut BytesMut) -> Result<Parsed, &'static str> {
    let mut spans = [Span::default(); MAX_HEADERS];
    let (len, code, version, count) = {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let status = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            &buf[..],
            &mut slots,
        );
        let len = match status {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Err(httparse::Error::TooManyHeaders) => return Err("too many response headers"),
            Err(_) => return Err("invalid response head"),
        };
        if len > MAX_HEAD {
            return Err("response head too large");
        }
        let base = buf.as_ptr() as usize;
        // Offsets fit in u32: the head is at most MAX_HEAD bytes.
        let at = |part: &[u8]| {
            if part.is_empty() {
                return (0, 0);
            }
            (
                (part.as_ptr() as usize).wrapping_sub(base) as u32,
                part.len() as u32,
            )
        };
        for (span, header) in spans.iter_mut().zip(response.headers.iter()) {
            *span = Span {
                name: at(header.name.as_bytes()),
                value: at(header.value),
            };
        }
        (len, response.code, response.version, response.headers.len())
    };
    let code = code.ok_or("missing status code")?;
    if (100..200).contains(&code) {
        if code == 101 {
            return Err("unexpected 101 Switching Protocols");
        }
        // 100 Continue, 103 Early Hints: the final response follows.
        buf.advance(len);
        return Ok(Parsed::Interim);
    }
    let status = StatusCode::from_u16(code).map_err(|_| "invalid status code")?;
    let version = match version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Err("unsupported HTTP version"),
    };
    let raw = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    let mut facts = FramingFacts::default();
    for span in &spans[..count] {
        let name =
            HeaderName::from_bytes(&raw[range(span.name)]).map_err(|_| "invalid header name")?;
        let value = HeaderValue::from_maybe_shared(raw.slice(range(span.value)))
            .map_err(|_| "invalid header value")?;
        facts.note(&name, value.as_bytes());
        headers.append(name, value);
    }
    Ok(Parsed::Final(Head {
        status,
        version,
        headers,
        facts,
    }))
}

fn range((start, len): (u32, u32)) -> Range<usize> {
    start as usize..(start + len) as usize
}

impl FramingFacts {
    fn note(&mut self, name: &HeaderName, value: &[u8]) {
        if *name == CONTENT_LENGTH {
            for item in value.split(|&b| b == b',') {
                match decimal(trim(item)) {
                    Some(len) if self.content_length.is_none_or(|seen| seen == len) => {
                        self.content_length = Some(len);
                    }
                    _ => self.bad_length = true,
                }
            }
        } else if *name == TRANSFER_ENCODING {
            for coding in tokens(value) {
                if coding.eq_ignore_ascii_case(b"chunked") && !self.chunked && !self.other_coding {
                    self.chunked = true;
                } else {
                    // Anything but one lone `chunked` (gzip, chunked twice, chunked not last).
                    self.other_coding = true;
                }
            }
        } else if *name == CONNECTION {
            self.close |= tokens(value).any(|option| option.eq_ignore_ascii_case(b"close"));
        }
    }
}

impl Head {
    /// RFC 9112 §6.3, strict: anything a proxy could be smuggled through is malformed.
    fn framing(&self, head_request: bool) -> Result<Framing, &'static str> {
        if head_request
            || self.status == StatusCode::NO_CONTENT
            || self.status == StatusCode::NOT_MODIFIED
        {
            return Ok(Framing::Empty);
        }
        let facts = &self.facts;
        if facts.other_coding {
            return Err("unsupported transfer-encoding");
        }
        if facts.chunked {
            if facts.content_length.is_some() || facts.bad_length {
                return Err("both transfer-encoding and content-length");
            }
            if self.version == Version::HTTP_10 {
                return Err("transfer-encoding in an HTTP/1.0 response");
            }
            return Ok(Framing::Chunked);
        }
        if facts.bad_length {
            return Err("invalid content-length");
        }
        Ok(match facts.content_length {
            Some(0) => Framing::Empty,
            Some(len) => Framing::Length(len),
            None => Framing::UntilClose,
        })
    }

    /// This response is the last one on its connection.
    fn is_last(&self) -> bool {
        self.version == Version::HTTP_10 || self.facts.close
    }

    fn into_response(self, body: PipelinedBody) -> Response<PipelinedBody> {
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        *response.version_mut() = self.version;
        *response.headers_mut() = self.headers;
        response
    }
}

/// The whole chunked body when it is already buffered and small, so it
/// reaches the caller as one `Bytes` without a channel.
fn whole_chunked(buf: &mut BytesMut) -> Result<Option<Bytes>, &'static str> {
    let mut decoder = ChunkDecoder::default();
    let (mut pos, mut total, mut pieces) = (0usize, 0usize, 0usize);
    let mut first = 0..0;
    let end = loop {
        match decoder.step(&buf[pos..])? {
            Step::Skip(n) => pos += n,
            Step::Data(n) => {
                if pieces == 0 {
                    first = pos..pos + n;
                }
                pieces += 1;
                total += n;
                if total as u64 > SMALL_BODY {
                    return Ok(None);
                }
                pos += n;
            }
            Step::NeedMore => return Ok(None),
            Step::Done(n) => break pos + n,
        }
    };
    let raw = buf.split_to(end).freeze();
    if pieces <= 1 {
        return Ok(Some(raw.slice(first)));
    }
    // Several chunks: join them (one copy, at most SMALL_BODY).
    let mut joined = BytesMut::with_capacity(total);
    let mut decoder = ChunkDecoder::default();
    let mut pos = 0;
    loop {
        match decoder.step(&raw[pos..])? {
            Step::Skip(n) => pos += n,
            Step::Data(n) => {
                joined.extend_from_slice(&raw[pos..pos + n]);
                pos += n;
            }
            Step::NeedMore | Step::Done(_) => break,
        }
    }
    Ok(Some(joined.freeze()))
}

impl ChunkDecoder {
    fn step(&mut self, input: &[u8]) -> Result<Step, &'static str> {
        match self.state {
            ChunkState::Size => {
                let Some((line, used)) = crlf_line(input, MAX_CHUNK_LINE)? else {
                    return Ok(Step::NeedMore);
                };
                let size = chunk_size(line)?;
                self.state = if size == 0 {
                    ChunkState::Trailers(0)
                } else {
                    ChunkState::Data(size)
                };
                Ok(Step::Skip(used))
            }
            ChunkState::Data(_) if input.is_empty() => Ok(Step::NeedMore),
            ChunkState::Data(left) => {
                let n = left.min(input.len() as u64);
                self.state = if n == left {
                    ChunkState::DataEnd
                } else {
                    ChunkState::Data(left - n)
                };
                Ok(Step::Data(n as usize))
            }
            ChunkState::DataEnd => match input {
                [b'\r', b'\n', ..] => {
                    self.state = ChunkState::Size;
                    Ok(Step::Skip(2))
                }
                [] | [b'\r'] => Ok(Step::NeedMore),
                _ => Err("chunk data not followed by CRLF"),
            },
            ChunkState::Trailers(seen) => {
                let Some((line, used)) = crlf_line(input, MAX_HEAD.saturating_sub(seen))? else {
                    return Ok(Step::NeedMore);
                };
                if line.is_empty() {
                    return Ok(Step::Done(used));
                }
                self.state = ChunkState::Trailers(seen + used);
                Ok(Step::Skip(used))
            }
        }
    }
}

/// The CRLF-terminated line at the front of `input` and the bytes it takes.
fn crlf_line(input: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, &'static str> {
    match memchr::memchr(b'\n', input) {
        Some(nl) if nl > max => Err("chunked framing line too long"),
        Some(nl) if nl == 0 || input[nl - 1] != b'\r' => Err("chunked framing line without CRLF"),
        Some(nl) => Ok(Some((&input[..nl - 1], nl + 1))),
        None if input.len() > max => Err("chunked framing line too long"),
        None => Ok(None),
    }
}

fn chunk_size(line: &[u8]) -> Result<u64, &'static str> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err("missing chunk size");
    }
    if digits > 15 {
        return Err("chunk size too large");
    }
    let size = line[..digits]
        .iter()
        .fold(0u64, |size, &b| size << 4 | u64::from(hex_value(b)));
    match trim(&line[digits..]).first() {
        None | Some(b';') => Ok(size),
        Some(_) => Err("invalid chunk size"),
    }
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0,
    }
}

/// A plain decimal Content-Length value.
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Comma-separated list items, optional whitespace trimmed, empty ones skipped.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim)
        .filter(|item| !item.is_empty())
}

fn trim(bytes: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !is_ows(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Clears `flag`; true if it was set (one read in the common unset case).
fn clear(flag: &AtomicBool) -> bool {
    flag.load(Relaxed) && flag.swap(false, Relaxed)
}

#[cfg(test)]
mod unit {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize), &'static str> {
        let mut decoder = ChunkDecoder::default();
        let (mut pos, mut out) = (0, Vec::new());
        loop {
            match decoder.step(&input[pos..])? {
                Step::Skip(n) => pos += n,
                Step::Data(n) => {
                    out.extend_from_slice(&input[pos..pos + n]);
                    pos += n;
                }
                Step::NeedMore => return Err("need more"),
                Step::Done(n) => return Ok((out, pos + n)),
            }
        }
    }

    #[test]
    fn chunked_decoding() {
        let ok: &[(&[u8], &[u8])] = &[
            (b"0\r\n\r\n", b""),
            (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
            (
                b"3;ext=1\r\nabc\r\nA \r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n",
                b"abc0123456789",
            ),
        ];
        for (input, body) in ok {
            let (out, used) = decode_all(input).expect("valid chunked body");
            assert_eq!(out, *body);
            assert_eq!(used, input.len());
        }
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloX\r\n",
            b"5\nhello",
            b"ffffffffffffffff\r\n",
        ] {
            assert!(decode_all(bad).is_err_and(|e| e != "need more"), "{bad:?}");
        }
    }

    #[test]
    fn framing_rules() {
        let head = |raw: &str| {
            let mut buf = BytesMut::from(raw);
            match parse_head(&mut buf) {
                Ok(Parsed::Final(head)) => head,
                _ => panic!("head did not parse: {raw}"),
            }
        };
        let get = |raw: &str| head(raw).framing(false);
        assert_eq!(
            get("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            get("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            get("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            Ok(Framing::Empty)
        );
        assert_eq!(get("HTTP/1.1 200 OK\r\n\r\n"), Ok(Framing::UntilClose));
        assert_eq!(
            get("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            get("HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n"),
            Ok(Framing::Empty)
        );
        assert_eq!(
            get("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"),
            Ok(Framing::Empty)
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n").framing(true),
            Ok(Framing::Empty)
        );
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(get(bad).is_err(), "{bad}");
        }
        assert!(head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n").is_last());
        assert!(head("HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\n\r\n").is_last());
        assert!(!head("HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n").is_last());
    }

    #[test]
    fn request_encoding_is_verbatim() {
        let req = Request::get("http://ignored.example/a/b?c=d")
            .header("host", "origin:8080")
            .header("x-one", "1")
            .header("accept", "*/*")
            .body(())
            .expect("request");
        let mut out = Vec::new();
        encode_request(&req, &mut out);
        assert_eq!(
            out,
            b"GET /a/b?c=d HTTP/1.1\r\nhost: origin:8080\r\nx-one: 1\r\naccept: */*\r\n\r\n"
        );
    }
}
