//! Writes a synthetic trail through the real writer (chain, segments, signed digests) for
//! measuring `gatehouse audit query`, `lineage` and `verify` on a trail of realistic size.
//!
//!   cargo run --release --example synthetic_trail -- DIR RECORDS [SIGNING_KEY]
//!
//! Each request is a decision and a completion record shaped like the gateway's own, spread
//! over 200 principals, 3 workspaces and 5 000 assets, one in five denied
//! (`gatehouse::testing::synthetic_trail`).

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, records, rest @ ..] = args.as_slice() else {
        return Err("usage: synthetic_trail DIR RECORDS [SIGNING_KEY]".into());
    };
    let records: u64 = records.parse().map_err(|_| "RECORDS is a number")?;
    gatehouse::testing::synthetic_trail(
        std::path::Path::new(dir),
        records,
        rest.first().map(Into::into),
    )?;
    eprintln!("wrote {records} records to {dir}");
    Ok(())
}
