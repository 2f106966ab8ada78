//! The review console's searches on a trail of a million records: how long the trail index
//! takes to build and to answer, against scanning the trail as `gatehouse audit query` does.
//!
//!   cargo bench --bench trail_index                     # writes a 1,000,000-record trail
//!   TRAIL_DIR=/tmp/synth cargo bench --bench trail_index # reuses (or writes) one there,
//!                                                        # and leaves its index there
//!   TRAIL_RECORDS=200000 cargo bench --bench trail_index
//!
//! Prints one line per measurement: the median of several runs in milliseconds. Timing lives
//! here, not in the tests: this machine is shared, and absolute numbers drift between runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use gatehouse::audit::index::TrailIndex;
use gatehouse::audit::query::{self, Filter};

const RUNS: usize = 7;

fn median_ms(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1000.0
}

fn bytes_in(dir: &Path, pick: impl Fn(&str) -> bool) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| pick(&e.file_name().to_string_lossy()))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn main() -> Result<(), String> {
    let records: u64 = std::env::var("TRAIL_RECORDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1_000_000);
    let temp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir: PathBuf = std::env::var_os("TRAIL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    if query::trail_files(&dir).is_err() {
        let started = Instant::now();
        gatehouse::testing::synthetic_trail(&dir, records, None)?;
        println!(
            "wrote a {records}-record trail in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    let trail_bytes = bytes_in(&dir, |n| n.ends_with(".jsonl"));
    let index_file = dir.join("bench-index.sqlite");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", index_file.display()));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let started = Instant::now();
        let (index, _task) = TrailIndex::start(dir.clone(), index_file.clone()).await?;
        let progress = index.refresh(Duration::from_secs(3600)).await;
        if !progress.caught_up() {
            return Err(format!("the index did not catch up: {progress:?}"));
        }
        println!(
            "first build: {:.1} s for {} MB of trail; index {} MB",
            started.elapsed().as_secs_f64(),
            trail_bytes >> 20,
            bytes_in(&dir, |n| n.starts_with("bench-index.sqlite")) >> 20
        );

        let now = SystemTime::now();
        let since = |text: &str| query::time_bound(text, now).ok();
        let searches: Vec<(&str, Filter, usize)> = vec![
            ("newest 50, no filter", Filter::default(), 0),
            (
                "page 200 (matches 9,951-10,000), no filter",
                Filter::default(),
                9_950,
            ),
            (
                "one principal",
                Filter {
                    principal: Some("user7@bank.example".into()),
                    ..Default::default()
                },
                0,
            ),
            (
                "denied downloads, last hour",
                Filter {
                    category: Some("download".into()),
                    decision: Some("deny".into()),
                    since: since("1h"),
                    ..Default::default()
                },
                0,
            ),
            (
                "asset prefix",
                Filter {
                    asset: Some("dbfs:/mnt/data/table3/".into()),
                    ..Default::default()
                },
                0,
            ),
            (
                "asset prefix matching every request",
                Filter {
                    asset: Some("dbfs:/mnt/".into()),
                    ..Default::default()
                },
                0,
            ),
            (
                "one request id (no match)",
                Filter {
                    request_id: Some("r-none".into()),
                    ..Default::default()
                },
                0,
            ),
        ];
        println!(
            "{:<44} {:>10} {:>10}",
            "search (50 a page)", "index ms", "scan ms"
        );
        for (name, filter, skip) in &searches {
            let mut indexed = Vec::new();
            for _ in 0..RUNS {
                let t = Instant::now();
                let page = index.page(filter, *skip, 50, 10_000).await?;
                indexed.push(t.elapsed());
                std::hint::black_box(page);
            }
            // What the console did before the index: one pass over the whole trail, keeping
            // no more matches than the page needs.
            let t = Instant::now();
            let d = dir.clone();
            let f = Filter {
                limit: Some(skip + 50),
                ..filter.clone()
            };
            tokio::task::spawn_blocking(move || query::run(&d, &f))
                .await
                .map_err(|e| e.to_string())??;
            let scan = t.elapsed();
            println!(
                "{name:<44} {:>10.2} {:>10.0}",
                median_ms(indexed),
                scan.as_secs_f64() * 1000.0
            );
        }

        // Requests spread over the trail, found first (not timed), then opened one by one.
        let mut exchanges = Vec::new();
        for n in 0..RUNS {
            let page = index.page(&Filter::default(), n * 1_400, 1, 1).await?;
            let hit = page.hits.first().ok_or("the trail has fewer requests")?;
            exchanges.push(hit.decision["exchange"].as_str().unwrap_or("").to_owned());
        }
        let mut one = Vec::new();
        for exchange in &exchanges {
            let t = Instant::now();
            let hit = index.request(exchange).await?;
            one.push(t.elapsed());
            assert!(hit.is_some(), "{exchange} is in the trail");
        }
        println!(
            "{:<44} {:>10.2}",
            "one request page (by exchange)",
            median_ms(one)
        );
        for (name, secs) in [("denials, 24 h", 86_400i64), ("denials, 30 d", 30 * 86_400)] {
            let end = now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_err(|e| e.to_string())?
                .as_secs() as i64;
            let slot = secs / 24;
            let mut runs = Vec::new();
            for _ in 0..RUNS {
                let t = Instant::now();
                let counts = index.denials(end - slot * 24, slot, 24, 10).await?;
                runs.push(t.elapsed());
                std::hint::black_box(counts);
            }
            println!("{name:<44} {:>10.2}", median_ms(runs));
        }

        let mut nothing_new = Vec::new();
        for _ in 0..RUNS {
            let t = Instant::now();
            index.refresh(Duration::from_secs(60)).await;
            nothing_new.push(t.elapsed());
        }
        println!(
            "{:<44} {:>10.2}",
            "refresh with nothing new",
            median_ms(nothing_new)
        );

        // A trail of its own grows: what indexing costs for each record that comes in.
        if std::env::var_os("TRAIL_DIR").is_none() {
            for round in 1..=3 {
                let d = dir.clone();
                tokio::task::spawn_blocking(move || {
                    gatehouse::testing::synthetic_trail(&d, 20_000, None)
                })
                .await
                .map_err(|e| e.to_string())??;
                let t = Instant::now();
                let progress = index.refresh(Duration::from_secs(600)).await;
                let took = t.elapsed();
                assert!(progress.caught_up(), "{progress:?}");
                println!(
                    "{:<44} {:>10.0} ({:.0} µs a record)",
                    format!("indexing 20,000 more records, round {round}"),
                    took.as_secs_f64() * 1000.0,
                    took.as_secs_f64() * 1e6 / 20_000.0
                );
            }
        }
        Ok::<(), String>(())
    })?;
    // An index in a directory of the caller's is left there to look into.
    if std::env::var_os("TRAIL_DIR").is_none() {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", index_file.display()));
        }
    }
    Ok(())
}
