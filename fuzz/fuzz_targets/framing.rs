//! The request framing watcher (src/proxy/framing.rs): which requests on a connection carry
//! conflicting framing (both `Content-Length` and `Transfer-Encoding`, or framing it cannot
//! follow).
//!
//! Input: one split plan byte, then the bytes a client sends on one connection.
//!
//! Property, beyond not panicking: the requests flagged are the same however the stream is
//! cut into reads (all at once, the plan's cuts, one byte at a time): TCP may deliver any cut,
//! so a verdict that depends on one lets a client choose it.
#![no_main]

use std::sync::Arc;

use gatehouse::proxy::framing::{FramingFlags, Tracker};
use libfuzzer_sys::fuzz_target;

/// More than any input here can hold requests for.
const ASKED: usize = 64;

/// Feeds `pieces` to a fresh watcher; the requests the handler would refuse, asking once per
/// request as it does.
fn flagged<'a>(pieces: impl Iterator<Item = &'a [u8]>) -> Vec<bool> {
    let flags = Arc::new(FramingFlags::default());
    let mut tracker = Tracker::new(flags.clone());
    for piece in pieces {
        tracker.feed(piece);
    }
    (0..ASKED)
        .map(|_| flags.take_request_conflicted())
        .collect()
}

/// Cuts `stream` into pieces whose lengths follow `plan` (1 to 16 bytes, then repeating).
fn cut(stream: &[u8], plan: u8) -> Vec<&[u8]> {
    let mut pieces = Vec::new();
    let mut rest = stream;
    let mut step = u32::from(plan);
    while !rest.is_empty() {
        let len = ((step % 16) as usize + 1).min(rest.len());
        pieces.push(&rest[..len]);
        rest = &rest[len..];
        step = step.wrapping_mul(31).wrapping_add(7);
    }
    pieces
}

fuzz_target!(|data: &[u8]| {
    let Some((&plan, stream)) = data.split_first() else {
        return;
    };
    let whole = flagged(std::iter::once(stream));
    assert_eq!(
        flagged(cut(stream, plan).into_iter()),
        whole,
        "cut by plan {plan}, the stream is flagged differently"
    );
    if stream.len() <= 2048 {
        assert_eq!(
            flagged(stream.chunks(1)),
            whole,
            "byte by byte, the stream is flagged differently"
        );
    }
});
