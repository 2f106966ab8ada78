use super::*;

fn limits() -> Limits {
    Limits {
        approver_groups: vec!["cdao-approvers".into()],
        max_days: 30,
        required: Required::default(),
        workspaces: vec![
            "prod-analytics".into(),
            "prod-parallel".into(),
            "prod".into(),
        ],
        people_denied: vec!["prod".into()],
        raw_buckets: vec!["raw-bucket".into()],
        download_actions: vec!["dbfs.read".into(), "files.download".into()],
    }
}

fn person(id: &str, groups: &[&str]) -> Actor {
    Actor {
        id: id.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

fn approver(id: &str) -> Actor {
    person(id, &["cdao-approvers"])
}

const HOUR: Millis = 3_600_000;

fn raw_request() -> NewRequest {
    NewRequest {
        subject: Subject::Principal("alice@bank.test".into()),
        scope: Scope::RawBucket {
            bucket: "raw-bucket".into(),
            prefix: "landing/".into(),
            ops: vec![Op::Read, Op::List],
        },
        reason: "reconcile the landing feed".into(),
        ticket: "CHG-1".into(),
        duration_ms: 4 * HOUR,
    }
}

fn requested(new: NewRequest) -> Exception {
    request(
        new,
        &person("alice@bank.test", &["data-scientists"]),
        "EXC-1".into(),
        1_000,
        &limits(),
    )
    .unwrap()
}

fn refused(r: Result<Exception, Refusal>) -> (u16, &'static str) {
    let e = r.expect_err("must be refused");
    (e.status, e.code)
}

#[test]
fn a_request_needs_a_reason_a_ticket_and_a_duration_within_max_days() {
    let alice = person("alice@bank.test", &[]);
    let try_with = |f: &dyn Fn(&mut NewRequest)| {
        let mut new = raw_request();
        f(&mut new);
        request(new, &alice, "E".into(), 0, &limits())
    };
    assert_eq!(
        refused(try_with(&|n| n.reason = "  ".into())),
        (422, "INVALID_REQUEST")
    );
    assert_eq!(
        refused(try_with(&|n| n.ticket.clear())),
        (422, "INVALID_REQUEST")
    );
    assert_eq!(
        refused(try_with(&|n| n.duration_ms = 0)),
        (422, "INVALID_REQUEST")
    );
    assert_eq!(
        refused(try_with(&|n| n.duration_ms = 31 * 24 * HOUR)),
        (422, "INVALID_REQUEST")
    );
    let ok = try_with(&|n| n.duration_ms = 30 * 24 * HOUR).unwrap();
    assert_eq!(ok.status, Status::Pending);
    assert_eq!(
        ok.required_approvals, 2,
        "raw-bucket needs two approvers by default"
    );
    assert_eq!(ok.requester, "alice@bank.test");
    assert_eq!(ok.expires_at, None, "the clock starts at approval");
}

#[test]
fn scopes_broader_than_allowed_are_refused() {
    let alice = person("alice@bank.test", &[]);
    let with_scope = |scope: Scope| {
        let new = NewRequest {
            scope,
            ..raw_request()
        };
        refused(request(new, &alice, "E".into(), 0, &limits()))
    };
    let raw = |bucket: &str, prefix: &str, ops: Vec<Op>| Scope::RawBucket {
        bucket: bucket.into(),
        prefix: prefix.into(),
        ops,
    };
    let too_broad = (422, "SCOPE_TOO_BROAD");
    assert_eq!(with_scope(raw("raw-bucket", "", vec![Op::Read])), too_broad);
    assert_eq!(
        with_scope(raw("raw-bucket", "/", vec![Op::Read])),
        too_broad
    );
    assert_eq!(
        with_scope(raw("raw-bucket", "land*", vec![Op::Read])),
        too_broad
    );
    assert_eq!(with_scope(raw("raw-bucket", "landing/", vec![])), too_broad);
    assert_eq!(
        with_scope(raw("lab-bucket", "landing/", vec![Op::Read])),
        too_broad
    );
    let download = |actions: &[&str], prefix: &str| Scope::Download {
        workspace: "prod-analytics".into(),
        actions: actions.iter().map(|a| a.to_string()).collect(),
        prefix: prefix.into(),
    };
    assert_eq!(with_scope(download(&["dbfs.read"], "dbfs:/")), too_broad);
    assert_eq!(
        with_scope(download(&["clusters.list"], "dbfs:/x/")),
        too_broad
    );
    assert_eq!(with_scope(download(&[], "dbfs:/x/")), too_broad);
    let access = |categories: &[&str]| Scope::WorkspaceAccess {
        workspace: "prod-parallel".into(),
        categories: categories.iter().map(|c| c.to_string()).collect(),
    };
    assert_eq!(with_scope(access(&["download"])), too_broad);
    assert_eq!(with_scope(access(&[])), too_broad);
    let unknown = Scope::WorkspaceAccess {
        workspace: "nowhere".into(),
        categories: vec!["metadata".into()],
    };
    assert_eq!(with_scope(unknown), too_broad);
    // What is narrow enough passes, with one approval needed.
    let ok = request(
        NewRequest {
            scope: download(&["dbfs.read"], "dbfs:/FileStore/approved/"),
            ..raw_request()
        },
        &alice,
        "E".into(),
        0,
        &limits(),
    )
    .unwrap();
    assert_eq!(ok.required_approvals, 1);
    // Prefixes are kept resolved, as assets are; one that cannot be is refused.
    let prefix_of = |prefix: &str| {
        let new = NewRequest {
            scope: download(&["dbfs.read"], prefix),
            ..raw_request()
        };
        request(new, &alice, "E".into(), 0, &limits()).map(|e| match e.scope {
            Scope::Download { prefix, .. } => prefix,
            _ => unreachable!(),
        })
    };
    assert_eq!(
        prefix_of("DBFS:/FileStore//approved/./").unwrap(),
        "dbfs:/FileStore/approved/"
    );
    assert_eq!(
        prefix_of("dbfs:/Volumes/c/s/v/").unwrap(),
        "/Volumes/c/s/v/"
    );
    assert_eq!(
        refused(prefix_of("dbfs:/FileStore/approved/../../..").map(|_| raw_ex())),
        (422, "INVALID_REQUEST")
    );
    assert_eq!(
        refused(prefix_of("dbfs:/FileStore/..").map(|_| raw_ex())),
        too_broad,
        "resolves to the root"
    );
    assert_eq!(
        refused(prefix_of("dbfs:/FileStore/a%2Fb/").map(|_| raw_ex())),
        (422, "INVALID_REQUEST")
    );
}

fn raw_ex() -> Exception {
    requested(raw_request())
}

#[test]
fn workspace_access_is_never_requested_for_a_workspace_that_denies_people() {
    let access = |workspace: &str| NewRequest {
        subject: Subject::Principal("bob@bank.test".into()),
        scope: Scope::WorkspaceAccess {
            workspace: workspace.into(),
            categories: vec!["metadata".into()],
        },
        ..raw_request()
    };
    let alice = person("alice@bank.test", &[]);
    let e = request(access("prod"), &alice, "E".into(), 0, &limits())
        .expect_err("no interactive access in production");
    assert_eq!((e.status, e.code), (422, "NO_INTERACTIVE_ACCESS"));
    assert!(
        e.message.contains("no interactive access in production") && e.message.contains("prod"),
        "{}",
        e.message
    );
    // For a group too, and whatever the categories.
    let mut for_group = access("prod");
    for_group.subject = Subject::Group("data-scientists".into());
    assert_eq!(
        refused(request(for_group, &alice, "E".into(), 0, &limits())),
        (422, "NO_INTERACTIVE_ACCESS")
    );
    // Download exceptions for service principals there stay possible.
    let download = NewRequest {
        subject: Subject::Principal("sp-aiml-prod".into()),
        scope: Scope::Download {
            workspace: "prod".into(),
            actions: vec!["dbfs.read".into()],
            prefix: "dbfs:/FileStore/approved/".into(),
        },
        ..raw_request()
    };
    assert!(request(download, &alice, "E".into(), 0, &limits()).is_ok());
    assert!(request(access("prod-parallel"), &alice, "E".into(), 0, &limits()).is_ok());
}

#[test]
fn only_approvers_approve_nobody_their_own_and_each_counts_once() {
    let ex = requested(raw_request());
    assert_eq!(
        refused(approve(
            ex.clone(),
            &person("mallory", &["data-scientists"]),
            None,
            2_000,
            &limits()
        )),
        (403, "NOT_AN_APPROVER")
    );
    // The requester (and the subject) cannot approve, even as an approver.
    assert_eq!(
        refused(approve(
            ex.clone(),
            &approver("alice@bank.test"),
            None,
            2_000,
            &limits()
        )),
        (403, "SELF_APPROVAL")
    );
    let for_dave = requested(NewRequest {
        subject: Subject::Principal("dave".into()),
        ..raw_request()
    });
    assert_eq!(
        refused(approve(for_dave, &approver("dave"), None, 2_000, &limits())),
        (403, "SELF_APPROVAL")
    );

    let once = approve(ex, &approver("carol"), Some("ok".into()), 2_000, &limits()).unwrap();
    assert_eq!(
        once.status,
        Status::Pending,
        "raw-bucket needs a second approver"
    );
    assert_eq!(
        refused(approve(
            once.clone(),
            &approver("carol"),
            None,
            3_000,
            &limits()
        )),
        (409, "ALREADY_APPROVED")
    );
    let twice = approve(once, &approver("erin"), None, 5_000, &limits()).unwrap();
    assert_eq!(twice.status, Status::Approved);
    assert_eq!(twice.approved_at, Some(5_000));
    assert_eq!(
        twice.expires_at,
        Some(5_000 + 4 * HOUR),
        "the clock starts at the final approval"
    );
    assert_eq!(twice.approvals.len(), 2);
    assert_eq!(twice.approvals[0].comment.as_deref(), Some("ok"));
    assert_eq!(
        refused(approve(twice, &approver("frank"), None, 6_000, &limits())),
        (409, "NOT_PENDING")
    );
}

#[test]
fn nobody_approves_an_exception_for_a_group_they_are_in() {
    let for_team = requested(NewRequest {
        subject: Subject::Group("aiml-engineering".into()),
        ..raw_request()
    });
    // By the groups the approver holds now, whichever way round they are listed.
    let member = person("carol", &["aiml-engineering", "cdao-approvers"]);
    let e = approve(for_team.clone(), &member, None, 2_000, &limits())
        .expect_err("a member of the subject group is refused");
    assert_eq!((e.status, e.code), (403, "SELF_APPROVAL"));
    assert!(
        e.message.contains("group:aiml-engineering") && e.message.contains("member"),
        "the refusal says why: {}",
        e.message
    );
    // Group names are compared exactly: a similar name is another group.
    let near = person(
        "erin",
        &["cdao-approvers", "aiml-engineering-ro", "AIML-Engineering"],
    );
    assert!(approve(for_team.clone(), &near, None, 2_000, &limits()).is_ok());
    // An approver outside the group approves; the group's member may still reject.
    assert!(approve(for_team.clone(), &approver("dave"), None, 2_000, &limits()).is_ok());
    assert_eq!(
        reject(for_team, &member, None, 2_000, &limits())
            .unwrap()
            .status,
        Status::Rejected
    );
}

#[test]
fn expiry_needs_nobody_and_closed_exceptions_stay_closed() {
    let mut l = limits();
    l.required.raw_bucket = 1;
    let ex = request(
        raw_request(),
        &person("alice@bank.test", &[]),
        "E".into(),
        0,
        &l,
    )
    .unwrap();
    let on = approve(ex, &approver("carol"), None, 10, &l).unwrap();
    assert!(on.in_force_at(10));
    assert!(on.in_force_at(10 + 4 * HOUR - 1));
    assert_eq!(on.status_at(10 + 4 * HOUR), Status::Expired);
    assert_eq!(
        on.status,
        Status::Approved,
        "nothing was written to expire it"
    );
    assert_eq!(
        refused(revoke(
            on.clone(),
            &approver("carol"),
            None,
            10 + 4 * HOUR,
            &l
        )),
        (409, "CLOSED")
    );
    // Revocation by the requester takes effect at once.
    let off = revoke(
        on,
        &person("alice@bank.test", &[]),
        Some("done early".into()),
        100,
        &l,
    )
    .unwrap();
    assert_eq!(off.status_at(101), Status::Revoked);
    assert!(!off.in_force_at(101));
    assert_eq!(off.closed.as_ref().unwrap().by, "alice@bank.test");
    assert_eq!(off.approvals.len(), 1, "history is kept");
}

#[test]
fn rejection_and_revocation_follow_who_may_act() {
    let ex = requested(raw_request());
    assert_eq!(
        refused(reject(
            ex.clone(),
            &person("alice@bank.test", &[]),
            None,
            2,
            &limits()
        )),
        (403, "NOT_AN_APPROVER")
    );
    assert_eq!(
        refused(revoke(
            ex.clone(),
            &person("mallory", &[]),
            None,
            2,
            &limits()
        )),
        (403, "NOT_ALLOWED")
    );
    let rejected = reject(
        ex.clone(),
        &approver("carol"),
        Some("no ticket".into()),
        2,
        &limits(),
    )
    .unwrap();
    assert_eq!(rejected.status, Status::Rejected);
    assert_eq!(
        refused(approve(
            rejected.clone(),
            &approver("erin"),
            None,
            3,
            &limits()
        )),
        (409, "NOT_PENDING")
    );
    assert_eq!(
        refused(revoke(rejected, &approver("erin"), None, 3, &limits())),
        (409, "CLOSED")
    );
    // An approver may withdraw a pending request too.
    let withdrawn = revoke(ex, &approver("erin"), None, 3, &limits()).unwrap();
    assert_eq!(withdrawn.status, Status::Revoked);
}

#[test]
fn subjects_and_scopes_round_trip_through_json() {
    assert_eq!(
        Subject::parse("group:ds"),
        Some(Subject::Group("ds".into()))
    );
    assert_eq!(Subject::parse("group:"), None);
    assert_eq!(Subject::parse(" "), None);
    let ex = requested(raw_request());
    let text = serde_json::to_string(&ex).unwrap();
    assert!(text.contains(r#""subject":"alice@bank.test""#), "{text}");
    assert!(text.contains(r#""kind":"raw-bucket""#), "{text}");
    let back: Exception = serde_json::from_str(&text).unwrap();
    assert_eq!(back, ex);
}
