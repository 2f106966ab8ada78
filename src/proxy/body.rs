//! Streaming bodies that count bytes, and the completion hook that fires exactly once.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::audit::{timestamp, AuditSink, CompletionRecord};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Writes the `completion` record exactly once: explicitly via `finish`, or on drop — which
/// also covers a client that goes away mid-response and a handler that is cancelled.
pub struct Completion {
    sink: Arc<AuditSink>,
    metrics: Arc<crate::metrics::Metrics>,
    gateway: Arc<str>,
    request_id: String,
    exchange: String,
    started: Instant,
    pub status: u16,
    pub bytes_in: Arc<AtomicU64>,
    pub bytes_out: u64,
    pub upstream_us: Option<u64>,
    pub error: Option<&'static str>,
    /// An S3 upstream's error code, when it answered with one.
    pub upstream_error: Option<String>,
    done: bool,
}

impl Completion {
    pub fn new(
        sink: Arc<AuditSink>,
        metrics: Arc<crate::metrics::Metrics>,
        gateway: Arc<str>,
        request_id: String,
        exchange: String,
        started: Instant,
    ) -> Completion {
        Completion {
            sink,
            metrics,
            gateway,
            request_id,
            exchange,
            started,
            status: 0,
            bytes_in: Arc::new(AtomicU64::new(0)),
            bytes_out: 0,
            upstream_us: None,
            // Until something says otherwise, the exchange did not finish.
            error: Some("the request ended before a response was sent"),
            upstream_error: None,
            done: false,
        }
    }

    fn write(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let duration_us = self.started.elapsed().as_micros() as u64;
        self.metrics.request_duration().observe_us(duration_us);
        let ts = timestamp(SystemTime::now());
        let record = CompletionRecord {
            ts: &ts,
            gateway: &self.gateway,
            request_id: &self.request_id,
            exchange: &self.exchange,
            phase: "completion",
            status: self.status,
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out,
            duration_us,
            upstream_us: self.upstream_us,
            error: self.error,
            upstream_error: self.upstream_error.as_deref(),
        };
        self.sink.record_completion(record.to_json());
    }

    /// Records a response the gateway produced itself.
    pub fn finish(mut self, status: u16, bytes_out: u64) {
        self.status = status;
        self.bytes_out = bytes_out;
        self.error = None;
        self.write();
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.write();
    }
}

/// Counts the bytes of a request body as they stream upstream.
pub struct CountingBody<B> {
    inner: B,
    counter: Arc<AtomicU64>,
}

impl<B> CountingBody<B> {
    pub fn new(inner: B, counter: Arc<AtomicU64>) -> Self {
        CountingBody { inner, counter }
    }
}

impl<B> Body for CountingBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The upstream's response body on its way to the client; owns the completion hook.
pub struct ResponseBody<B> {
    inner: B,
    completion: Completion,
}

impl<B> ResponseBody<B> {
    pub fn new(inner: B, mut completion: Completion) -> Self
    where
        B: Body,
    {
        // hyper may never poll a body that is already complete (HEAD, 204, empty).
        completion.error = if inner.is_end_stream() {
            None
        } else {
            Some("the client went away before the end of the response")
        };
        ResponseBody { inner, completion }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.completion.bytes_out += data.len() as u64;
                }
                // hyper stops polling a body with a known length once it has it all.
                if this.inner.is_end_stream() {
                    this.completion.error = None;
                    this.completion.write();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.completion.error = Some("the upstream response body failed");
                this.completion.write();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.completion.error = None;
                this.completion.write();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How long a request with `Expect: 100-continue` waits for the upstream's go-ahead before
/// its body is sent anyway (as curl does), for upstreams that never answer 100.
pub const CONTINUE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Opened by the upstream's `100 Continue` (or its final answer, or a timeout). Until then the
/// client's body is not read, so hyper does not tell the client to send it: an upstream that
/// rejects a request from its headers (a bad signature) is heard by the client as such.
#[derive(Default)]
pub struct ContinueGate {
    open: std::sync::atomic::AtomicBool,
    aborted: std::sync::atomic::AtomicBool,
    waker: std::sync::Mutex<Option<std::task::Waker>>,
}

impl ContinueGate {
    pub fn open(&self) {
        self.open.store(true, Ordering::Release);
        self.wake();
    }

    /// The upstream answered before asking for the body: it will never get it, and the
    /// client is never told to send it.
    pub fn abort_if_closed(&self) {
        if !self.is_open() {
            self.aborted.store(true, Ordering::Release);
            self.wake();
        }
    }

    fn wake(&self) {
        if let Some(w) = self.waker.lock().ok().and_then(|mut w| w.take()) {
            w.wake();
        }
    }

    fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }
}

/// A request body held back until its gate opens.
pub struct GatedBody<B> {
    inner: B,
    gate: Arc<ContinueGate>,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<B> GatedBody<B> {
    pub fn new(inner: B, gate: Arc<ContinueGate>) -> Self {
        GatedBody {
            inner,
            gate,
            deadline: Box::pin(tokio::time::sleep(CONTINUE_TIMEOUT)),
        }
    }
}

impl<B> Body for GatedBody<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.gate.aborted.load(Ordering::Acquire) {
            return Poll::Ready(Some(Err(
                "the upstream answered before it asked for the body".into(),
            )));
        }
        if !this.gate.is_open() {
            if let Ok(mut w) = this.gate.waker.lock() {
                *w = Some(cx.waker().clone());
            }
            // Re-check after registering, so an open() in between is not missed.
            if !this.gate.is_open() && this.deadline.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.gate.open.store(true, Ordering::Release);
        }
        Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
