//! The pipelined client's response reader (src/proxy/pipeline/reader.rs), driven by its model
//! connection (reader/model.rs) the way the connection task drives it.
//!
//! Input: a read-size byte, then requests separated by 0xFF. Each request starts with a
//! control byte (bit 0: HEAD; bit 1: the upstream first sends unsolicited bytes, up to the
//! first 0xFE) followed by what the upstream sends once the request is written.
//!
//! Properties, beyond not panicking:
//! - callers in turn: no caller is ever handed a byte that was not sent for its own request,
//!   whatever the upstream sends, before, during or after (`model::one_at_a_time`);
//! - all written at once: the same answers read pipelined never hand a caller more responses
//!   than were asked for, and a fault ends the reading (`model::pipelined`).
#![no_main]

use gatehouse::proxy::pipeline::reader::model::{one_at_a_time, pipelined};
use gatehouse::proxy::pipeline::reader::RequestKind;
use libfuzzer_sys::fuzz_target;

const MOST_REQUESTS: usize = 16;

fuzz_target!(|data: &[u8]| {
    let Some((&read_size, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(read_size % 97) + 1;
    let mut answers = Vec::new();
    let mut unsolicited = Vec::new();
    for part in rest.split(|b| *b == 0xFF).take(MOST_REQUESTS) {
        let Some((&control, body)) = part.split_first() else {
            continue;
        };
        let kind = if control & 1 == 1 {
            RequestKind::Head
        } else {
            RequestKind::Get
        };
        let (stray, answer) = if control & 2 == 2 {
            match body.iter().position(|b| *b == 0xFE) {
                Some(at) => (&body[..at], &body[at + 1..]),
                None => (body, &[][..]),
            }
        } else {
            (&[][..], body)
        };
        unsolicited.push(stray.to_vec());
        answers.push((kind, answer.to_vec()));
    }
    if let Err(violation) = one_at_a_time(&answers, &unsolicited, chunk) {
        panic!("{violation}");
    }
    let outcomes = pipelined(&answers, chunk);
    assert!(outcomes.len() <= answers.len(), "more responses than requests");
});
