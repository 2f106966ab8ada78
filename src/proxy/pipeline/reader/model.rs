//! A model connection that drives a [`ResponseReader`] the way the connection task does, for
//! the property tests and the fuzz target (built with `cfg(test)` or `cfg(fuzzing)` only).
//!
//! [`one_at_a_time`] is the shape where a connection is shared by callers in turn: a request
//! is written only when the previous response is complete, and the upstream's bytes are
//! labelled with the request they were sent for. It checks the invariant the gateway relies
//! on: every byte the reader hands to a caller was sent for that caller's request, whatever
//! the upstream sends. Bytes an upstream sends before a request is written arrive before it
//! here; a real network may delay them past the write, which no HTTP/1.1 client can tell
//! apart, and why a pipelined connection carries one principal only.
//!
//! [`pipelined`] writes every request at once and checks that well-framed answers reach
//! their own callers in order, at any split of the byte stream.

use bytes::BytesMut;

use super::{Event, RequestKind, ResponseReader};

/// What a caller ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A whole response: status, headers as `name: value` lines, body.
    Response {
        status: u16,
        headers: Vec<String>,
        body: Vec<u8>,
    },
    /// An error instead of (the rest of) a response.
    Failed,
}

/// Who a byte on the wire was sent for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Label {
    Answer(usize),
    Unsolicited,
}

struct Wire {
    bytes: Vec<u8>,
    labels: Vec<Label>,
    /// Bytes moved into the reader's buffer so far.
    fed: usize,
}

impl Wire {
    fn new() -> Wire {
        Wire {
            bytes: Vec::new(),
            labels: Vec::new(),
            fed: 0,
        }
    }

    fn send(&mut self, bytes: &[u8], label: Label) {
        self.bytes.extend_from_slice(bytes);
        self.labels.extend(std::iter::repeat_n(label, bytes.len()));
    }

    /// Moves up to `chunk` bytes into `buf`; false when nothing was left.
    fn feed(&mut self, buf: &mut BytesMut, chunk: usize) -> bool {
        let end = (self.fed + chunk.max(1)).min(self.bytes.len());
        if end == self.fed {
            return false;
        }
        buf.extend_from_slice(&self.bytes[self.fed..end]);
        self.fed = end;
        true
    }

    /// Stream offset of the first byte still in `buf`.
    fn offset(&self, buf: &BytesMut) -> usize {
        self.fed - buf.len()
    }
}

/// Requests written one at a time, each only once the previous response is complete.
/// `answers[i]` is what the upstream sends once request `i` is written; `unsolicited[i]`
/// what it sends before that, while nothing is outstanding. Reads are `chunk` bytes. A
/// response that never completes (the upstream goes quiet) fails its caller, as the
/// gateway's timeout would; a fault or an announced close ends the connection and the
/// following requests go to a new one. Returns each caller's outcome, or the first byte
/// handed to a caller that was not sent for it.
pub fn one_at_a_time(
    answers: &[(RequestKind, Vec<u8>)],
    unsolicited: &[Vec<u8>],
    chunk: usize,
) -> Result<Vec<Outcome>, String> {
    let mut outcomes = Vec::with_capacity(answers.len());
    let mut wire = Wire::new();
    let mut reader = ResponseReader::new();
    let mut buf = BytesMut::new();
    for (i, (kind, answer)) in answers.iter().enumerate() {
        if reader.is_done() {
            wire = Wire::new();
            reader = ResponseReader::new();
            buf.clear();
        }
        // Before request i is written: whatever arrives is nobody's.
        if let Some(stray) = unsolicited.get(i) {
            wire.send(stray, Label::Unsolicited);
        }
        loop {
            match reader.next(&mut buf, || None) {
                Event::NeedMore if wire.feed(&mut buf, chunk) => {}
                Event::NeedMore => break,
                Event::Fault(_) => break,
                event => {
                    return Err(format!(
                        "before request {i}: {event:?} with nothing outstanding"
                    ))
                }
            }
        }
        if reader.is_done() {
            wire = Wire::new();
            reader = ResponseReader::new();
            buf.clear();
        }
        wire.send(answer, Label::Answer(i));
        let outcome = answer_one(&mut reader, &mut wire, &mut buf, chunk, i, *kind)?;
        if outcome == Outcome::Failed && !reader.is_done() {
            // A caller that gave up (a stalled body): the gateway drops the connection.
            reader = ResponseReader::new();
            wire = Wire::new();
            buf.clear();
        }
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// Reads request `i`'s response off the wire, checking every byte it takes was sent for `i`.
fn answer_one(
    reader: &mut ResponseReader,
    wire: &mut Wire,
    buf: &mut BytesMut,
    chunk: usize,
    i: usize,
    kind: RequestKind,
) -> Result<Outcome, String> {
    let mut waiting = Some(kind);
    let mut response: Option<(u16, Vec<String>, Vec<u8>)> = None;
    loop {
        let before = wire.offset(buf);
        let event = reader.next(buf, || waiting);
        let after = wire.offset(buf);
        if let Some(label) = wire.labels[before..after]
            .iter()
            .find(|label| **label != Label::Answer(i))
        {
            if !matches!(event, Event::Fault(_) | Event::NeedMore) {
                return Err(format!(
                    "request {i} was handed {event:?}, read from bytes sent as {label:?}"
                ));
            }
        }
        match event {
            Event::NeedMore => {
                if wire.feed(buf, chunk) {
                    continue;
                }
                return match reader.eof(buf) {
                    // The upstream went quiet: without a close this body never ends.
                    Event::NeedMore | Event::Fault(_) => Ok(Outcome::Failed),
                    Event::End { .. } if response.is_some() => Ok(finish(response)),
                    other => Err(format!("request {i}: {other:?} at the end of the stream")),
                };
            }
            Event::Head(head) => {
                if response.is_some() {
                    return Err(format!("request {i} was handed a second head"));
                }
                let status = head.status.as_u16();
                if !(200..600).contains(&status) || status == 408 {
                    return Err(format!("request {i} was handed a final status {status}"));
                }
                waiting = None;
                let headers = head
                    .headers
                    .iter()
                    .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v.as_bytes())))
                    .collect();
                response = Some((status, headers, Vec::new()));
            }
            Event::Data(data) => match &mut response {
                Some((_, _, body)) => body.extend_from_slice(&data),
                None => return Err(format!("request {i} was handed body bytes before a head")),
            },
            Event::End { .. } => {
                if response.is_none() {
                    return Err(format!("request {i}: a response ended before its head"));
                }
                return Ok(finish(response));
            }
            Event::Fault(_) => return Ok(Outcome::Failed),
        }
    }
}

fn finish(response: Option<(u16, Vec<String>, Vec<u8>)>) -> Outcome {
    match response {
        Some((status, headers, body)) => Outcome::Response {
            status,
            headers,
            body,
        },
        None => Outcome::Failed,
    }
}

/// Every request written at once, the answers back to back, read `chunk` bytes at a time.
/// Returns the outcomes of the callers answered before the reading stopped, in order: a
/// fault, or the end of the stream, leaves the rest unanswered.
pub fn pipelined(answers: &[(RequestKind, Vec<u8>)], chunk: usize) -> Vec<Outcome> {
    let mut wire = Wire::new();
    for (i, (_, answer)) in answers.iter().enumerate() {
        wire.send(answer, Label::Answer(i));
    }
    let mut reader = ResponseReader::new();
    let mut buf = BytesMut::new();
    let mut outcomes = Vec::with_capacity(answers.len());
    let mut next = 0usize;
    let mut response: Option<(u16, Vec<String>, Vec<u8>)> = None;
    loop {
        // The request whose head is awaited: the first not yet given a head.
        let waiting = answers
            .get(next + usize::from(response.is_some()))
            .map(|(kind, _)| *kind);
        match reader.next(&mut buf, || waiting) {
            Event::NeedMore if wire.feed(&mut buf, chunk) => {}
            Event::NeedMore => {
                if let Event::End { .. } = reader.eof(&buf) {
                    if response.is_some() {
                        outcomes.push(finish(response.take()));
                    }
                }
                break;
            }
            Event::Head(head) => {
                let headers = head
                    .headers
                    .iter()
                    .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v.as_bytes())))
                    .collect();
                response = Some((head.status.as_u16(), headers, Vec::new()));
            }
            Event::Data(data) => {
                if let Some((_, _, body)) = &mut response {
                    body.extend_from_slice(&data);
                }
            }
            Event::End { last } => {
                outcomes.push(finish(response.take()));
                next += 1;
                if last {
                    break;
                }
            }
            Event::Fault(_) => break,
        }
    }
    outcomes
}
