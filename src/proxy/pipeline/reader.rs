//! The response side of one upstream HTTP/1.1 connection, without I/O.
//!
//! One job: turn the bytes an upstream sent into the responses of the requests written to it,
//! strictly in order, and name every way those bytes disagree with the requests. The
//! connection task ([`super`]) owns the socket and the callers; it feeds this reader and obeys
//! its verdicts. Keeping the reader pure is what lets a property test and a fuzz target feed it
//! any byte stream against any queue of requests.
//!
//! Nothing here trusts the upstream. A misframed response on a shared connection is how one
//! caller ends up with another's bytes, so every sign of misframing is a [`Event::Fault`] that
//! ends the connection, and the caller that was being answered gets an error, not bytes:
//! - bytes while no request is outstanding (an unsolicited response, a body on a HEAD answer
//!   or bytes left over after a response, with nothing written behind it);
//! - a response head that does not parse, a `101` to a request that asked for no upgrade,
//!   framing that is ambiguous (RFC 9112 §6.3, strictly);
//! - a `408`: servers send it unsolicited on idle keep-alive connections, so on a connection
//!   where a request was just written it may answer nothing of ours;
//! - a body that ends before its length, or a chunked body that breaks its framing.
//!
//! What it cannot see: a response whose framing holds but carries bytes meant for a later
//! request (a `Content-Length` that is too long, swallowing the next response). Only a request
//! written behind can be hurt by that, which is why the pool lets only one principal's
//! requests share a pipelined connection.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, Version};
use std::mem::MaybeUninit;
use std::ops::Range;

/// Most header lines accepted in one response head.
pub const MAX_HEADERS: usize = 128;
/// Largest response head (and largest chunked trailer section) accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size line (size plus extensions) accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// What the reader needs to know of a request to frame its response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    Get,
    /// A HEAD answer has no body, whatever its headers say.
    Head,
}

/// One step of reading.
#[derive(Debug)]
pub enum Event {
    /// Nothing more can be read from the buffer: read from the socket (or call
    /// [`ResponseReader::eof`] when it ended).
    NeedMore,
    /// The final head of the response to the front request. Interim (1xx) heads are skipped.
    Head(Head),
    /// Body bytes of the current response.
    Data(Bytes),
    /// The current response is complete. `last`: the upstream said it is the last on this
    /// connection (`Connection: close`, HTTP/1.0, or a close-delimited body); stop reading.
    End { last: bool },
    /// The bytes disagree with the requests: end the connection. The response in progress
    /// (or the front request, if its head had not arrived) fails, and so do the requests
    /// written behind it.
    Fault(&'static str),
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// A final response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The last response on this connection.
    pub last: bool,
}

/// The reader of one connection. Feed it the connection's read buffer; it consumes what it
/// has understood.
#[derive(Debug, Default)]
pub struct ResponseReader {
    state: State,
}

#[derive(Debug, Default)]
enum State {
    /// Between responses.
    #[default]
    Head,
    /// Inside a body; `last` is whether this response ends the connection.
    Body { decoder: Decoder, last: bool },
    /// The upstream announced the end, or a fault was found: nothing more is read.
    Done,
}

impl ResponseReader {
    pub fn new() -> ResponseReader {
        ResponseReader::default()
    }

    /// The next event from `buf`. `waiting` names the oldest request written whose response
    /// head has not arrived (`None`: nothing is outstanding; the request being answered was
    /// taken off at its head). It is asked only between responses, so the caller's lock is
    /// not taken per body piece.
    pub fn next(
        &mut self,
        buf: &mut BytesMut,
        waiting: impl FnOnce() -> Option<RequestKind>,
    ) -> Event {
        match &mut self.state {
            State::Done => Event::NeedMore,
            State::Head => {
                if buf.is_empty() {
                    return Event::NeedMore;
                }
                let Some(front) = waiting() else {
                    return self.fault("bytes from the upstream with no request outstanding");
                };
                match read_head(buf, front) {
                    Ok(None) => Event::NeedMore,
                    Ok(Some(head)) => {
                        let decoder = match head.framing {
                            Framing::Empty => Decoder::Length(0),
                            Framing::Length(len) => Decoder::Length(len),
                            Framing::Chunked => Decoder::Chunked(ChunkDecoder::default()),
                            Framing::UntilClose => Decoder::UntilClose,
                        };
                        self.state = State::Body {
                            decoder,
                            last: head.last,
                        };
                        Event::Head(head)
                    }
                    Err(why) => self.fault(why),
                }
            }
            State::Body { decoder, last } => match decoder.next(buf) {
                Ok(Piece::Data(data)) => Event::Data(data),
                Ok(Piece::NeedMore) => Event::NeedMore,
                Ok(Piece::Done) => {
                    let last = *last;
                    if last {
                        self.state = State::Done;
                        return Event::End { last };
                    }
                    self.state = State::Head;
                    // Bytes already here belong to a response: to the request written behind,
                    // or, with none, to nobody. Left for the next call, which names them.
                    if !buf.is_empty() && waiting().is_none() {
                        return self.fault("bytes left over after a response");
                    }
                    Event::End { last }
                }
                Err(why) => self.fault(why),
            },
        }
    }

    /// The upstream closed its side. The event says whether that ended a response cleanly
    /// (a close-delimited body), broke one, or came between responses (`NeedMore`: nothing
    /// was lost, but nothing more will come).
    pub fn eof(&mut self, buf: &BytesMut) -> Event {
        match &self.state {
            State::Body {
                decoder: Decoder::UntilClose,
                ..
            } => {
                self.state = State::Done;
                Event::End { last: true }
            }
            State::Body { .. } => self.fault("the connection ended inside a response body"),
            State::Head if !buf.is_empty() => {
                self.fault("the connection ended inside a response head")
            }
            State::Head | State::Done => {
                self.state = State::Done;
                Event::NeedMore
            }
        }
    }

    /// Bytes of the current body still to come, when its length is known.
    pub fn body_left(&self) -> Option<u64> {
        match &self.state {
            State::Body { decoder, .. } => decoder.known_len(),
            State::Head | State::Done => None,
        }
    }

    /// Bytes left to read if the current body were discarded; `None`: unknown. A
    /// close-delimited body never pays: its connection ends anyway.
    pub fn discard_cost(&self) -> Option<u64> {
        match &self.state {
            State::Body { decoder, .. } => decoder.discard_cost(),
            State::Head | State::Done => None,
        }
    }

    /// The connection can carry no further response.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn fault(&mut self, why: &'static str) -> Event {
        self.state = State::Done;
        Event::Fault(why)
    }
}

/// Reads up to the final head at the front of `buf`, skipping interim (1xx) heads; `None`
/// while it is incomplete.
fn read_head(buf: &mut BytesMut, front: RequestKind) -> Result<Option<Head>, &'static str> {
    loop {
        if buf.is_empty() {
            return Ok(None);
        }
        match parse_head(buf)? {
            Parsed::Interim => continue,
            Parsed::Partial if buf.len() >= MAX_HEAD => return Err("response head too large"),
            Parsed::Partial => return Ok(None),
            Parsed::Final(raw) => {
                if raw.status == StatusCode::REQUEST_TIMEOUT {
                    // An idle-timeout notice may cross the request just written: it answers
                    // nothing of ours, and whatever follows it cannot be trusted.
                    return Err("the upstream sent 408 Request Timeout");
                }
                let framing = raw.framing(front == RequestKind::Head)?;
                let last = raw.is_last() || framing == Framing::UntilClose;
                return Ok(Some(Head {
                    status: raw.status,
                    version: raw.version,
                    headers: raw.headers,
                    framing,
                    last,
                }));
            }
        }
    }
}

impl Head {
    pub fn into_response<B>(self, body: B) -> Response<B> {
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        *response.version_mut() = self.version;
        *response.headers_mut() = self.headers;
        response
    }
}

enum Parsed {
    Final(RawHead),
    Interim,
    Partial,
}

struct RawHead {
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

/// Header name and value positions inside a response head.
#[derive(Clone, Copy, Default)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

/// Parses one response head off the front of `buf`. Header values share the read buffer
/// instead of being copied.
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
    // RFC 9110 §15 defines the classes 1xx to 5xx; `http` would take anything up to 999,
    // which no client can act on.
    if code >= 600 {
        return Err("status code outside 1xx to 5xx");
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
    Ok(Parsed::Final(RawHead {
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

impl RawHead {
    /// RFC 9112 §6.3, strict: anything a proxy could be smuggled through is malformed.
    fn framing(&self, head_request: bool) -> Result<Framing, &'static str> {
        if head_request
            || self.status == StatusCode::NO_CONTENT
            || self.status == StatusCode::NOT_MODIFIED
        {
            // Whatever the headers announce, no body follows; bytes that do are named by the
            // next read (a response that does not parse, or bytes nobody asked for).
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
}

#[derive(Debug)]
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

    fn discard_cost(&self) -> Option<u64> {
        match self {
            Decoder::Length(left) => Some(*left),
            Decoder::Chunked(_) => None,
            Decoder::UntilClose => Some(u64::MAX),
        }
    }
}

#[derive(Default, Debug)]
struct ChunkDecoder {
    state: ChunkState,
}

#[derive(Default, Clone, Copy, Debug)]
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

#[cfg(any(test, fuzzing))]
pub mod model;
#[cfg(test)]
mod tests;
