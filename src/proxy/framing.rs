//! Watches the HTTP/1.1 byte stream for requests that carry both `Content-Length` and
//! `Transfer-Encoding`.
//!
//! hyper resolves such a request by itself (it drops `Content-Length`), so the handler can no
//! longer see the conflict; but two parsers reading one request differently is how request
//! smuggling starts, and the gateway's contract is to refuse it. This watcher follows the
//! request framing (heads, fixed-length and chunked bodies) on the bytes hyper reads and
//! notes the ordinal of the first conflicting request; the handler refuses that request and
//! every later one on the connection. It never changes a byte.
//!
//! Heads are read with httparse, the parser hyper itself uses, so both agree on where a head
//! ends (bare `\n` line endings included); bodies follow hyper's strict chunked rules.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Heads, chunk-size lines and trailer sections larger than this are not followed: the
/// request is refused (fail closed).
pub const MAX_HEAD: usize = 64 * 1024;
/// More header lines than this and the request is refused; hyper's own limit is 100.
const MAX_HEADERS: usize = 128;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the watcher found, shared with the handler of each request on the connection.
#[derive(Debug)]
pub struct FramingFlags {
    first_conflict: AtomicU64,
    next_request: AtomicU64,
}

impl Default for FramingFlags {
    fn default() -> Self {
        FramingFlags {
            first_conflict: AtomicU64::new(u64::MAX),
            next_request: AtomicU64::new(0),
        }
    }
}

impl FramingFlags {
    /// Called once per request, in order: whether this request (or an earlier one on the
    /// same connection) carried conflicting framing headers.
    pub fn take_request_conflicted(&self) -> bool {
        let ordinal = self.next_request.fetch_add(1, Ordering::Relaxed);
        ordinal >= self.first_conflict.load(Ordering::Acquire)
    }

    fn mark(&self, ordinal: u64) {
        self.first_conflict.fetch_min(ordinal, Ordering::AcqRel);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Fixed(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd(u8),
    Trailers,
    /// Not following any more (HTTP/2 preface, an oversized or unparseable head).
    Off,
}

/// The pure state machine: feed it bytes as they are read.
#[derive(Debug)]
pub struct Tracker {
    state: State,
    line: Vec<u8>,
    ordinal: u64,
    flags: Arc<FramingFlags>,
}

impl Tracker {
    pub fn new(flags: Arc<FramingFlags>) -> Tracker {
        Tracker {
            state: State::Head,
            line: Vec::new(),
            ordinal: 0,
            flags,
        }
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Off => return,
                State::Fixed(n) => {
                    let take = (n as usize).min(data.len());
                    data = &data[take..];
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Fixed(left)
                    };
                }
                State::ChunkData(n) => {
                    let take = (n as usize).min(data.len());
                    data = &data[take..];
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        State::ChunkDataEnd(2)
                    } else {
                        State::ChunkData(left)
                    };
                }
                State::ChunkDataEnd(n) => {
                    let take = (n as usize).min(data.len());
                    data = &data[take..];
                    let left = n - take as u8;
                    self.state = if left == 0 {
                        State::ChunkSize
                    } else {
                        State::ChunkDataEnd(left)
                    };
                }
                State::Head => data = self.feed_head(data),
                State::ChunkSize | State::Trailers => data = self.feed_line_state(data),
            }
        }
    }

    /// Accumulates a request head until httparse says it is complete.
    fn feed_head<'d>(&mut self, data: &'d [u8]) -> &'d [u8] {
        let start = self.line.len();
        self.line.extend_from_slice(data);
        // An h2 prior-knowledge connection: its own framing, nothing to follow.
        let n = self.line.len().min(H2_PREFACE.len());
        if self.ordinal == 0 && self.line[..n] == H2_PREFACE[..n] {
            if n == H2_PREFACE.len() {
                self.state = State::Off;
            }
            return &[];
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&self.line) {
            // The limit holds however the head arrived: one large read must not pass a head
            // that the same bytes in small reads would have refused.
            Ok(httparse::Status::Complete(end)) if end <= MAX_HEAD => {
                let framing = Framing::of(&request);
                self.line.clear();
                self.head(framing);
                &data[end - start..]
            }
            Ok(httparse::Status::Partial) if self.line.len() <= MAX_HEAD => &[],
            // Too large (MAX_HEAD is below hyper's own limit, so this refuses heads hyper
            // would take), too many headers, or unparseable.
            _ => {
                self.give_up();
                &[]
            }
        }
    }

    /// Accumulates a chunk-size line or the trailer section until it ends.
    fn feed_line_state<'d>(&mut self, data: &'d [u8]) -> &'d [u8] {
        let start = self.line.len();
        let terminator: &[u8] = if self.state == State::ChunkSize {
            b"\r\n"
        } else {
            b"\r\n\r\n"
        };
        self.line.extend_from_slice(data);
        let search_from = start.saturating_sub(terminator.len() - 1);
        match find(&self.line[search_from..], terminator) {
            Some(pos) if search_from + pos + terminator.len() <= MAX_HEAD => {
                let end = search_from + pos + terminator.len();
                let used = end - start;
                let block = std::mem::take(&mut self.line);
                self.complete(&block[..end]);
                &data[used..]
            }
            Some(_) => {
                self.give_up();
                &[]
            }
            None => {
                if self.line.len() > MAX_HEAD {
                    self.give_up();
                }
                &[]
            }
        }
    }

    fn complete(&mut self, block: &[u8]) {
        match self.state {
            State::ChunkSize => {
                let digits: Vec<u8> = block
                    .iter()
                    .copied()
                    .take_while(|b| b.is_ascii_hexdigit())
                    .collect();
                let size = std::str::from_utf8(&digits)
                    .ok()
                    .and_then(|s| u64::from_str_radix(s, 16).ok());
                self.state = match size {
                    Some(0) => {
                        // The CRLF that ended the size line also starts the trailer block,
                        // so "\r\n\r\n" ends both an empty and a non-empty trailer section.
                        self.line.extend_from_slice(b"\r\n");
                        State::Trailers
                    }
                    Some(n) => State::ChunkData(n),
                    None => {
                        self.give_up();
                        State::Off
                    }
                };
            }
            State::Trailers => self.finish_message(),
            _ => {}
        }
    }

    fn finish_message(&mut self) {
        self.state = State::Head;
    }

    /// Framing we cannot follow: fail closed, refusing the request being read and everything
    /// after it on this connection (hyper refuses most of these itself anyway).
    fn give_up(&mut self) {
        let current = if self.state == State::Head {
            self.ordinal
        } else {
            self.ordinal.saturating_sub(1)
        };
        self.flags.mark(current);
        self.state = State::Off;
        self.line = Vec::new();
    }

    fn head(&mut self, f: Framing) {
        let ordinal = self.ordinal;
        self.ordinal += 1;
        if f.has_cl && f.has_te {
            self.flags.mark(ordinal);
        }
        self.state = match (f.has_te, f.chunked, f.has_cl, f.content_length) {
            (true, true, _, _) => State::ChunkSize,
            (false, _, false, _) | (false, _, true, Some(0)) => State::Head,
            (false, _, true, Some(n)) => State::Fixed(n),
            // A transfer coding other than chunked, or an unreadable length.
            _ => {
                self.flags.mark(ordinal);
                State::Off
            }
        };
    }
}

/// What a request head says about its body.
struct Framing {
    has_cl: bool,
    content_length: Option<u64>,
    has_te: bool,
    chunked: bool,
}

impl Framing {
    fn of(request: &httparse::Request<'_, '_>) -> Framing {
        let mut f = Framing {
            has_cl: false,
            content_length: None,
            has_te: false,
            chunked: false,
        };
        for h in request.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                f.has_cl = true;
                f.content_length = std::str::from_utf8(trim(h.value))
                    .ok()
                    .and_then(|v| v.parse().ok());
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                // Like hyper: the last coding of the last Transfer-Encoding line decides.
                f.has_te = true;
                f.chunked = h
                    .value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|last| trim(last).eq_ignore_ascii_case(b"chunked"));
            }
        }
        f
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The connection's byte stream, read through the tracker.
pub struct Watched<T> {
    inner: T,
    tracker: Tracker,
}

impl<T> Watched<T> {
    pub fn new(inner: T, flags: Arc<FramingFlags>) -> Self {
        Watched {
            inner,
            tracker: Tracker::new(flags),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.tracker.feed(&buf.filled()[before..]);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` in pieces of `step` bytes; returns the ordinals of the requests the
    /// handler would refuse, asking once per request as the handler does.
    fn flagged(stream: &[u8], step: usize, requests: u64) -> Vec<u64> {
        let flags = Arc::new(FramingFlags::default());
        let mut t = Tracker::new(flags.clone());
        for piece in stream.chunks(step) {
            t.feed(piece);
        }
        (0..requests)
            .filter(|_| flags.take_request_conflicted())
            .collect()
    }

    const CLEAN_FIXED: &[u8] = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello";
    const CLEAN_CHUNKED: &[u8] =
        b"POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n";
    const CLEAN_GET: &[u8] = b"\r\nGET /c HTTP/1.1\r\nHost: h\r\n\r\n";
    const CONFLICT: &[u8] =
        b"POST /d HTTP/1.1\r\nHost: h\r\ncontent-length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    #[test]
    fn clean_pipelined_requests_are_not_flagged_at_any_split() {
        let stream = [CLEAN_FIXED, CLEAN_CHUNKED, CLEAN_GET, CLEAN_FIXED].concat();
        for step in [1, 2, 3, 7, 64, stream.len()] {
            assert!(flagged(&stream, step, 4).is_empty(), "step {step}");
        }
    }

    #[test]
    fn a_conflict_is_found_behind_any_framing_at_any_split() {
        let stream = [CLEAN_FIXED, CLEAN_CHUNKED, CLEAN_GET, CONFLICT, CLEAN_GET].concat();
        for step in [1, 2, 5, 13, stream.len()] {
            // Request 3 conflicts; it and everything after it are refused.
            assert_eq!(flagged(&stream, step, 5), vec![3, 4], "step {step}");
        }
    }

    #[test]
    fn an_oversized_head_or_bad_chunk_fails_closed() {
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_HEAD + 1));
        assert_eq!(flagged(&[CLEAN_GET, &huge].concat(), 4096, 2), vec![1]);
        let bad = b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert_eq!(flagged(bad, 3, 1), vec![0]);
        let gzip = b"POST /b HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n";
        assert_eq!(flagged(gzip, 3, 1), vec![0]);
    }

    #[test]
    fn a_head_or_chunk_line_over_the_limit_is_refused_however_it_arrives() {
        // One read used to follow a complete head (or trailer block) of any size that a
        // series of small reads refused: the verdict must not depend on how TCP cuts it.
        let padding = "a".repeat(MAX_HEAD);
        let big_head = format!("GET / HTTP/1.1\r\nX: {padding}\r\n\r\n");
        let big_trailer = format!(
            "POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: {padding}\r\n\r\n"
        );
        let big_chunk_line = format!(
            "POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;{padding}\r\nx\r\n0\r\n\r\n"
        );
        for big in [big_head, big_trailer, big_chunk_line] {
            let stream = [big.as_bytes(), CLEAN_GET].concat();
            for step in [1024, MAX_HEAD + 1, stream.len()] {
                assert_eq!(flagged(&stream, step, 2), vec![0, 1], "step {step}");
            }
        }
    }

    #[test]
    fn bare_lf_heads_are_followed_like_hyper_follows_them() {
        let conflict = b"POST /d HTTP/1.1\nHost: h\nContent-Length: 5\nTransfer-Encoding: chunked\n\n0\r\n\r\n";
        let clean = b"POST /a HTTP/1.1\nHost: h\nContent-Length: 5\n\nhello";
        for step in [1, 3, 200] {
            assert_eq!(flagged(conflict, step, 1), vec![0], "step {step}");
            assert!(flagged(&[&clean[..], CLEAN_GET].concat(), step, 2).is_empty());
            // A body that looks like headers is a body, not more head.
            let tricky = [
                &b"POST /a HTTP/1.1\nHost: h\nContent-Length: 40\n\n"[..],
                b"\r\nContent-Length: 99999999\r\n\r\n12345678",
                CONFLICT,
            ]
            .concat();
            assert_eq!(flagged(&tricky, step, 2), vec![1], "step {step}");
        }
    }

    #[test]
    fn http2_prior_knowledge_switches_the_watch_off() {
        let stream = [&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..], CONFLICT].concat();
        assert!(flagged(&stream, 4, 2).is_empty());
    }
}
