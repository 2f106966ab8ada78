//! The CDAO workflow through the real gateway: the admin API, the store (SQLite), the live
//! index and the data path together. What the stand-in receives shows what an exception let
//! through, and nothing else.

mod common;

use std::time::{Duration, Instant};

use common::s3::{request, s3_harness_with, send, LAB_KEY};
use common::Harness;
use gatehouse::exceptions::model::{Approval, Exception, Scope, Status, Subject};
use gatehouse::exceptions::store::Store;
use http::{Method, StatusCode};
use serde_json::{json, Value};

fn exceptions_toml(dir: &str) -> String {
    format!(
        r#"
[exceptions]
store = "sqlite://{dir}/gatehouse.db"
approver_groups = ["cdao-approvers"]
max_days = 30
"#
    )
}

async fn with_exceptions() -> Harness {
    let dir = tempfile::tempdir().unwrap().keep();
    s3_harness_with(&exceptions_toml(&dir.display().to_string())).await
}

struct People {
    alice: String,
    carol: String,
    erin: String,
}

fn people(h: &Harness) -> People {
    People {
        alice: h.token("alice@bank.example", "user", &["data-scientists"]),
        carol: h.token("carol@bank.example", "user", &["cdao-approvers"]),
        erin: h.token("erin@bank.example", "user", &["cdao-approvers"]),
    }
}

async fn api(
    h: &Harness,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let (status, bytes) = h.admin(method, path, Some(token), body).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn raw_get(h: &Harness, key: &str) -> String {
    send(
        h,
        request(
            h,
            "GET",
            &format!("/buk-raw-landing/{key}"),
            LAB_KEY,
            "",
            "",
        ),
    )
    .await
}

/// `POST /v1/exceptions/{id}/{verb}` as `token`.
async fn step(
    h: &Harness,
    id: &str,
    verb: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    api(
        h,
        Method::POST,
        &format!("/v1/exceptions/{id}/{verb}"),
        token,
        body,
    )
    .await
}

/// `GET /v1/exceptions/{id}`, as alice.
async fn show(h: &Harness, id: &str) -> Value {
    let alice = people(h).alice;
    let path = format!("/v1/exceptions/{id}");
    let (status, ex) = api(h, Method::GET, &path, &alice, None).await;
    assert_eq!(status, StatusCode::OK, "{ex}");
    ex
}

/// Alice asks for a `dbfs.read` download exception in prod-analytics.
async fn ask_download(
    h: &Harness,
    subject: &str,
    prefix: &str,
    duration: &str,
) -> (StatusCode, Value) {
    let alice = people(h).alice;
    let body = json!({
        "kind": "download", "subject": subject, "workspace": "prod-analytics",
        "actions": ["dbfs.read"], "prefix": prefix,
        "reason": "export the approved extract", "ticket": "CHG-2", "duration": duration
    });
    api(h, Method::POST, "/v1/exceptions", &alice, Some(body)).await
}

/// Polls until `check` holds, for at most `limit`; returns how long it took.
async fn within(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

#[tokio::test]
async fn a_raw_bucket_exception_needs_two_approvers_lets_its_prefix_through_and_dies_when_revoked()
{
    let h = with_exceptions().await;
    let p = people(&h);
    assert!(raw_get(&h, "landing/a.csv")
        .await
        .starts_with("HTTP/1.1 403"));
    assert!(h.standin.seen().is_empty());

    let (status, ex) = api(
        &h,
        Method::POST,
        "/v1/exceptions",
        &p.alice,
        Some(json!({
            "kind": "raw-bucket", "subject": "sp-aiml-lab", "bucket": "buk-raw-landing",
            "prefix": "landing/", "ops": ["read", "list"], "reason": "reconcile the landing feed",
            "ticket": "CHG-1", "duration": "4h"
        })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{ex}");
    assert_eq!(
        (ex["status"].as_str(), ex["required_approvals"].as_u64()),
        (Some("pending"), Some(2))
    );
    let id = ex["id"].as_str().unwrap().to_owned();

    let (status, e) = step(&h, &id, "approve", &p.alice, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{e}");
    assert_eq!(e["error_code"], "NOT_AN_APPROVER");
    let (status, ex) = step(&h, &id, "approve", &p.carol, Some(json!({"comment": "ok"}))).await;
    assert_eq!(
        (status, ex["status"].as_str()),
        (StatusCode::OK, Some("pending"))
    );
    // One approval of two: still closed.
    assert!(raw_get(&h, "landing/a.csv")
        .await
        .starts_with("HTTP/1.1 403"));
    let (status, e) = step(&h, &id, "approve", &p.carol, None).await;
    assert_eq!(
        (status, e["error_code"].as_str()),
        (StatusCode::CONFLICT, Some("ALREADY_APPROVED"))
    );

    let (status, ex) = step(&h, &id, "approve", &p.erin, None).await;
    assert_eq!(
        (status, ex["status"].as_str()),
        (StatusCode::OK, Some("approved"))
    );
    assert!(ex["expires_at"].is_string());
    let answer = raw_get(&h, "landing/a.csv").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        raw_get(&h, "curated/a.csv")
            .await
            .starts_with("HTTP/1.1 403"),
        "only its prefix"
    );
    // A listing is covered by what it names: its prefix.
    let list = |prefix: &str| {
        request(
            &h,
            "GET",
            &format!("/buk-raw-landing?list-type=2&prefix={prefix}"),
            LAB_KEY,
            "",
            "",
        )
    };
    assert!(send(&h, list("landing/")).await.starts_with("HTTP/1.1 200"));
    assert!(send(&h, list("curated/")).await.starts_with("HTTP/1.1 403"));
    assert!(
        send(&h, list("")).await.starts_with("HTTP/1.1 403"),
        "not the whole bucket"
    );
    // A copy out of the prefix reads it: covered as a read, like a download.
    let copy = |key: &str| {
        request(
            &h,
            "PUT",
            "/buk-aiml-lab/copied.csv",
            LAB_KEY,
            &format!("x-amz-copy-source: /buk-raw-landing/{key}\r\n"),
            "",
        )
    };
    assert!(send(&h, copy("landing/a.csv"))
        .await
        .starts_with("HTTP/1.1 200"));
    assert!(send(&h, copy("curated/a.csv"))
        .await
        .starts_with("HTTP/1.1 403"));
    assert_eq!(h.standin.seen().len(), 3);
    let allowed = h
        .trail()
        .into_iter()
        .find(|r| r["phase"] == "decision" && r["decision"]["effect"] == "allow")
        .unwrap();
    assert_eq!(allowed["decision"]["exception"], id.as_str());
    assert_eq!(allowed["decision"]["rule"], "exception.approved");

    // Revoked: closed again at once, and the history stays.
    let (status, ex) = step(&h, &id, "revoke", &p.erin, Some(json!({"comment": "done"}))).await;
    assert_eq!(
        (status, ex["status"].as_str()),
        (StatusCode::OK, Some("revoked"))
    );
    let took = within(Duration::from_secs(1), async || {
        raw_get(&h, "landing/a.csv")
            .await
            .starts_with("HTTP/1.1 403")
    })
    .await;
    assert!(took < Duration::from_secs(1));
    assert_eq!(h.standin.seen().len(), 3, "nothing more reached the bucket");
    let (status, e) = step(&h, &id, "approve", &p.carol, None).await;
    assert_eq!(
        (status, e["error_code"].as_str()),
        (StatusCode::CONFLICT, Some("NOT_PENDING"))
    );
    let (_, listed) = api(
        &h,
        Method::GET,
        "/v1/exceptions?status=revoked",
        &p.alice,
        None,
    )
    .await;
    assert_eq!(listed["exceptions"][0]["id"], id.as_str());
    assert_eq!(
        listed["exceptions"][0]["approvals"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Every step is in the trail, by whom.
    let steps: Vec<(String, String)> = h
        .trail()
        .into_iter()
        .filter(|r| r["phase"] == "exception")
        .map(|r| {
            (
                r["event"].as_str().unwrap().to_owned(),
                r["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("request", "alice@bank.example"),
            ("approve", "carol@bank.example"),
            ("approve", "erin@bank.example"),
            ("revoke", "erin@bank.example"),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
}

#[tokio::test]
async fn a_download_exception_opens_one_prefix_and_lapses_by_itself() {
    let h = with_exceptions().await;
    let p = people(&h);
    let sp = h.service();
    let read = |path: &str| format!("/api/2.0/dbfs/read?path={path}");
    assert_eq!(
        h.get(&read("dbfs:/FileStore/approved/x.csv"), &sp)
            .await
            .status,
        StatusCode::FORBIDDEN
    );

    let (status, ex) = ask_download(&h, "sp-aiml-prod", "dbfs:/FileStore/approved/", "2s").await;
    assert_eq!(status, StatusCode::CREATED, "{ex}");
    let id = ex["id"].as_str().unwrap();
    let (status, ex) = step(&h, id, "approve", &p.carol, None).await;
    assert_eq!(
        (status, ex["status"].as_str()),
        (StatusCode::OK, Some("approved"))
    );

    assert_eq!(
        h.get(&read("dbfs:/FileStore/approved/x.csv"), &sp)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        h.get(&read("dbfs:/FileStore/other/x.csv"), &sp)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let export = "/api/2.0/workspace/export?path=/FileStore/approved/x.csv";
    assert_eq!(
        h.get(export, &sp).await.status,
        StatusCode::FORBIDDEN,
        "only the action named"
    );
    assert_eq!(h.standin.seen().len(), 1);

    // Nobody acts: two seconds after approval it is closed again.
    within(Duration::from_secs(10), async || {
        h.get(&read("dbfs:/FileStore/approved/x.csv"), &sp)
            .await
            .status
            == StatusCode::FORBIDDEN
    })
    .await;
    assert_eq!(show(&h, id).await["status"], "expired");
}

#[tokio::test]
async fn a_workspace_access_exception_lets_a_person_into_prod_parallel_for_its_categories() {
    let h = with_exceptions().await;
    let p = people(&h);
    let list = || {
        h.send(
            false,
            Method::GET,
            gatehouse::testing::PARALLEL_HOST,
            "/api/2.1/clusters/list",
            Some(&p.alice),
            None,
        )
    };
    assert_eq!(list().await.status, StatusCode::FORBIDDEN);
    let (status, ex) = api(&h, Method::POST, "/v1/exceptions", &p.alice, Some(json!({
        "kind": "workspace-access", "subject": "alice@bank.example", "workspace": "prod-parallel",
        "categories": ["metadata"], "reason": "incident review", "ticket": "INC-7", "duration": "2h"
    }))).await;
    assert_eq!(status, StatusCode::CREATED, "{ex}");
    let id = ex["id"].as_str().unwrap();
    let (status, _) = step(&h, id, "approve", &p.carol, None).await;
    assert_eq!(status, StatusCode::OK);
    let r = list().await;
    assert_eq!(r.status, StatusCode::OK);
    // Another category (jobs.run_now is "other"): still configuration-only for her.
    let run = h
        .send(
            false,
            Method::POST,
            gatehouse::testing::PARALLEL_HOST,
            "/api/2.1/jobs/run-now",
            Some(&p.alice),
            Some(b"{}".to_vec()),
        )
        .await;
    assert_eq!(run.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn refusals_say_why_in_the_api_shape() {
    let h = with_exceptions().await;
    let p = people(&h);
    let ask = |body: Value| api(&h, Method::POST, "/v1/exceptions", &p.alice, Some(body));
    let base = json!({"kind": "raw-bucket", "subject": "sp-aiml-lab", "bucket": "buk-raw-landing",
        "prefix": "landing/", "ops": ["read"], "reason": "r", "ticket": "T-1", "duration": "4h"});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let (status, e) = ask(with("prefix", json!(""))).await;
    assert_eq!(
        (status, e["error_code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("SCOPE_TOO_BROAD"))
    );
    let (status, e) = ask(with("duration", json!("31d"))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert!(e["message"].as_str().unwrap().contains("max_days"));
    let (status, _) = ask(with("bucket", json!("buk-aiml-lab"))).await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a lab bucket is not raw"
    );

    // A self-approval by an approver who requested it.
    let (_, ex) = api(
        &h,
        Method::POST,
        "/v1/exceptions",
        &p.carol,
        Some(base.clone()),
    )
    .await;
    let id = ex["id"].as_str().unwrap();
    let (status, e) = step(&h, id, "approve", &p.carol, None).await;
    assert_eq!(
        (status, e["error_code"].as_str()),
        (StatusCode::FORBIDDEN, Some("SELF_APPROVAL"))
    );

    let (status, e) = h.admin(Method::GET, "/v1/exceptions", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{e:?}");
    let (status, _) = api(&h, Method::GET, "/v1/exceptions/EXC-NOSUCH", &p.alice, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_member_of_the_subject_group_cannot_approve_it() {
    let h = with_exceptions().await;
    let p = people(&h);
    let (status, ex) = ask_download(
        &h,
        "group:aiml-engineering",
        "dbfs:/FileStore/approved/",
        "4h",
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{ex}");
    let id = ex["id"].as_str().unwrap();
    // An approver whose token says they are in the group the exception is for.
    let member = h.token(
        "mallory@bank.example",
        "user",
        &["cdao-approvers", "aiml-engineering"],
    );
    let (status, e) = step(&h, id, "approve", &member, None).await;
    assert_eq!(
        (status, e["error_code"].as_str()),
        (StatusCode::FORBIDDEN, Some("SELF_APPROVAL")),
        "{e}"
    );
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("group:aiml-engineering") && message.contains("member"),
        "{message}"
    );
    let now = show(&h, id).await;
    assert_eq!(now["status"], "pending");
    assert_eq!(now["approvals"].as_array().unwrap().len(), 0);
    // An approver outside the group can.
    let (status, ex) = step(&h, id, "approve", &p.carol, None).await;
    assert_eq!(
        (status, ex["status"].as_str()),
        (StatusCode::OK, Some("approved"))
    );
}

#[tokio::test]
async fn no_exception_lets_a_person_into_a_workspace_that_denies_people() {
    // Already in the store, approved and in force (from before the upgrade): alice may look
    // around `prod`, whose configuration says humans = "deny".
    let scope = Scope::WorkspaceAccess {
        workspace: "prod".into(),
        categories: vec!["metadata".into()],
    };
    let legacy = stored(
        "EXC-LEGACYPROD01",
        "alice@bank.example",
        scope,
        Status::Approved,
    );
    let (dir, _) = store_holding(&[legacy]).await;
    let h = s3_harness_with(&exceptions_toml(&dir.display().to_string())).await;
    let p = people(&h);
    let r = h
        .send(
            false,
            Method::GET,
            gatehouse::testing::PROD_HOST,
            "/api/2.1/clusters/list",
            Some(&p.alice),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("workspace.humans_denied"),
        "{:?}",
        r.json()
    );
    assert!(h.standin.seen().is_empty());
    let denied = h
        .trail()
        .into_iter()
        .find(|r| r["phase"] == "decision")
        .unwrap();
    assert_eq!(denied["decision"]["exception"], Value::Null);

    // And no new one can be asked for: 422, naming the principle.
    let (status, e) = api(&h, Method::POST, "/v1/exceptions", &p.alice, Some(json!({
        "kind": "workspace-access", "subject": "alice@bank.example", "workspace": "prod",
        "categories": ["metadata"], "reason": "incident review", "ticket": "INC-7", "duration": "2h"
    }))).await;
    assert_eq!(
        (status, e["error_code"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("NO_INTERACTIVE_ACCESS")
        ),
        "{e}"
    );
    assert!(e["message"]
        .as_str()
        .unwrap()
        .contains("no interactive access in production"));
    let (_, listed) = api(
        &h,
        Method::GET,
        "/v1/exceptions?status=pending",
        &p.alice,
        None,
    )
    .await;
    assert_eq!(listed["exceptions"], json!([]));
}

/// A download exception covers the asset the upstream would serve, named one way: a path
/// that climbs out of its prefix is judged where it lands, an ambiguous one is refused, and
/// the trail records the resolved asset.
#[tokio::test]
async fn a_download_exception_covers_resolved_paths_by_whole_segments() {
    let h = with_exceptions().await;
    let p = people(&h);
    let sp = h.service();
    let (status, ex) = ask_download(&h, "sp-aiml-prod", "dbfs:/FileStore/approved", "1h").await;
    assert_eq!(status, StatusCode::CREATED, "{ex}");
    let id = ex["id"].as_str().unwrap();
    let (status, _) = step(&h, id, "approve", &p.carol, None).await;
    assert_eq!(status, StatusCode::OK);
    let read = |path: &str| format!("/api/2.0/dbfs/read?path={path}");
    // The asset each request was judged on, from its decision record.
    let judged = |r: &common::Reply| {
        let rid = r.headers["x-request-id"].to_str().unwrap();
        let decision = h
            .records_for(rid)
            .into_iter()
            .find(|r| r["phase"] == "decision")
            .unwrap();
        (
            decision["asset"]["path"].as_str().unwrap_or("-").to_owned(),
            decision["decision"]["rule"].as_str().unwrap().to_owned(),
        )
    };

    // Out of the prefix by dot segments: denied where it lands, never forwarded.
    for climbing in [
        "dbfs:/FileStore/approved/../../mnt/pii/x",
        "dbfs%3A%2FFileStore%2Fapproved%2F..%2F..%2Fmnt%2Fpii%2Fx",
        "dbfs:/FileStore/approved/%2e%2e/%2e%2e/mnt/pii/x",
    ] {
        let r = h.get(&read(climbing), &sp).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{climbing}");
        assert_eq!(
            judged(&r),
            ("dbfs:/mnt/pii/x".to_owned(), "downloads.blocked".to_owned()),
            "{climbing}"
        );
    }
    // A neighbour whose name starts like the prefix is not under it.
    let r = h
        .get(&read("dbfs:/FileStore/approved-pii/x.csv"), &sp)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // What cannot be read one way is refused before any decision.
    for ambiguous in [
        "dbfs:/FileStore/approved/../../../../x",
        "dbfs:/FileStore/approved%252F..%252F..%252Fmnt%252Fpii%252Fx",
        "dbfs://FileStore/approved/x",
        "dbfs:/FileStore/approved/x&path=dbfs:/mnt/pii/x",
        "dbfs:/FileStore/approved/x%00",
    ] {
        let r = h.get(&read(ambiguous), &sp).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{ambiguous}");
        assert!(
            r.json()["message"]
                .as_str()
                .unwrap()
                .contains("request.unnormalisable"),
            "{ambiguous}: {:?}",
            r.json()
        );
    }
    assert!(
        h.standin.seen().is_empty(),
        "reached the upstream: {:?}",
        h.standin.seen().iter().map(|s| &s.path).collect::<Vec<_>>()
    );

    // Inside the prefix however it is spelled: allowed, and recorded resolved.
    let r = h
        .get(&read("dbfs:/FileStore//approved/./sub/../x.csv"), &sp)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        judged(&r),
        (
            "dbfs:/FileStore/approved/x.csv".to_owned(),
            "exception.approved".to_owned()
        )
    );
    assert_eq!(h.standin.seen().len(), 1);
}

/// An exception as it would be in a store, requested by alice, one approval needed (given
/// by erin when `status` is approved, in force for an hour from now).
fn stored(id: &str, subject: &str, scope: Scope, status: Status) -> Exception {
    let now = gatehouse::exceptions::now_ms();
    let approved = status == Status::Approved;
    Exception {
        id: id.into(),
        subject: Subject::parse(subject).unwrap(),
        scope,
        reason: "export the approved extract".into(),
        ticket: "CHG-9".into(),
        requester: "alice@bank.example".into(),
        requested_at: now,
        duration_ms: 3_600_000,
        required_approvals: 1,
        approvals: approved
            .then(|| Approval {
                approver: "erin@bank.example".into(),
                at: now,
                comment: None,
            })
            .into_iter()
            .collect(),
        status,
        approved_at: approved.then_some(now),
        expires_at: approved.then_some(now + 3_600_000),
        closed: None,
    }
}

/// sp-aiml-prod may read `dbfs:/FileStore/approved/` in prod-analytics.
fn approved_extract(id: &str, status: Status) -> Exception {
    let scope = Scope::Download {
        workspace: "prod-analytics".into(),
        actions: vec!["dbfs.read".into()],
        prefix: "dbfs:/FileStore/approved/".into(),
    };
    stored(id, "sp-aiml-prod", scope, status)
}

/// A new store directory already holding `exceptions`, as a gateway would find it at start;
/// the store's URL too.
async fn store_holding(exceptions: &[Exception]) -> (std::path::PathBuf, String) {
    let dir = tempfile::tempdir().unwrap().keep();
    let url = format!("sqlite://{}/gatehouse.db", dir.display());
    let store = Store::connect(&url).await.unwrap();
    for ex in exceptions {
        store.insert(ex).await.unwrap();
    }
    (dir, url)
}

/// Approving, rejecting and revoking take effect only once the trail has their record: while
/// it cannot take records, each is refused with 503 and the store is left as it was.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_step_the_trail_cannot_record_is_not_taken() {
    let before = [
        approved_extract("EXC-TOAPPROVE001", Status::Pending),
        approved_extract("EXC-TOREJECT0001", Status::Pending),
        approved_extract("EXC-TOREVOKE0001", Status::Approved),
    ];
    let (dir, url) = store_holding(&before).await;
    let first_segment = |audit_dir: &std::path::Path| {
        audit_dir.join(gatehouse::audit::segment::segment_name("gw-test", 1))
    };
    let h = common::s3::s3_harness_from(
        |standin| common::s3::s3_options(standin, &exceptions_toml(&dir.display().to_string())),
        |audit_dir| {
            std::fs::create_dir_all(audit_dir).unwrap();
            // The trail's segment lives on a full disk: every write fails with ENOSPC.
            std::os::unix::fs::symlink("/dev/full", first_segment(audit_dir)).unwrap();
        },
    )
    .await;
    let p = people(&h);
    for (id, verb) in [
        ("EXC-TOAPPROVE001", "approve"),
        ("EXC-TOREJECT0001", "reject"),
        ("EXC-TOREVOKE0001", "revoke"),
    ] {
        let (status, e) = step(&h, id, verb, &p.carol, Some(json!({"comment": "ok"}))).await;
        assert_eq!(
            (status, e["error_code"].as_str()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Some("TEMPORARILY_UNAVAILABLE")
            ),
            "{verb}: {e}"
        );
        assert!(
            e["message"].as_str().unwrap().contains("audit trail"),
            "{e}"
        );
    }
    // Nor is a new request taken.
    let (status, _) = ask_download(&h, "sp-aiml-prod", "dbfs:/FileStore/other/", "1h").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // The store holds exactly what it held.
    let store = Store::connect(&url).await.unwrap();
    for ex in &before {
        assert_eq!(store.get(&ex.id).await.unwrap(), Some((ex.clone(), 1)));
    }
    assert_eq!(
        store
            .list(None, None, None, i64::MAX, 100)
            .await
            .unwrap()
            .len(),
        3
    );

    // Space comes back: the approval is recorded, then taken; the refused steps left no
    // record behind.
    std::fs::remove_file(first_segment(&h.fixture.audit_dir)).unwrap();
    let (status, ex) = step(&h, "EXC-TOAPPROVE001", "approve", &p.carol, None).await;
    assert_eq!(
        (status, ex["status"].as_str()),
        (StatusCode::OK, Some("approved")),
        "{ex}"
    );
    let steps: Vec<(String, String)> = h
        .trail()
        .into_iter()
        .filter(|r| r["phase"] == "exception")
        .map(|r| {
            (
                r["event"].as_str().unwrap().to_owned(),
                r["exception"]["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [("approve".to_owned(), "EXC-TOAPPROVE001".to_owned())]
    );
}

/// A `gatehouse serve` process: killed when dropped.
struct Process {
    child: std::process::Child,
    data: String,
    admin: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(config: &std::path::Path) -> Process {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addr = |what: &str| {
        let line = lines.next().unwrap().unwrap();
        let rest = line
            .strip_prefix(&format!("gatehouse listening {what}="))
            .unwrap_or_else(|| panic!("{line}"));
        rest.split_whitespace().next().unwrap().to_owned()
    };
    let data = addr("data");
    let admin = addr("admin");
    Process { child, data, admin }
}

/// `gatehouse exceptions …` as an approver would run it: exit code, stdout, stderr.
fn cli(admin: &str, ca: &std::path::Path, token: &str, args: &[&str]) -> (i32, String, String) {
    let port = admin.rsplit(':').next().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .arg("exceptions")
        .args(args)
        .env("GATEHOUSE_ADMIN", format!("https://localhost:{port}"))
        .env("GATEHOUSE_TOKEN", token)
        .env("GATEHOUSE_CACERT", ca)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A DBFS read through a gateway process; the status.
async fn dbfs_read(p: &Process, ca: &std::path::Path, token: &str, path: &str) -> StatusCode {
    use http_body_util::BodyExt;
    let port = p.data.rsplit(':').next().unwrap();
    let client = gatehouse::testing::local_client(ca, false).unwrap();
    let req = http::Request::get(format!(
        "https://{}:{port}/api/2.0/dbfs/read?path={path}",
        gatehouse::testing::ANALYTICS_HOST
    ))
    .header("authorization", format!("Bearer {token}"))
    .body(http_body_util::Full::new(bytes::Bytes::new()))
    .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    status
}

/// The approvers' CLI against one gateway process, and, when a PostgreSQL server is given
/// (GATEHOUSE_TEST_POSTGRES; CI always gives one), a second process sharing the store that
/// enforces each change within a second.
#[tokio::test]
async fn the_cli_drives_the_workflow_and_gateways_sharing_a_store_agree_within_a_second() {
    let standin = gatehouse::standin::StandIn::start().await.unwrap();
    let root = tempfile::tempdir().unwrap();
    let store = std::env::var("GATEHOUSE_TEST_POSTGRES")
        .ok()
        .filter(|u| !u.is_empty());
    if store.is_none() {
        eprintln!("GATEHOUSE_TEST_POSTGRES not set: one gateway on SQLite only");
    }
    let store_url = store
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}/gatehouse.db", root.path().display()));
    let fixture = |name: &str| {
        gatehouse::testing::Fixture::create(
            &root.path().join(name),
            &standin.url(),
            &gatehouse::testing::FixtureOptions {
                extra_toml: format!(
                    "[exceptions]\nstore = \"{store_url}\"\napprover_groups = [\"cdao-approvers\"]\n"
                ),
                ..Default::default()
            },
        )
        .unwrap()
    };
    let fa = fixture("a");
    let a = serve(&fa.config_path);
    let alice = fa.token("alice@bank.example", "user", &["data-scientists"]);
    let carol = fa.token("carol@bank.example", "user", &["cdao-approvers"]);
    let sp = fa.token("sp-aiml-prod", "service_principal", &[]);
    let approved = "dbfs:/FileStore/approved/x.csv";

    let (code, out, err) = cli(
        &a.admin,
        &fa.ca_cert,
        &alice,
        &[
            "request",
            "--kind",
            "download",
            "--subject",
            "sp-aiml-prod",
            "--workspace",
            "prod-analytics",
            "--actions",
            "dbfs.read",
            "--prefix",
            "dbfs:/FileStore/approved/",
            "--reason",
            "export the approved extract",
            "--ticket",
            "CHG-9",
            "--duration",
            "1d",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let id = out.lines().last().unwrap().trim().to_owned();
    assert!(id.starts_with("EXC-"), "{out}");
    assert!(
        !out.contains(&alice) && !err.contains(&alice),
        "the token is never printed"
    );

    let (code, _, err) = cli(&a.admin, &fa.ca_cert, &alice, &["approve", &id]);
    assert_ne!(code, 0);
    assert!(
        err.contains("403") && err.contains("NOT_AN_APPROVER"),
        "{err}"
    );
    let (code, _, err) = cli(&a.admin, &fa.ca_cert, "not-a-jwt", &["list"]);
    assert_ne!(code, 0);
    assert!(err.contains("401"), "{err}");

    let (fb, b) = match &store {
        Some(_) => {
            let fb = fixture("b");
            let b = serve(&fb.config_path);
            (Some(fb), Some(b))
        }
        None => (None, None),
    };
    let (code, out, err) = cli(
        &a.admin,
        &fa.ca_cert,
        &carol,
        &["approve", &id, "--comment", "ticket checked"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("approved"), "{out}");
    assert_eq!(
        dbfs_read(&a, &fa.ca_cert, &sp, approved).await,
        StatusCode::OK
    );
    if let (Some(fb), Some(b)) = (&fb, &b) {
        let sp_b = fb.token("sp-aiml-prod", "service_principal", &[]);
        within(Duration::from_secs(1), async || {
            dbfs_read(b, &fb.ca_cert, &sp_b, approved).await == StatusCode::OK
        })
        .await;
        // Revoked through the other gateway: closed on the first within a second too.
        let carol_b = fb.token("carol@bank.example", "user", &["cdao-approvers"]);
        let (code, out, err) = cli(&b.admin, &fb.ca_cert, &carol_b, &["revoke", &id]);
        assert_eq!(code, 0, "{out}{err}");
        within(Duration::from_secs(1), async || {
            dbfs_read(&a, &fa.ca_cert, &sp, approved).await == StatusCode::FORBIDDEN
        })
        .await;
    } else {
        let (code, out, err) = cli(&a.admin, &fa.ca_cert, &carol, &["revoke", &id]);
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(
            dbfs_read(&a, &fa.ca_cert, &sp, approved).await,
            StatusCode::FORBIDDEN
        );
    }
    let (code, out, _) = cli(
        &a.admin,
        &fa.ca_cert,
        &alice,
        &["list", "--status", "revoked", "--json"],
    );
    assert_eq!(code, 0);
    let listed: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(listed.iter().any(|e| e["id"] == id.as_str()), "{out}");
    let (code, out, _) = cli(&a.admin, &fa.ca_cert, &alice, &["show", &id]);
    assert_eq!(code, 0);
    assert!(
        out.contains("ticket checked") && out.contains("closed:"),
        "{out}"
    );

    // A clean stop still closes the trail: nothing the exception service holds keeps it open.
    let mut a = a;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &a.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(a.child.wait().unwrap().success());
    let trail = gatehouse::testing::read_trail(&fa.audit_dir);
    assert_eq!(trail.last().unwrap()["phase"], "stop");
    assert!(trail
        .iter()
        .any(|r| r["phase"] == "exception" && r["event"] == "approve"));
}

/// Issue 15.2: a raw-bucket exception for `landing/` (list and write). A `prefix` parameter
/// counts only on listings, so bucket sub-resources carrying one are not covered; a
/// `DeleteObjects` is decided on the keys of its body, every one of which must be covered,
/// and the trail names them all.
#[tokio::test]
async fn delete_objects_is_decided_per_key_and_prefix_parameters_cover_only_listings() {
    use gatehouse::exceptions::model::Op;
    let scope = Scope::RawBucket {
        bucket: "buk-raw-landing".into(),
        prefix: "landing/".into(),
        ops: vec![Op::List, Op::Write],
    };
    let (dir, _) = store_holding(&[stored(
        "EXC-LANDINGWRITE",
        "sp-aiml-lab",
        scope,
        Status::Approved,
    )])
    .await;
    let h = s3_harness_with(&exceptions_toml(&dir.display().to_string())).await;
    let get = |target: &str| request(&h, "GET", target, LAB_KEY, "", "");
    assert!(
        send(&h, get("/buk-raw-landing?list-type=2&prefix=landing/"))
            .await
            .starts_with("HTTP/1.1 200")
    );
    for target in [
        "/buk-raw-landing?acl&prefix=landing/",
        "/buk-raw-landing?location&prefix=landing/",
        "/buk-raw-landing?policy&prefix=landing/",
    ] {
        let answer = send(&h, get(target)).await;
        assert!(
            answer.starts_with("HTTP/1.1 403") && answer.contains("buckets.raw_blocked"),
            "{target}: {answer}"
        );
    }
    assert_eq!(h.standin.seen().len(), 1);

    let delete = |keys: &[&str]| {
        let objects: String = keys
            .iter()
            .map(|k| format!("<Object><Key>{k}</Key></Object>"))
            .collect();
        let body = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Delete xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">{objects}<Quiet>true</Quiet></Delete>");
        request(
            &h,
            "POST",
            "/buk-raw-landing?delete&prefix=landing/",
            LAB_KEY,
            "Content-MD5: AAAAAAAAAAAAAAAAAAAAAA==\r\n",
            &body,
        )
    };
    // All under the prefix: forwarded byte for byte, every key recorded.
    let raw = delete(&["landing/a.csv", "landing/b &amp; c.csv"]);
    let sent_body = raw.split("\r\n\r\n").nth(1).unwrap().to_owned();
    let answer = send(&h, raw).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = h.standin.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].body_len, sent_body.len());
    assert_eq!(seen[1].headers["content-md5"], "AAAAAAAAAAAAAAAAAAAAAA==");
    let last_decision = || {
        h.trail()
            .into_iter()
            .rfind(|r| r["phase"] == "decision")
            .unwrap()
    };
    let decision = last_decision();
    assert_eq!(decision["action"]["name"], "DeleteObjects");
    assert_eq!(decision["decision"]["exception"], "EXC-LANDINGWRITE");
    assert_eq!(
        decision["asset"]["keys"],
        json!(["landing/a.csv", "landing/b & c.csv"])
    );
    // One key outside the prefix: the whole request is refused, and recorded with its keys.
    let answer = send(&h, delete(&["landing/a.csv", "pii/customers.csv"])).await;
    assert!(
        answer.starts_with("HTTP/1.1 403") && answer.contains("pii/customers.csv"),
        "{answer}"
    );
    let decision = last_decision();
    assert_eq!(decision["decision"]["effect"], "deny");
    assert_eq!(
        decision["asset"]["keys"],
        json!(["landing/a.csv", "pii/customers.csv"])
    );
    // A body S3 could read otherwise: refused unread.
    let answer = send(&h, delete(&["landing/../pii<!---->/customers.csv"])).await;
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("request.malformed"),
        "{answer}"
    );
    assert_eq!(
        h.standin.seen().len(),
        2,
        "nothing refused reached the bucket"
    );
}
