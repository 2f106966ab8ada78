use super::*;
use crate::classify::Category;
use crate::config::UnknownApi;
use crate::identity::AuthMethod;
use crate::policy::NoExceptions;

fn sp(id: &str) -> Principal {
    Principal {
        id: id.into(),
        kind: PrincipalKind::ServicePrincipal,
        groups: vec![],
        auth: AuthMethod::S3Key,
    }
}

fn person(id: &str) -> Principal {
    Principal {
        kind: PrincipalKind::User,
        ..sp(id)
    }
}

fn buckets() -> Vec<BucketConfig> {
    vec![
        BucketConfig {
            name: "buk-aiml-lab".into(),
            class: BucketClass::Lab,
            workspaces: vec!["prod-analytics".into()],
            retention_days: 90,
            readers: vec![],
            governance_admins: vec![],
        },
        BucketConfig {
            name: "buk-raw".into(),
            class: BucketClass::Raw,
            workspaces: vec![],
            retention_days: 90,
            readers: vec![],
            governance_admins: vec![],
        },
        BucketConfig {
            name: "buk-prod-out".into(),
            class: BucketClass::ProdOutput,
            workspaces: vec![],
            retention_days: 90,
            readers: vec!["sp-edp-sync".into()],
            governance_admins: vec!["sp-platform-admin".into()],
        },
    ]
}

fn rules() -> Rules {
    Rules {
        deny_groups: vec!["tenant-martech".into()],
        unknown_api: UnknownApi::Deny,
        report_only: Default::default(),
    }
}

const GET: Action = Action::new("GetObject", Category::Download);
const PUT: Action = Action::new("PutObject", Category::Upload);
const LIST: Action = Action::new("ListObjectsV2", Category::Metadata);
const COPY: Action = Action::new("CopyObject", Category::Upload);
const DELETE_LIFECYCLE: Action = Action::new("DeleteBucketLifecycle", Category::Config);
const PUT_LIFECYCLE: Action = Action::new("PutBucketLifecycleConfiguration", Category::Config);
const PUT_POLICY: Action = Action::new("PutBucketPolicy", Category::Config);
const LIST_BUCKETS: Action = Action::new("ListBuckets", Category::Metadata);

fn req<'a>(action: &'a Action, access: S3Access, bucket: &'a str) -> BucketRequest<'a> {
    BucketRequest {
        action,
        access,
        bucket: (!bucket.is_empty()).then_some(bucket),
        key: Some("k"),
        copy_source: None,
        config_body: None,
        list_prefix: None,
        object_lock: false,
        delete_keys: None,
        public_grant: None,
    }
}

fn rule(p: &Principal, ws: Option<&str>, r: &BucketRequest<'_>) -> (Effect, &'static str) {
    let list = buckets();
    let d = decide(&rules(), p, ws, &Buckets { list: &list }, r, &NoExceptions);
    (d.effect, d.rule)
}

#[test]
fn the_bucket_table() {
    use Effect::{Allow as A, Deny as D};
    let lab_sp = sp("sp-aiml-lab");
    let prod_sp = sp("sp-aiml-prod");
    let sync = sp("sp-edp-sync");
    let alice = person("alice@bank.example");
    let lab = Some("prod-analytics");
    let prod = Some("prod");
    type Case<'a> = (
        &'a Principal,
        Option<&'a str>,
        BucketRequest<'a>,
        (Effect, &'a str),
    );
    let cases: Vec<Case> = vec![
        (
            &lab_sp,
            lab,
            req(&GET, S3Access::ReadData, "buk-aiml-lab"),
            (A, "default.allow"),
        ),
        (
            &lab_sp,
            lab,
            req(&PUT, S3Access::WriteData, "buk-aiml-lab"),
            (A, "default.allow"),
        ),
        (
            &alice,
            lab,
            req(&LIST, S3Access::List, "buk-aiml-lab"),
            (A, "default.allow"),
        ),
        (
            &prod_sp,
            prod,
            req(&GET, S3Access::ReadData, "buk-aiml-lab"),
            (D, "buckets.lab_workspace"),
        ),
        (
            &lab_sp,
            None,
            req(&GET, S3Access::ReadData, "buk-aiml-lab"),
            (D, "buckets.lab_workspace"),
        ),
        (
            &lab_sp,
            lab,
            req(&GET, S3Access::ReadData, "buk-raw"),
            (D, "buckets.raw_blocked"),
        ),
        (
            &lab_sp,
            lab,
            req(&LIST, S3Access::List, "buk-raw"),
            (D, "buckets.raw_blocked"),
        ),
        (
            &prod_sp,
            prod,
            req(&PUT, S3Access::WriteData, "buk-raw"),
            (D, "buckets.raw_blocked"),
        ),
        (
            &lab_sp,
            lab,
            req(&GET, S3Access::ReadData, "buk-nobody-knows"),
            (D, "buckets.unknown"),
        ),
        (
            &prod_sp,
            prod,
            req(&PUT, S3Access::WriteData, "buk-prod-out"),
            (A, "default.allow"),
        ),
        (
            &lab_sp,
            lab,
            req(&PUT, S3Access::WriteData, "buk-prod-out"),
            (D, "buckets.prod_output_writer"),
        ),
        (
            &sync,
            None,
            req(&GET, S3Access::ReadData, "buk-prod-out"),
            (A, "default.allow"),
        ),
        (
            &sync,
            None,
            req(&PUT, S3Access::WriteData, "buk-prod-out"),
            (D, "buckets.prod_output_writer"),
        ),
        (
            &lab_sp,
            lab,
            req(&GET, S3Access::ReadData, "buk-prod-out"),
            (D, "buckets.prod_output_reader"),
        ),
        (
            &alice,
            prod,
            req(&GET, S3Access::ReadData, "buk-prod-out"),
            (D, "buckets.prod_output_people"),
        ),
        (
            &lab_sp,
            lab,
            req(&DELETE_LIFECYCLE, S3Access::ChangeBucket, "buk-aiml-lab"),
            (D, "buckets.lab_retention"),
        ),
        (
            &lab_sp,
            lab,
            req(&PUT_POLICY, S3Access::ChangeBucket, "buk-aiml-lab"),
            (D, "buckets.public_grant"),
        ),
        (
            &lab_sp,
            lab,
            req(&PUT_LIFECYCLE, S3Access::ChangeBucket, "buk-aiml-lab"),
            (D, "buckets.lab_retention"),
        ),
        (
            &lab_sp,
            lab,
            req(&LIST_BUCKETS, S3Access::ListBuckets, ""),
            (A, "buckets.list_all"),
        ),
    ];
    for (p, ws, r, expected) in cases {
        assert_eq!(
            rule(p, ws, &r),
            expected,
            "{} {:?} {:?}",
            p.id,
            r.action.name,
            r.bucket
        );
    }
}

#[test]
fn a_lifecycle_change_is_allowed_only_when_it_keeps_the_retention() {
    let p = sp("sp-aiml-lab");
    let mut r = req(&PUT_LIFECYCLE, S3Access::ChangeBucket, "buk-aiml-lab");
    r.config_body = Some(ConfigVerdict::Keeps);
    assert_eq!(rule(&p, Some("prod-analytics"), &r).0, Effect::Allow);
    r.config_body = Some(ConfigVerdict::Weakens("longer"));
    assert_eq!(
        rule(&p, Some("prod-analytics"), &r),
        (Effect::Deny, "buckets.lab_retention")
    );
}

#[test]
fn a_copy_is_decided_on_its_source_and_its_destination() {
    let p = sp("sp-aiml-lab");
    let ws = Some("prod-analytics");
    let mut r = req(&COPY, S3Access::WriteData, "buk-aiml-lab");
    r.copy_source = Some(("buk-raw", "x"));
    let (effect, rule_id) = rule(&p, ws, &r);
    assert_eq!((effect, rule_id), (Effect::Deny, "buckets.raw_blocked"));
    r.copy_source = Some(("buk-aiml-lab", "y"));
    assert_eq!(rule(&p, ws, &r).0, Effect::Allow);
    r.copy_source = Some(("", "z"));
    assert_eq!(rule(&p, ws, &r), (Effect::Deny, "buckets.unknown"));
}

#[test]
fn tenants_are_denied_everywhere() {
    let mut p = sp("sp-martech");
    p.groups = vec!["tenant-martech".into()];
    let r = req(&GET, S3Access::ReadData, "buk-aiml-lab");
    assert_eq!(
        rule(&p, Some("prod-analytics"), &r),
        (Effect::Deny, "principal.denied_group")
    );
}

/// An exception for everything under `landing/` of the raw bucket, whatever the operation:
/// what the policy hands the exceptions is all that bounds it.
struct LandingOnly;

impl crate::policy::Exceptions for LandingOnly {
    fn covering(
        &self,
        _: crate::policy::ExceptionKind,
        _: &Principal,
        _: &str,
        _: &Action,
        asset: Option<&Asset>,
    ) -> Option<String> {
        asset
            .is_some_and(|a| a.path.starts_with("s3://buk-raw/landing/"))
            .then(|| "EXC-1".to_owned())
    }
}

#[test]
fn only_a_listing_is_matched_by_its_prefix_parameter() {
    let p = sp("sp-aiml-lab");
    let list = buckets();
    let decide_with = |r: &BucketRequest<'_>| {
        let d = decide(
            &rules(),
            &p,
            Some("prod-analytics"),
            &Buckets { list: &list },
            r,
            &LandingOnly,
        );
        (d.effect, d.exception)
    };
    let mut listing = req(&LIST, S3Access::List, "buk-raw");
    listing.key = None;
    listing.list_prefix = Some("landing/");
    assert_eq!(decide_with(&listing), (Effect::Allow, Some("EXC-1".into())));
    // `POST /buk-raw?delete&prefix=landing/`: the keys it deletes are in its body.
    let delete_objects = Action::new("DeleteObjects", Category::Upload);
    let mut batch = req(&delete_objects, S3Access::WriteData, "buk-raw");
    batch.key = None;
    batch.list_prefix = Some("landing/");
    assert_eq!(decide_with(&batch), (Effect::Deny, None));
    // Decided per key from its body: all covered, or the whole request is refused.
    let covered = ["landing/a.csv".to_owned(), "landing/b/c.csv".to_owned()];
    batch.delete_keys = Some(&covered);
    assert_eq!(decide_with(&batch), (Effect::Allow, Some("EXC-1".into())));
    let one_outside = [
        "landing/a.csv".to_owned(),
        "pii/customers.csv".to_owned(),
        "landing/b.csv".to_owned(),
    ];
    batch.delete_keys = Some(&one_outside);
    assert_eq!(decide_with(&batch), (Effect::Deny, None));
    let none: [String; 0] = [];
    batch.delete_keys = Some(&none);
    assert_eq!(decide_with(&batch), (Effect::Deny, None));
    // Bucket-level sub-resources are never covered by a prefix, whatever the query says.
    let acl = Action::new("GetBucketAcl", Category::Metadata);
    let location = Action::new("GetBucketLocation", Category::Metadata);
    let policy = Action::new("GetBucketPolicy", Category::Metadata);
    for action in [&acl, &location, &policy] {
        let mut r = req(action, S3Access::ReadMetadata, "buk-raw");
        r.key = None;
        r.list_prefix = Some("landing/");
        assert_eq!(decide_with(&r), (Effect::Deny, None), "{}", action.name);
    }
}

/// Object Lock would keep objects past the lab's retention, beyond the lifecycle's reach.
#[test]
fn nothing_locks_objects_in_a_lab_bucket() {
    let p = sp("sp-aiml-lab");
    let ws = Some("prod-analytics");
    let lock_configuration = Action::new("PutObjectLockConfiguration", Category::Config);
    let retention = Action::new("PutObjectRetention", Category::Upload);
    let legal_hold = Action::new("PutObjectLegalHold", Category::Upload);
    let post = Action::new("PostObject", Category::Upload);
    let create_upload = Action::new("CreateMultipartUpload", Category::Upload);
    for r in [
        req(&lock_configuration, S3Access::ChangeBucket, "buk-aiml-lab"),
        req(&retention, S3Access::WriteData, "buk-aiml-lab"),
        req(&legal_hold, S3Access::WriteData, "buk-aiml-lab"),
        req(&post, S3Access::WriteData, "buk-aiml-lab"),
    ] {
        assert_eq!(
            rule(&p, ws, &r),
            (Effect::Deny, "buckets.lab_retention"),
            "{}",
            r.action.name
        );
    }
    // Writes that would set a lock on the object they create.
    for action in [&PUT, &COPY, &create_upload] {
        let mut r = req(action, S3Access::WriteData, "buk-aiml-lab");
        assert_eq!(rule(&p, ws, &r).0, Effect::Allow, "{}", action.name);
        r.object_lock = true;
        assert_eq!(
            rule(&p, ws, &r),
            (Effect::Deny, "buckets.lab_retention"),
            "{} with object-lock headers",
            action.name
        );
    }
}

/// Issue 15.4: nothing makes data reachable by anyone but the bucket owner, outside the
/// gateway, in any bucket class; who may reach a bucket changes only by its governance_admins.
#[test]
fn no_public_or_foreign_grants() {
    let lab = sp("sp-aiml-lab");
    let prod = sp("sp-aiml-prod");
    let ws = Some("prod-analytics");
    let put_acl = Action::new("PutObjectAcl", Category::Upload);
    let create_upload = Action::new("CreateMultipartUpload", Category::Upload);
    let grant = Some("a grant");
    for action in [&PUT, &COPY, &create_upload, &put_acl] {
        let mut r = req(action, S3Access::WriteData, "buk-aiml-lab");
        assert_eq!(rule(&lab, ws, &r).0, Effect::Allow, "{}", action.name);
        r.public_grant = grant;
        assert_eq!(
            rule(&lab, ws, &r),
            (Effect::Deny, "buckets.public_grant"),
            "{}",
            action.name
        );
        let mut r = req(action, S3Access::WriteData, "buk-prod-out");
        assert_eq!(rule(&prod, Some("prod"), &r).0, Effect::Allow);
        r.public_grant = grant;
        assert_eq!(
            rule(&prod, Some("prod"), &r),
            (Effect::Deny, "buckets.public_grant")
        );
    }
    let admin = sp("sp-platform-admin");
    assert!(super::WHO_MAY_REACH.contains(&"PutBucketOwnershipControls"));
    for name in super::WHO_MAY_REACH {
        let action = Action::new(name, Category::Config);
        for bucket in ["buk-aiml-lab", "buk-raw", "buk-prod-out"] {
            let mut r = req(&action, S3Access::ChangeBucket, bucket);
            r.key = None;
            assert_eq!(
                rule(&lab, ws, &r),
                (Effect::Deny, "buckets.public_grant"),
                "{name} on {bucket}"
            );
            assert_eq!(
                rule(&prod, Some("prod"), &r),
                (Effect::Deny, "buckets.public_grant"),
                "{name} on {bucket}"
            );
            // Only where the bucket names the admin.
            let want = if bucket == "buk-prod-out" {
                (Effect::Allow, "buckets.governance_admin")
            } else {
                (Effect::Deny, "buckets.public_grant")
            };
            assert_eq!(rule(&admin, None, &r), want, "{name} on {bucket}");
        }
    }
    // A prod-output PostObject carries its ACL in a form the gateway does not read.
    let post = Action::new("PostObject", Category::Upload);
    let r = req(&post, S3Access::WriteData, "buk-prod-out");
    assert_eq!(
        rule(&prod, Some("prod"), &r),
        (Effect::Deny, "buckets.public_grant")
    );
}
