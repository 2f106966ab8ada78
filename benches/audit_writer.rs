//! Audit writer throughput with the hash chain, per durability mode: records per second when
//! many requests hand over decision records at once (as under load) and each waits for its
//! own as the request path does. `group` must sustain far more than the gateway's request
//! rate (two records per request), or the trail would be the bottleneck.
//! Run: `cargo bench --bench audit_writer`. Files go to target/tmp (a real disk, not tmpfs).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gatehouse::audit::AuditSink;
use gatehouse::config::{AuditConfig, Durability};

/// A decision record of realistic size (~700 bytes once sealed).
fn record(n: usize) -> Vec<u8> {
    format!(
        r#"{{"ts":"2026-11-27T05:41:08.123456Z","gateway":"gw-bench","request_id":"bench-{n}","exchange":"x-{n}","phase":"decision","client":{{"addr":"10.1.2.3:51234","cert_subject":null}},"principal":{{"id":"alice@bank.example","type":"user","groups":["data-scientists"],"auth":"jwt"}},"workspace":"prod-analytics","request":{{"method":"GET","host":"analytics.dbx.example","path":"/api/2.0/dbfs/read","query":"path=%2Ftmp%2Fcustomers.csv&offset=0"}},"action":{{"name":"dbfs.read","category":"download"}},"asset":{{"kind":"dbfs","path":"dbfs:/tmp/customers.csv"}},"decision":{{"effect":"deny","rule":"downloads.blocked","reason":"downloads are blocked","exception":null}}}}"#
    )
    .into_bytes()
}

/// `records` records from `writers` concurrent producers, each awaiting its own record.
async fn push(sink: &Arc<AuditSink>, writers: usize, records: usize) {
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        let sink = sink.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..records).step_by(writers) {
                sink.record_decision(record(i))
                    .await
                    .expect("the writer takes it");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

fn writer_throughput(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let base = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("audit-writer-bench");
    let _ = std::fs::remove_dir_all(&base);
    let mut group = c.benchmark_group("audit_writer");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    // `every` pays one fsync per record; fewer records keep its run short.
    for (mode, durability, records) in [
        ("none", Durability::None, 20_000),
        ("group", Durability::Group, 20_000),
        ("every", Durability::Every, 500),
    ] {
        let config = AuditConfig {
            dir: base.join(mode),
            durability,
            signing_key: None,
            queue_capacity: 65_536,
            segment_max_bytes: 64 * 1024 * 1024,
            segment_max_age: Duration::from_secs(3600),
        };
        let (sink, handle) = AuditSink::open(&config, "gw-bench").unwrap();
        group.throughput(Throughput::Elements(records as u64));
        group.bench_function(format!("{mode}/256_concurrent"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let before = sink.records_written();
                    rt.block_on(push(&sink, 256, records));
                    // `none` acknowledges before writing: wait until the writer caught up,
                    // so the figure is what it writes, not what it queues.
                    while sink.records_written() < before + records as u64 {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
                start.elapsed()
            })
        });
        drop(sink);
        handle.join();
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&base);
}

criterion_group!(benches, writer_throughput);
criterion_main!(benches);
