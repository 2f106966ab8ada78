use super::model::{one_at_a_time, pipelined, Outcome};
use super::*;
use proptest::prelude::*;

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

fn raw_head(raw: &str) -> RawHead {
    let mut buf = BytesMut::from(raw);
    match parse_head(&mut buf) {
        Ok(Parsed::Final(head)) => head,
        _ => panic!("head did not parse: {raw}"),
    }
}

#[test]
fn framing_rules() {
    let get = |raw: &str| raw_head(raw).framing(false);
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
        raw_head("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n").framing(true),
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
    assert!(raw_head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n").is_last());
    assert!(raw_head("HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\n\r\n").is_last());
    assert!(!raw_head("HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n").is_last());
}

/// Events of one whole read of `input` with `waiting` requests written.
fn events(input: &[u8], waiting: &[RequestKind]) -> Vec<String> {
    let mut reader = ResponseReader::new();
    let mut buf = BytesMut::from(input);
    let mut answered = 0usize;
    let mut out = Vec::new();
    let mut in_body = false;
    loop {
        let front = waiting.get(answered + usize::from(in_body)).copied();
        match reader.next(&mut buf, || front) {
            Event::NeedMore => {
                out.push("need-more".to_owned());
                return out;
            }
            Event::Head(head) => {
                in_body = true;
                out.push(format!("head {}", head.status.as_u16()));
            }
            Event::Data(data) => out.push(format!("data {}", String::from_utf8_lossy(&data))),
            Event::End { last } => {
                in_body = false;
                answered += 1;
                out.push(format!("end last={last}"));
                if last {
                    return out;
                }
            }
            Event::Fault(why) => {
                out.push(format!("fault: {why}"));
                return out;
            }
        }
    }
}

const GET: RequestKind = RequestKind::Get;
const HEAD: RequestKind = RequestKind::Head;

#[test]
fn bytes_with_nothing_outstanding_are_a_fault() {
    assert_eq!(
        events(b"HTTP/1.1 408 Request Timeout\r\n\r\n", &[]),
        ["fault: bytes from the upstream with no request outstanding"]
    );
    assert_eq!(
        events(b"x", &[]),
        ["fault: bytes from the upstream with no request outstanding"]
    );
    // Nothing at all is no fault.
    assert_eq!(events(b"", &[]), ["need-more"]);
}

#[test]
fn a_408_answers_nothing() {
    assert_eq!(
        events(
            b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n",
            &[GET]
        ),
        ["fault: the upstream sent 408 Request Timeout"]
    );
}

#[test]
fn bytes_left_over_with_nothing_written_behind_are_a_fault() {
    let extra = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfake";
    assert_eq!(
        events(extra, &[GET]),
        [
            "head 200",
            "data ok",
            "fault: bytes left over after a response"
        ]
    );
    // With a request written behind, the same bytes are its answer.
    assert_eq!(
        events(extra, &[GET, GET]),
        [
            "head 200",
            "data ok",
            "end last=false",
            "head 200",
            "data fake",
            "end last=false",
            "need-more"
        ]
    );
}

#[test]
fn a_body_on_a_head_answer_is_a_fault_unless_a_response_follows() {
    let head_with_body = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    assert_eq!(
        events(head_with_body, &[HEAD]),
        ["head 200", "fault: bytes left over after a response"]
    );
    // Behind it, `hello` is read as the next response's head, which it is not.
    assert_eq!(
        events(head_with_body, &[HEAD, GET]),
        ["head 200", "end last=false", "fault: invalid response head"]
    );
    assert_eq!(
        events(b"HTTP/1.1 204 No Content\r\n\r\nxyz", &[GET]),
        ["head 204", "fault: bytes left over after a response"]
    );
}

#[test]
fn interim_heads_are_skipped_and_101_is_a_fault() {
    assert_eq!(
        events(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA",
            &[GET]
        ),
        ["head 200", "data A", "end last=false", "need-more"]
    );
    assert_eq!(
        events(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", &[GET]),
        ["fault: unexpected 101 Switching Protocols"]
    );
}

#[test]
fn a_status_outside_the_http_classes_is_a_fault() {
    // Found by the pipeline_reader fuzz target: `http` accepts 600 to 999.
    for status in ["600", "999"] {
        let raw = format!("HTTP/1.1 {status} OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(
            events(raw.as_bytes(), &[GET]),
            ["fault: status code outside 1xx to 5xx"]
        );
    }
    let crash = include_bytes!("../../../../fuzz/corpus/pipeline_reader/crash-status-600");
    let (chunk, rest) = crash.split_first().expect("input");
    let answers: Vec<_> = rest
        .split(|b| *b == 0xFF)
        .filter_map(|part| part.split_first())
        .map(|(control, answer)| {
            let kind = if control & 1 == 1 { HEAD } else { GET };
            (kind, answer.to_vec())
        })
        .collect();
    assert!(one_at_a_time(&answers, &[], usize::from(chunk % 97) + 1).is_ok());
}

#[test]
fn an_announced_close_ends_reading_and_ignores_what_follows() {
    assert_eq!(
        events(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nAgarbage",
            &[GET, GET]
        ),
        ["head 200", "data A", "end last=true"]
    );
}

#[test]
fn the_end_of_the_stream_inside_a_response_is_a_fault() {
    let mut reader = ResponseReader::new();
    let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc"[..]);
    assert!(matches!(
        reader.next(&mut buf, || Some(GET)),
        Event::Head(_)
    ));
    assert!(matches!(reader.next(&mut buf, || None), Event::Data(_)));
    assert!(matches!(reader.next(&mut buf, || None), Event::NeedMore));
    assert!(matches!(reader.eof(&buf), Event::Fault(_)));
    // A close-delimited body ends cleanly at the end of the stream.
    let mut reader = ResponseReader::new();
    let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\n\r\nabc"[..]);
    assert!(matches!(
        reader.next(&mut buf, || Some(GET)),
        Event::Head(_)
    ));
    assert!(matches!(reader.next(&mut buf, || None), Event::Data(_)));
    assert!(matches!(reader.eof(&buf), Event::End { last: true }));
}

/// A well-framed answer to request `i` (its id in a header and throughout its body), in one
/// of the framings an upstream may use.
fn well_framed(i: usize, kind: RequestKind, shape: u8, split: usize, last: bool) -> Vec<u8> {
    let body: Vec<u8> = format!("<{i}>").repeat(split % 9 + 1).into_bytes();
    let close = if last { "Connection: close\r\n" } else { "" };
    let interim = if shape % 5 == 4 {
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n"
    } else {
        ""
    };
    let mut out = interim.as_bytes().to_vec();
    match (kind, shape % 4) {
        (RequestKind::Head, _) => out.extend(
            format!(
                "HTTP/1.1 200 OK\r\nx-id: {i}\r\n{close}Content-Length: {}\r\n\r\n",
                body.len()
            )
            .bytes(),
        ),
        (_, 0) => {
            out.extend(
                format!(
                    "HTTP/1.1 200 OK\r\nx-id: {i}\r\n{close}Content-Length: {}\r\n\r\n",
                    body.len()
                )
                .bytes(),
            );
            out.extend(&body);
        }
        (_, 1) => {
            out.extend(
                format!(
                    "HTTP/1.1 200 OK\r\nx-id: {i}\r\n{close}Transfer-Encoding: chunked\r\n\r\n"
                )
                .bytes(),
            );
            let cut = split % (body.len() + 1);
            for piece in [&body[..cut], &body[cut..]] {
                if !piece.is_empty() {
                    out.extend(format!("{:x};e=1\r\n", piece.len()).bytes());
                    out.extend(piece);
                    out.extend(b"\r\n");
                }
            }
            out.extend(format!("0\r\nx-trailer: {i}\r\n\r\n").bytes());
        }
        (_, 2) => {
            out.extend(format!("HTTP/1.1 204 No Content\r\nx-id: {i}\r\n{close}\r\n").bytes())
        }
        _ => out.extend(
            format!("HTTP/1.1 304 Not Modified\r\nx-id: {i}\r\n{close}Content-Length: 7\r\n\r\n")
                .bytes(),
        ),
    }
    out
}

fn expected_body(i: usize, kind: RequestKind, shape: u8, split: usize) -> Vec<u8> {
    match (kind, shape % 4) {
        (RequestKind::Head, _) | (_, 2) | (_, 3) => Vec::new(),
        _ => format!("<{i}>").repeat(split % 9 + 1).into_bytes(),
    }
}

fn kind_of(head: bool) -> RequestKind {
    if head {
        RequestKind::Head
    } else {
        RequestKind::Get
    }
}

/// One hostile or well-framed answer for request `i`.
fn answer(i: usize, kind: RequestKind, mode: u8, noise: &[u8]) -> Vec<u8> {
    let good = well_framed(i, kind, mode, noise.len(), false);
    let mut out = Vec::new();
    match mode % 8 {
        // Well framed.
        0 | 1 => out = good,
        // A second response after the first.
        2 => {
            out = good;
            out.extend(well_framed(i, RequestKind::Get, 0, 3, false));
        }
        // A length longer than the body.
        3 => {
            out.extend(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                    noise.len() + 10
                )
                .bytes(),
            );
            out.extend(noise);
        }
        // A body on a HEAD answer (or extra bytes after any answer).
        4 => {
            out = good;
            out.extend(noise);
        }
        // A 408, then a real-looking answer.
        5 => {
            out.extend(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n");
            out.extend(good);
        }
        // Arbitrary bytes.
        6 => out.extend(noise),
        // A good answer cut short.
        _ => {
            out = good;
            out.truncate(noise.len() % (out.len() + 1));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    /// Well-framed answers, all requests written at once: every caller gets exactly its own
    /// response, at any split of the stream.
    #[test]
    fn pipelined_well_framed_answers_reach_their_own_callers(
        shapes in prop::collection::vec((any::<bool>(), any::<u8>(), 0usize..40), 1..12),
        chunk in 1usize..64,
        close_last in any::<bool>(),
    ) {
        let n = shapes.len();
        let answers: Vec<(RequestKind, Vec<u8>)> = shapes
            .iter()
            .enumerate()
            .map(|(i, (head, shape, split))| {
                let kind = kind_of(*head);
                (kind, well_framed(i, kind, *shape, *split, close_last && i + 1 == n))
            })
            .collect();
        let outcomes = pipelined(&answers, chunk);
        prop_assert_eq!(outcomes.len(), n, "{:?}", outcomes);
        for (i, ((head, shape, split), outcome)) in shapes.iter().zip(&outcomes).enumerate() {
            let Outcome::Response { headers, body, .. } = outcome else {
                panic!("request {i} failed: {outcomes:?}");
            };
            prop_assert!(headers.contains(&format!("x-id: {i}")), "{i}: {headers:?}");
            prop_assert_eq!(body, &expected_body(i, kind_of(*head), *shape, *split));
        }
    }

    /// Callers in turn on one connection, the upstream free to send anything: no caller is
    /// ever handed a byte that was not sent for its own request.
    #[test]
    fn one_at_a_time_no_caller_gets_bytes_sent_for_another(
        plan in prop::collection::vec(
            (any::<bool>(), any::<u8>(), prop::collection::vec(any::<u8>(), 0..48),
             prop::option::weighted(0.2, prop::collection::vec(any::<u8>(), 1..24))),
            1..10,
        ),
        chunk in 1usize..80,
    ) {
        let answers: Vec<(RequestKind, Vec<u8>)> = plan
            .iter()
            .enumerate()
            .map(|(i, (head, mode, noise, _))| {
                let kind = kind_of(*head);
                (kind, answer(i, kind, *mode, noise))
            })
            .collect();
        let unsolicited: Vec<Vec<u8>> =
            plan.iter().map(|(.., stray)| stray.clone().unwrap_or_default()).collect();
        let outcomes = one_at_a_time(&answers, &unsolicited, chunk);
        prop_assert!(outcomes.is_ok(), "{:?}", outcomes.err());
        // A well-framed answer is delivered whatever came before it: a connection the
        // upstream broke is replaced, not trusted.
        for (i, ((head, mode, noise, _), outcome)) in
            plan.iter().zip(outcomes.unwrap()).enumerate()
        {
            if mode % 8 < 2 {
                let Outcome::Response { headers, body, .. } = &outcome else {
                    panic!("a well-framed answer to {i} failed");
                };
                prop_assert!(headers.contains(&format!("x-id: {}", i)), "{}: {:?}", i, headers);
                prop_assert_eq!(body, &expected_body(i, kind_of(*head), *mode, noise.len()));
            }
        }
    }
}
