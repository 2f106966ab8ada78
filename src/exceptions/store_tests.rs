use super::super::model::{self, Actor, Limits, Op, Scope, Subject};
use super::*;

fn exception(
    id: &str,
    subject: &str,
    at: Millis,
    status: Status,
    end: Option<Millis>,
) -> Exception {
    let scope = Scope::RawBucket {
        bucket: "raw".into(),
        prefix: "in/".into(),
        ops: vec![Op::Read],
    };
    Exception {
        id: id.into(),
        subject: Subject::parse(subject).unwrap(),
        scope,
        reason: "backfill".into(),
        ticket: "DATA-1".into(),
        requester: "carol".into(),
        requested_at: at,
        duration_ms: 1_000,
        required_approvals: 2,
        approvals: vec![],
        status,
        approved_at: end.map(|e| e - 1_000),
        expires_at: end,
        closed: None,
    }
}

/// The ids `list` answers, for one subject.
async fn ids(
    store: &Store,
    status: Option<Status>,
    subject: &str,
    kind: Option<Kind>,
    now: Millis,
) -> Vec<String> {
    let all = store
        .list(status, Some(subject), kind, now, 100)
        .await
        .unwrap();
    all.into_iter().map(|e| e.id).collect()
}

/// The behaviour both backends share. Ids and subjects carry a fresh tag, apart from
/// other tests and earlier runs on a shared PostgreSQL database.
async fn suite(store: &Store) {
    let t = Store::new_id().to_lowercase();
    assert!(t.starts_with("exc-") && t.len() == 16 && t != Store::new_id().to_lowercase());
    let (alice, team) = (format!("alice-{t}"), format!("group:team-{t}"));
    let id = |n: &str| format!("{t}-{n}");
    let pending = exception(&id("a"), &alice, 1_000, Status::Pending, None);
    let approved = exception(&id("b"), &alice, 2_000, Status::Approved, Some(5_000));
    let mut revoked = exception(&id("c"), &team, 3_000, Status::Revoked, None);
    revoked.scope = Scope::WorkspaceAccess {
        workspace: "w".into(),
        categories: vec!["execute".into()],
    };
    let lasting = exception(&id("d"), &team, 4_000, Status::Approved, Some(1_000_000));
    for ex in [&pending, &approved, &revoked, &lasting] {
        store.insert(ex).await.unwrap();
    }
    assert!(matches!(
        store.insert(&pending).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(
        store.get(&pending.id).await.unwrap(),
        Some((pending.clone(), 1))
    );
    assert_eq!(store.get(&id("none")).await.unwrap(), None);

    assert_eq!(
        ids(store, None, &alice, None, 0).await,
        [id("b"), id("a")],
        "newest first"
    );
    assert_eq!(
        ids(store, None, &team, Some(Kind::WorkspaceAccess), 0).await,
        [id("c")]
    );
    assert_eq!(
        ids(store, Some(Status::Approved), &alice, None, 4_999).await,
        [id("b")]
    );
    // From expires_at on, approved reads as expired.
    assert_eq!(
        ids(store, Some(Status::Approved), &alice, None, 5_000).await,
        [""; 0]
    );
    assert_eq!(
        ids(store, Some(Status::Expired), &alice, None, 5_000).await,
        [id("b")]
    );
    assert_eq!(
        ids(store, Some(Status::Revoked), &team, None, 5_000).await,
        [id("c")]
    );
    assert_eq!(store.list(None, None, None, 0, 1).await.unwrap().len(), 1);
    let t = t.as_str();
    let in_force = |now| async move {
        let all = store.in_force(now).await.unwrap().into_iter();
        all.map(|e| e.id)
            .filter(|i| i.starts_with(t))
            .collect::<Vec<_>>()
    };
    assert_eq!(in_force(4_999).await, [id("d"), id("b")]);
    assert_eq!(in_force(5_000).await, [id("d")]);

    let mut changed = pending.clone();
    changed.reason = "changed".into();
    assert_eq!(store.update(&changed, 1).await.unwrap(), 2);
    assert!(matches!(
        store.update(&changed, 1).await,
        Err(StoreError::Conflict)
    ));
    let missing = exception(&id("none"), &alice, 0, Status::Pending, None);
    assert!(matches!(
        store.update(&missing, 1).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.get(&pending.id).await.unwrap(), Some((changed, 2)));

    // Two approvers read version 2 and write at once: exactly one lands; the other gets
    // Conflict, re-reads and re-applies its approval, and both count.
    let limits = Limits {
        approver_groups: vec!["cdao".into()],
        max_days: 30,
        required: model::Required::default(),
        workspaces: vec![],
        people_denied: vec![],
        raw_buckets: vec![],
        download_actions: vec![],
    };
    let approve = |ex, who: &str| {
        let actor = Actor {
            id: who.into(),
            groups: vec!["cdao".into()],
        };
        model::approve(ex, &actor, None, 10_000, &limits).unwrap()
    };
    let (read, version) = store.get(&id("a")).await.unwrap().unwrap();
    let (dan, erin) = (approve(read.clone(), "dan"), approve(read, "erin"));
    let (r1, r2) = tokio::join!(store.update(&dan, version), store.update(&erin, version));
    let (loser, won) = match (r1, r2) {
        (Ok(3), Err(StoreError::Conflict)) => ("erin", dan),
        (Err(StoreError::Conflict), Ok(3)) => ("dan", erin),
        other => panic!("not exactly one winner: {other:?}"),
    };
    let (read, version) = store.get(&id("a")).await.unwrap().unwrap();
    assert_eq!((&read, version), (&won, 3));
    assert_eq!(store.update(&approve(read, loser), 3).await.unwrap(), 4);
    let (ex, _) = store.get(&id("a")).await.unwrap().unwrap();
    let mut approvers: Vec<_> = ex.approvals.iter().map(|a| a.approver.as_str()).collect();
    approvers.sort();
    assert_eq!(approvers, ["dan", "erin"]);
    assert_eq!((ex.status, ex.expires_at), (Status::Approved, Some(11_000)));

    // A change whose confirmation fails (its trail record is not durable) is rolled back;
    // a confirmation is never asked for a write that lost its race.
    let refuse = || -> Confirmation<'static> { Box::pin(async { Err("trail full".to_owned()) }) };
    let mut closed = ex.clone();
    closed.status = Status::Revoked;
    assert!(matches!(
        store.update_confirmed(&closed, 4, refuse()).await,
        Err(StoreError::Unconfirmed(why)) if why == "trail full"
    ));
    assert_eq!(store.get(&id("a")).await.unwrap(), Some((ex.clone(), 4)));
    let asked = std::sync::atomic::AtomicBool::new(false);
    let ask = Box::pin(async {
        asked.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    });
    assert!(matches!(
        store.update_confirmed(&closed, 3, ask).await,
        Err(StoreError::Conflict)
    ));
    assert!(!asked.load(std::sync::atomic::Ordering::SeqCst));
    let fresh = exception(&id("e"), &alice, 9_000, Status::Pending, None);
    assert!(matches!(
        store.insert_confirmed(&fresh, refuse()).await,
        Err(StoreError::Unconfirmed(_))
    ));
    assert_eq!(store.get(&id("e")).await.unwrap(), None);
    // Confirmed, it commits.
    store
        .update_confirmed(&closed, 4, Box::pin(async { Ok(()) }))
        .await
        .unwrap();
    assert_eq!(store.get(&id("a")).await.unwrap(), Some((closed, 5)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/var/nested/gatehouse.db", dir.path().display());
    let store = Store::connect(&url).await.unwrap();
    let changes = store.changes();
    suite(&store).await;
    assert!(
        changes.has_changed().unwrap(),
        "local writes bump the counter"
    );
    let mode = sqlx::query_scalar::<_, String>("PRAGMA journal_mode");
    let busy = sqlx::query_scalar::<_, i64>("PRAGMA busy_timeout");
    assert_eq!(mode.fetch_one(&store.pool).await.unwrap(), "wal");
    assert_eq!(busy.fetch_one(&store.pool).await.unwrap(), 5_000);
    let before = store.list(None, None, None, 0, 100).await.unwrap();
    drop(store);
    // Reopening runs the migrations again (nothing to do) and finds everything.
    let store = Store::connect(&url).await.unwrap();
    let after = store.list(None, None, None, 0, 100).await.unwrap();
    assert_eq!((before.len(), after), (4, before));
    suite(&Store::connect("sqlite::memory:").await.unwrap()).await;
}

#[tokio::test]
async fn urls_never_show_passwords() {
    let url = "postgres://gw:s3cret@db.internal:5432/gh?sslmode=verify-full&password=other";
    assert_eq!(redact(url), "postgres://db.internal:5432/gh");
    assert_eq!(secrets_of(url), ["s3cret", "other"]);
    assert_eq!(
        redact("sqlite://var/gatehouse.db"),
        "sqlite://var/gatehouse.db"
    );
    let err = Store::connect("mysql://gw:s3cret@db/gh")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        !err.contains("s3cret") && err.contains("mysql://db/gh"),
        "{err}"
    );
}

#[tokio::test]
async fn full_refresh_bumps() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/x.db", dir.path().display());
    let postgres = std::env::var("GATEHOUSE_TEST_POSTGRES").ok(); // the note: in postgres()
    for url in [Some(url), postgres].into_iter().flatten() {
        let store = Store::connect_with(&url, Duration::from_millis(100))
            .await
            .unwrap();
        let mut changes = store.changes();
        bumped(&mut changes, 2).await;
        bumped(&mut changes, 2).await;
    }
}

async fn bumped(changes: &mut watch::Receiver<u64>, within_secs: u64) {
    let changed = tokio::time::timeout(Duration::from_secs(within_secs), changes.changed());
    changed.await.expect("no bump in time").unwrap();
}

fn postgres_url() -> Option<String> {
    let url = std::env::var("GATEHOUSE_TEST_POSTGRES")
        .ok()
        .filter(|u| !u.is_empty());
    if url.is_none() {
        // Straight to stderr: the test harness would swallow eprintln! of a passing test.
        let note = "note: GATEHOUSE_TEST_POSTGRES is unset: the store's PostgreSQL tests \
                    are skipped (scripts/test-postgres starts a server)\n";
        let _ = std::io::Write::write_all(&mut std::io::stderr(), note.as_bytes());
    }
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    let Some(url) = postgres_url() else { return };
    // Two gateways starting at once: the migrations' advisory lock keeps them apart.
    let (a, b) = tokio::join!(Store::connect(&url), Store::connect(&url));
    let (a, b) = (a.unwrap(), b.unwrap());
    suite(&a).await;

    let mut heard = b.changes();
    heard.borrow_and_update();
    let started = std::time::Instant::now();
    a.insert(&exception(
        &Store::new_id(),
        "frank",
        1,
        Status::Pending,
        None,
    ))
    .await
    .unwrap();
    bumped(&mut heard, 1).await;
    eprintln!(
        "an insert through one store reached the other in {:?}",
        started.elapsed()
    );

    // The listening connections die: they reconnect, bump (readers re-read), and hear again.
    // (Other test processes on the same server may be killing them too: then again.)
    let kill = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                WHERE datname = current_database() AND application_name = $1";
    heard.borrow_and_update();
    for _ in 0..50 {
        let killed = sqlx::query_scalar::<_, i64>(kill).bind(LISTENER);
        if killed.fetch_one(&a.pool).await.unwrap() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bumped(&mut heard, 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    heard.borrow_and_update();
    a.notify().await.unwrap();
    bumped(&mut heard, 1).await;

    let bad = redact(&url).replacen("://", "://nobody:pw-xyzzy@", 1) + "-nonexistent";
    let err = Store::connect(&bad).await.unwrap_err().to_string();
    assert!(!err.contains("pw-xyzzy"), "{err}");
    eprintln!("a failed connect reads: {err}");
}
