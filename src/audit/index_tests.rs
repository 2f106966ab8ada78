use super::*;
use crate::audit::chain;
use serde_json::json;

/// Trail lines sealed as the writer seals them, for one gateway, from seq `first`.
struct TrailWriter {
    gateway: &'static str,
    seq: u64,
    prev: [u8; 32],
}

impl TrailWriter {
    fn new(gateway: &'static str) -> TrailWriter {
        TrailWriter {
            gateway,
            seq: 0,
            prev: chain::GENESIS,
        }
    }

    fn seal(&mut self, out: &mut Vec<u8>, record: Value) {
        self.seq += 1;
        let mut record = record;
        record["gateway"] = json!(self.gateway);
        self.prev = chain::seal(out, self.seq, record.to_string().as_bytes(), &self.prev);
    }
}

fn ts(second: u32) -> String {
    format!(
        "2026-11-27T{:02}:{:02}:{:02}.{:06}Z",
        8 + second / 3600,
        second / 60 % 60,
        second % 60,
        second
    )
}

/// The decision and completion of request `n`, varied over every field a search names.
fn request(n: u32) -> (Value, Value) {
    let exchange = format!("x{n:04}");
    let principal = [
        "alice@bank.example",
        "bob \"the\" builder",
        "sp-etl",
        "carol@bank.example",
    ][n as usize % 4];
    let (effect, rule, would_deny) = match n % 5 {
        0 => ("deny", "downloads.blocked", None),
        1 => ("allow", "api.allowed", None),
        2 => ("allow", "api.unknown", Some("api.unknown")),
        3 => ("deny", "buckets.raw", None),
        _ => ("allow", "buckets.curated", None),
    };
    let asset = match n % 3 {
        0 => json!({"kind": "dbfs", "path": format!("dbfs:/tmp/part-{}.csv", n % 7)}),
        1 => json!({"kind": "s3", "bucket": (["buk-raw", "buk-curated"][n as usize % 2]),
                    "key": format!("landing/{}/a.csv", n % 4)}),
        _ => json!({"kind": "uc_volume", "path": format!("/Volumes/main/sales/v{}/f", n % 2)}),
    };
    let decision = json!({
        "ts": ts(n),
        "request_id": format!("r-{n}"),
        "exchange": exchange,
        "phase": "decision",
        "principal": {"id": principal, "type": "user"},
        "workspace": (["prod-analytics", "lab"][n as usize % 2]),
        "action": {"name": (["dbfs.read", "s3.get_object", "files.download"][n as usize % 3]),
                   "category": (["download", "read"][n as usize % 2])},
        "asset": asset,
        "decision": {"effect": effect, "rule": rule,
                     "exception": if n.is_multiple_of(11) { json!(format!("ex-{}", n % 2)) } else { Value::Null },
                     "would_deny": would_deny},
    });
    let completion = json!({"ts": ts(n), "exchange": exchange, "phase": "completion",
                            "status": if effect == "deny" { 403 } else { 200 }});
    (decision, completion)
}

/// Requests `from..to` as trail lines, with the other phases the trail holds mixed in.
fn lines(w: &mut TrailWriter, from: u32, to: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for n in from..to {
        let (d, c) = request(n);
        w.seal(&mut out, d);
        if n % 9 == 0 {
            w.seal(
                &mut out,
                json!({"ts": ts(n), "phase": "console", "event": "sign_in", "user": "alice@bank.example"}),
            );
        }
        w.seal(&mut out, c);
    }
    out
}

fn filters() -> Vec<Filter> {
    let f = Filter::default;
    let s = |v: &str| Some(v.to_owned());
    vec![
        f(),
        Filter {
            principal: s("bob \"the\" builder"),
            ..f()
        },
        Filter {
            principal: s("alice@bank.example"),
            decision: s("deny"),
            ..f()
        },
        Filter {
            workspace: s("lab"),
            ..f()
        },
        Filter {
            action: s("s3.get_object"),
            ..f()
        },
        Filter {
            category: s("read"),
            ..f()
        },
        Filter {
            decision: s("allow"),
            ..f()
        },
        Filter {
            decision: s("would_deny"),
            ..f()
        },
        Filter {
            rule: s("buckets.raw"),
            ..f()
        },
        Filter {
            exception: s("ex-1"),
            ..f()
        },
        Filter {
            bucket: s("buk-raw"),
            ..f()
        },
        Filter {
            asset: s("s3://buk-r"),
            ..f()
        },
        Filter {
            asset: s("s3://buk-raw/landing/2/"),
            ..f()
        },
        Filter {
            asset: s("dbfs:/tmp/"),
            ..f()
        },
        Filter {
            asset: s("/Volumes/main/sales/v1"),
            ..f()
        },
        Filter {
            asset: s("nothing-like-this"),
            ..f()
        },
        Filter {
            request_id: s("r-17"),
            ..f()
        },
        Filter {
            since: s("2026-11-27T08:00:30.000030Z"),
            until: s("2026-11-27T08:01:00.000000Z"),
            ..f()
        },
        Filter {
            since: s("2026-11-27T08:00:40.000000Z"),
            decision: s("deny"),
            ..f()
        },
    ]
}

fn exchanges(hits: &[Hit]) -> Vec<String> {
    hits.iter()
        .map(|h| {
            query::text(&h.decision, &["exchange"])
                .unwrap_or("")
                .to_owned()
        })
        .collect()
}

/// What `gatehouse audit query` finds, newest first (by time, across gateways).
fn scan(dir: &Path, f: &Filter) -> Vec<Hit> {
    let mut hits = query::run(dir, f).unwrap();
    let key = |h: &Hit| {
        let d = &h.decision;
        let text = |k: &str| d[k].as_str().unwrap_or("").to_owned();
        (text("ts"), text("gateway"), d["seq"].as_u64())
    };
    hits.sort_by_key(|h| std::cmp::Reverse(key(h)));
    hits
}

/// Asserts that the index gives, for every filter, the matches a scan of the trail gives,
/// in the same order, with the same completions and totals.
async fn same_as_a_scan(index: &TrailIndex, dir: &Path, every_filter_finds: bool) {
    for f in filters() {
        let scanned = scan(dir, &f);
        let indexed = index.page(&f, 0, 10_000, 10_000).await.unwrap();
        assert_eq!(exchanges(&indexed.hits), exchanges(&scanned), "{f:?}");
        assert_eq!(indexed.total, scanned.len(), "{f:?}");
        if every_filter_finds {
            let looks_for_nothing = f.asset.as_deref() == Some("nothing-like-this");
            assert_eq!(
                scanned.is_empty(),
                looks_for_nothing,
                "{f:?} finds something"
            );
        }
        assert!(!indexed.more);
        for (i, s) in indexed.hits.iter().zip(&scanned) {
            assert_eq!(i.completion, s.completion, "{f:?}");
            assert_eq!(i.decision, s.decision, "{f:?}");
        }
    }
}

/// One gateway's trail of requests `0..requests` in one segment.
fn one_segment(dir: &Path, requests: u32) {
    let text = lines(&mut TrailWriter::new("gw"), 0, requests);
    std::fs::write(dir.join(segment::segment_name("gw", 1)), text).unwrap();
}

async fn start(dir: &Path) -> Arc<TrailIndex> {
    TrailIndex::start(dir.to_path_buf(), dir.join("console-index.sqlite"))
        .await
        .unwrap()
        .0
}

/// How many requests the index finds.
async fn requests(index: &TrailIndex) -> usize {
    index
        .page(&Filter::default(), 0, 100, 100)
        .await
        .unwrap()
        .total
}

/// The index of `dir`, caught up with it.
async fn indexed(dir: &Path) -> Arc<TrailIndex> {
    let index = start(dir).await;
    refreshed(&index).await;
    index
}

async fn refreshed(index: &TrailIndex) {
    let p = index.refresh(Duration::from_secs(30)).await;
    assert!(p.caught_up(), "{p:?}");
}

#[tokio::test]
async fn the_index_finds_exactly_what_a_scan_finds() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (TrailWriter::new("gw-a"), TrailWriter::new("gw-b"));
    std::fs::write(
        dir.path().join(segment::segment_name("gw-a", 1)),
        lines(&mut a, 0, 40),
    )
    .unwrap();
    let second = a.seq + 1;
    std::fs::write(
        dir.path().join(segment::segment_name("gw-a", second)),
        lines(&mut a, 40, 80),
    )
    .unwrap();
    // Another gateway in the same directory, its requests interleaved in time.
    std::fs::write(
        dir.path().join(segment::segment_name("gw-b", 1)),
        lines(&mut b, 80, 120),
    )
    .unwrap();
    let index = indexed(dir.path()).await;
    same_as_a_scan(&index, dir.path(), true).await;

    // Asset prefixes with more matches than the count's cap are read in time order
    // through another index: the same matches, in the same order.
    for asset in ["dbfs:/", "s3://buk-raw/", "/Volumes/main/"] {
        let f = Filter {
            asset: Some(asset.into()),
            ..Default::default()
        };
        let scanned = scan(dir.path(), &f);
        let page = index.page(&f, 2, 10, 5).await.unwrap();
        assert!(page.more, "{asset}");
        assert_eq!(exchanges(&page.hits), exchanges(&scanned[2..12]), "{asset}");
        // Fewer than the cap, but a first page of dense matches: the time index too.
        let page = index.page(&f, 0, 2, 10_000).await.unwrap();
        assert_eq!(exchanges(&page.hits), exchanges(&scanned[..2]), "{asset}");
    }

    // Paging and the capped count.
    let all = Filter::default();
    let page = index.page(&all, 10, 5, 50).await.unwrap();
    let scanned = scan(dir.path(), &all);
    assert_eq!(exchanges(&page.hits), exchanges(&scanned[10..15]));
    assert_eq!((page.total, page.more), (50, true));

    let one = index.request("x0017").await.unwrap().unwrap();
    assert_eq!(one.decision["request_id"], "r-17");
    assert_eq!(one.completion.unwrap()["status"], 200);
    assert!(index.request("x9999").await.unwrap().is_none());
}

#[tokio::test]
async fn appended_records_are_indexed_and_half_written_lines_wait() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = TrailWriter::new("gw");
    let path = dir.path().join(segment::segment_name("gw", 1));
    let mut text = lines(&mut w, 0, 10);
    std::fs::write(&path, &text).unwrap();
    let index = indexed(dir.path()).await;
    assert_eq!(requests(&index).await, 10);

    // The writer is half way through request 10's decision line.
    let more = lines(&mut w, 10, 12);
    let cut = memchr::memchr(b'\n', &more).unwrap() - 5;
    text.extend_from_slice(&more[..cut]);
    std::fs::write(&path, &text).unwrap();
    refreshed(&index).await;
    // Caught up with every whole line, and no further.
    assert_eq!(index.progress().indexed_bytes, (text.len() - cut) as u64);
    assert_eq!(requests(&index).await, 10);

    text.extend_from_slice(&more[cut..]);
    std::fs::write(&path, &text).unwrap();
    refreshed(&index).await;
    same_as_a_scan(&index, dir.path(), false).await;
    assert_eq!(requests(&index).await, 12);
}

#[tokio::test]
async fn a_trail_that_changed_under_the_index_is_indexed_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = TrailWriter::new("gw");
    let first = dir.path().join(segment::segment_name("gw", 1));
    std::fs::write(&first, lines(&mut w, 0, 30)).unwrap();
    let second = dir.path().join(segment::segment_name("gw", w.seq + 1));
    std::fs::write(&second, lines(&mut w, 30, 60)).unwrap();
    let index = indexed(dir.path()).await;

    // A segment archived away, and another cut short.
    std::fs::remove_file(&first).unwrap();
    let text = std::fs::read(&second).unwrap();
    let half = whole_lines(&text[..text.len() / 2]);
    std::fs::write(&second, &text[..half]).unwrap();
    refreshed(&index).await;
    same_as_a_scan(&index, dir.path(), false).await;
    assert!(index.request("x0003").await.unwrap().is_none());
}

#[tokio::test]
async fn an_index_pointing_at_other_records_shows_none_of_them_and_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    one_segment(dir.path(), 20);
    let index = indexed(dir.path()).await;
    // Request 5's row now points at request 6's line.
    sqlx::query(
        "UPDATE requests SET offset = (SELECT offset FROM requests WHERE exchange = 'x0006'),
                             length = (SELECT length FROM requests WHERE exchange = 'x0006')
         WHERE exchange = 'x0005'",
    )
    .execute(&index.pool)
    .await
    .unwrap();
    let five = Filter {
        request_id: Some("r-5".into()),
        ..Default::default()
    };
    assert!(index.page(&five, 0, 10, 10).await.unwrap().hits.is_empty());
    refreshed(&index).await;
    let found = index.page(&five, 0, 10, 10).await.unwrap();
    assert_eq!(exchanges(&found.hits), ["x0005"]);
}

#[tokio::test]
async fn a_file_that_is_not_a_trail_index_is_never_touched() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("console-index.sqlite");
    std::fs::write(&file, b"the operator's notes, not a database").unwrap();
    let refused = TrailIndex::start(dir.path().to_path_buf(), file.clone())
        .await
        .err()
        .expect("refused");
    assert!(refused.contains("not a Gatehouse trail index"), "{refused}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"the operator's notes, not a database"
    );

    // Another application's SQLite database (the exceptions store, say).
    let other = dir.path().join("gatehouse.db");
    let pool = connect(&other).await.unwrap();
    sqlx::query("CREATE TABLE exceptions (id TEXT)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let refused = TrailIndex::start(dir.path().to_path_buf(), other.clone())
        .await
        .err()
        .expect("refused");
    assert!(refused.contains("another application"), "{refused}");
    let pool = connect(&other).await.unwrap();
    sqlx::query("SELECT count(*) FROM exceptions")
        .execute(&pool)
        .await
        .expect("still there");
}

#[tokio::test]
async fn an_index_of_another_version_or_broken_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    one_segment(dir.path(), 5);
    let index = indexed(dir.path()).await;
    sqlx::query("UPDATE meta SET value = 0")
        .execute(&index.pool)
        .await
        .unwrap();
    index.pool.close().await;

    let index = start(dir.path()).await;
    let version: i64 = sqlx::query_scalar("SELECT value FROM meta")
        .fetch_one(&index.pool)
        .await
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION, "made again at this version");
    refreshed(&index).await;
    same_as_a_scan(&index, dir.path(), false).await;
    index.pool.close().await;

    // Ours by its header, but broken after it.
    let file = dir.path().join("console-index.sqlite");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.truncate(100);
    bytes.extend_from_slice(&[0xAB; 4000]);
    std::fs::write(&file, bytes).unwrap();
    let index = indexed(dir.path()).await;
    same_as_a_scan(&index, dir.path(), false).await;
}

#[tokio::test]
async fn a_segment_rewritten_in_place_is_indexed_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(segment::segment_name("gw", 1));
    std::fs::write(&path, lines(&mut TrailWriter::new("gw"), 0, 10)).unwrap();
    let index = indexed(dir.path()).await;
    // The same name, other records, and no shorter: what a writer that truncated and wrote
    // again leaves.
    std::fs::write(&path, lines(&mut TrailWriter::new("gw"), 100, 112)).unwrap();
    refreshed(&index).await;
    same_as_a_scan(&index, dir.path(), false).await;
    assert!(index.request("x0003").await.unwrap().is_none());
    assert!(index.request("x0105").await.unwrap().is_some());
}

#[tokio::test]
async fn odd_records_are_found_as_a_scan_finds_them() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (TrailWriter::new("gw-a"), TrailWriter::new("gw-b"));
    let decision = |exchange: &str, path: &str, ts: &str| {
        json!({"ts": ts, "phase": "decision", "exchange": exchange, "request_id": exchange,
               "principal": {"id": "alice"}, "asset": {"kind": "dbfs", "path": path},
               "decision": {"effect": "deny", "rule": "downloads.blocked"}})
    };
    let same_time = "2026-11-27T09:00:00.000001Z";
    let mut one = Vec::new();
    let mut two = Vec::new();
    // Two gateways, the same microsecond: ordered as a scan orders them.
    a.seal(&mut one, decision("a1", "dbfs:/tmp/x", same_time));
    b.seal(&mut two, decision("b1", "dbfs:/tmp/y", same_time));
    a.seal(&mut one, decision("a2", "dbfs:/tmp/z", same_time));
    // The last character there is: still under its prefix.
    a.seal(
        &mut one,
        decision("top", "dbfs:/tmp/\u{10FFFF}x", "2026-11-27T09:00:01Z"),
    );
    // A field of an unexpected type: the rest of the record is still searchable.
    let mut odd = decision("odd", "dbfs:/tmp/odd", "2026-11-27T09:00:02Z");
    odd["request_id"] = json!(42);
    a.seal(&mut one, odd);
    std::fs::write(dir.path().join(segment::segment_name("gw-a", 1)), one).unwrap();
    std::fs::write(dir.path().join(segment::segment_name("gw-b", 1)), two).unwrap();
    let index = indexed(dir.path()).await;
    for prefix in ["dbfs:/tmp/", "dbfs:/tmp/\u{10FFFF}", "dbfs:/"] {
        let f = Filter {
            asset: Some(prefix.into()),
            ..Default::default()
        };
        let found = index.page(&f, 0, 100, 100).await.unwrap();
        assert_eq!(
            exchanges(&found.hits),
            exchanges(&scan(dir.path(), &f)),
            "{prefix}"
        );
    }
    let all = index.page(&Filter::default(), 0, 100, 100).await.unwrap();
    assert_eq!(exchanges(&all.hits), ["odd", "top", "b1", "a2", "a1"]);
    assert_eq!(
        exchanges(&all.hits),
        exchanges(&scan(dir.path(), &Filter::default()))
    );
}

#[test]
fn the_bound_above_a_prefix_is_the_least_string_beyond_it() {
    assert_eq!(above_prefix("s3://b/").as_deref(), Some("s3://b0"));
    assert_eq!(above_prefix("a\u{10FFFF}").as_deref(), Some("b"));
    assert_eq!(above_prefix("\u{D7FF}").as_deref(), Some("\u{E000}"));
    assert_eq!(above_prefix("\u{10FFFF}"), None);
    assert_eq!(above_prefix(""), None);
}

#[tokio::test]
async fn denials_are_counted_by_slot_rule_principal_and_asset() {
    let dir = tempfile::tempdir().unwrap();
    one_segment(dir.path(), 100);
    let index = indexed(dir.path()).await;
    let start_unix = micros("2026-11-27T08:00:00Z").unwrap() / 1_000_000;
    // 10 slots of 10 s: requests 0..100 are one a second.
    let counts = index.denials(start_unix, 10, 10, 3).await.unwrap();
    let denied: Vec<(Value, Value)> = (0..100)
        .map(request)
        .filter(|(d, _)| d["decision"]["effect"] == "deny")
        .collect();
    assert_eq!(counts.total as usize, denied.len());
    let in_slot = |slot: usize, rule: &str| {
        counts
            .by_slot_and_rule
            .iter()
            .find(|(s, r, _)| *s == slot && r == rule)
            .map_or(0, |(_, _, n)| *n)
    };
    // Slot 0 is requests 0..10: 0 and 5 are downloads.blocked, 3 and 8 buckets.raw.
    assert_eq!(
        (in_slot(0, "downloads.blocked"), in_slot(0, "buckets.raw")),
        (2, 2)
    );
    let mut by_principal: HashMap<String, u32> = HashMap::new();
    for (d, _) in &denied {
        *by_principal
            .entry(d["principal"]["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let mut expected: Vec<(String, u32)> = by_principal.into_iter().collect();
    expected.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    expected.truncate(3);
    assert_eq!(counts.principals, expected);
    assert_eq!(counts.assets.len(), 3);
    // A period before the trail has none.
    assert_eq!(
        index
            .denials(start_unix - 1000, 10, 10, 3)
            .await
            .unwrap()
            .total,
        0
    );
}
