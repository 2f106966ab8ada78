//! Writes a synthetic trail through the real writer (chain, segments, signed digests) for
//! measuring `gatehouse audit query`, `lineage` and `verify` on a trail of realistic size.
//!
//!   cargo run --release --example synthetic_trail -- DIR RECORDS [SIGNING_KEY]
//!
//! Each request is a decision and a completion record shaped like the gateway's own, spread
//! over 200 principals, 3 workspaces and 5 000 assets, one in five denied.

use std::time::{Duration, SystemTime};

use gatehouse::audit::{timestamp, AuditSink};
use gatehouse::config::{AuditConfig, Durability};

const ACTIONS: &[(&str, &str, &str)] = &[
    ("clusters.list", "metadata", "allow"),
    ("dbfs.read", "download", "deny"),
    ("sql.statements.execute", "execute", "allow"),
    ("workspace.list", "metadata", "allow"),
    ("files.upload", "upload", "allow"),
];

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, records, rest @ ..] = args.as_slice() else {
        return Err("usage: synthetic_trail DIR RECORDS [SIGNING_KEY]".into());
    };
    let records: u64 = records.parse().map_err(|_| "RECORDS is a number")?;
    let config = AuditConfig {
        dir: dir.into(),
        durability: Durability::None,
        signing_key: rest.first().map(Into::into),
        queue_capacity: 65_536,
        segment_max_bytes: 64 * 1024 * 1024,
        segment_max_age: Duration::from_secs(3600),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| e.to_string())?;
    let (sink, handle) = AuditSink::open(&config, "gw-synth").map_err(|e| e.to_string())?;
    let start = SystemTime::now() - Duration::from_secs(records / 2);
    rt.block_on(async {
        for n in 0..records / 2 {
            let ts = timestamp(start + Duration::from_secs(n));
            let principal = format!("user{}@bank.example", n % 200);
            let workspace = ["prod-analytics", "prod-parallel", "lab"][(n % 3) as usize];
            let (action, category, effect) = ACTIONS[(n % 5) as usize];
            let asset = format!("dbfs:/mnt/data/table{}/part-{}.parquet", n % 50, n % 100);
            let decision = format!(
                r#"{{"ts":"{ts}","gateway":"gw-synth","request_id":"r-{n}","exchange":"x-{n}","phase":"decision","client":{{"addr":"10.1.2.3:51234","cert_subject":null}},"principal":{{"id":"{principal}","type":"user","groups":["data-scientists"],"auth":"jwt"}},"workspace":"{workspace}","request":{{"method":"GET","host":"analytics.dbx.example","path":"/api/2.0/x","query":""}},"action":{{"name":"{action}","category":"{category}"}},"asset":{{"kind":"dbfs","path":"{asset}"}},"decision":{{"effect":"{effect}","rule":"synthetic","reason":"synthetic","exception":null}}}}"#
            );
            let status = if effect == "deny" { 403 } else { 200 };
            let completion = format!(
                r#"{{"ts":"{ts}","gateway":"gw-synth","request_id":"r-{n}","exchange":"x-{n}","phase":"completion","status":{status},"bytes_in":0,"bytes_out":{},"duration_us":900,"upstream_us":700,"error":null}}"#,
                n % 4096
            );
            // A full queue only means the writer is behind: wait for it, lose nothing.
            while sink.record_decision(decision.clone().into_bytes()).await.is_err() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            while sink.record_event(completion.clone().into_bytes()).is_err() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    drop(sink);
    handle.join();
    eprintln!("wrote {records} records to {dir}");
    Ok(())
}
