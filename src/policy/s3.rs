//! Bucket rules: `(Principal, caller's workspace, S3 request, buckets, exceptions) → Decision`,
//! pure like the Databricks side and with rule ids in the same style.
//!
//! - `raw`: nothing, unless an approved exception covers it;
//! - `lab`: read and write for the compute of the workspaces it names; its retention,
//!   versioning and governance may not be weakened, and nothing in it may be locked (Object
//!   Lock would keep data past the retention);
//! - `prod-output`: written only by service principals of its writer workspaces (default
//!   `prod`), read by them and by the named readers, never by people;
//! - a bucket the configuration does not list: denied (egress is deny-by-default).
//!
//! A copy is decided on both buckets: reading its source and writing its destination.

use std::borrow::Cow;

use super::{Decision, Effect, Exceptions, Rules};
use crate::classify::s3::S3Access;
use crate::classify::s3_body::ConfigVerdict;
use crate::classify::{Action, Asset, AssetKind};
use crate::config::{BucketClass, BucketConfig};
use crate::identity::{Principal, PrincipalKind};

/// The workspace that writes production output when a `prod-output` bucket names none.
pub const DEFAULT_PROD_WORKSPACE: &str = "prod";

/// What the policy needs to know about one S3 request.
#[derive(Debug, Clone)]
pub struct BucketRequest<'a> {
    pub action: &'a Action,
    pub access: S3Access,
    pub bucket: Option<&'a str>,
    pub key: Option<&'a str>,
    /// `(bucket, key)` of a copy's source; `Some(("", _))` when the source names no bucket
    /// the gateway can resolve.
    pub copy_source: Option<(&'a str, &'a str)>,
    /// The verdict on a lifecycle or versioning body, for the operations that carry one.
    pub config_body: Option<ConfigVerdict>,
    /// A listing's `prefix` parameter: the part of a bucket a listing names.
    pub list_prefix: Option<&'a str>,
    /// The request carries Object Lock headers.
    pub object_lock: bool,
    /// The keys a `DeleteObjects` body names, read strictly (`s3_body::delete_keys`); `None`
    /// for other operations, or when the body was not read.
    pub delete_keys: Option<&'a [String]>,
    /// Why the request may grant access beyond the bucket owner (`s3::public_grant`).
    pub public_grant: Option<&'static str>,
}

/// The configured buckets, by name.
pub struct Buckets<'a> {
    pub list: &'a [BucketConfig],
}

impl Buckets<'_> {
    fn get(&self, name: &str) -> Option<&BucketConfig> {
        self.list.iter().find(|b| b.name == name)
    }
}

/// Decides one S3 request. `workspace` is the caller's workspace (from its access key or its
/// network), if known.
pub fn decide(
    rules: &Rules,
    principal: &Principal,
    workspace: Option<&str>,
    buckets: &Buckets<'_>,
    req: &BucketRequest<'_>,
    exceptions: &dyn Exceptions,
) -> Decision {
    rules.report_mode(decide_enforced(
        rules, principal, workspace, buckets, req, exceptions,
    ))
}

fn deny(rule: &'static str, reason: impl Into<Cow<'static, str>>) -> Decision {
    Decision::deny(rule, reason)
}

fn decide_enforced(
    rules: &Rules,
    principal: &Principal,
    workspace: Option<&str>,
    buckets: &Buckets<'_>,
    req: &BucketRequest<'_>,
    exceptions: &dyn Exceptions,
) -> Decision {
    if principal.in_any_group(&rules.deny_groups) {
        return deny(
            "principal.denied_group",
            "downstream tenant identities consume published data products through the central catalog only; they have no direct bucket access",
        );
    }
    let Some(bucket) = req.bucket else {
        return match req.access {
            S3Access::ListBuckets => Decision {
                effect: Effect::Allow,
                rule: "buckets.list_all",
                reason: Cow::Borrowed("listing bucket names returns no data"),
                exception: None,
                would_deny: None,
            },
            _ => deny("buckets.unknown", "the request names no bucket"),
        };
    };
    if let Some((source_bucket, source_key)) = req.copy_source {
        // The source is read, whatever the operation does to the destination: decided (and
        // matched against exceptions) as a read.
        let source_action = Action {
            category: S3Access::ReadData.category(),
            ..*req.action
        };
        let read = BucketRequest {
            action: &source_action,
            access: S3Access::ReadData,
            bucket: Some(source_bucket),
            key: Some(source_key),
            copy_source: None,
            config_body: None,
            list_prefix: None,
            object_lock: false,
            delete_keys: None,
            public_grant: None,
        };
        let d = decide_bucket(
            principal,
            workspace,
            buckets,
            source_bucket,
            &read,
            exceptions,
        );
        if d.effect != Effect::Allow {
            return Decision {
                reason: Cow::Owned(format!("copy source: {}", d.reason)),
                ..d
            };
        }
    }
    decide_bucket(principal, workspace, buckets, bucket, req, exceptions)
}

fn decide_bucket(
    principal: &Principal,
    workspace: Option<&str>,
    buckets: &Buckets<'_>,
    bucket: &str,
    req: &BucketRequest<'_>,
    exceptions: &dyn Exceptions,
) -> Decision {
    let Some(config) = buckets.get(bucket) else {
        return deny(
            "buckets.unknown",
            format!(
                "bucket {bucket} is not in the gateway's bucket list; egress is deny-by-default"
            ),
        );
    };
    if let Some(decided) = who_may_reach(config, principal, req) {
        return decided;
    }
    match config.class {
        BucketClass::Raw => {
            // What an exception is matched against: the object, or what a listing names. A
            // `prefix` parameter on any other bucket-level request (`DeleteObjects`, whose
            // keys are in its body) names nothing and must not make it look like one.
            if req.action.name == "DeleteObjects" {
                return raw_delete_objects(bucket, principal, workspace, req, exceptions);
            }
            let listed = req.list_prefix.filter(|_| req.access == S3Access::List);
            let key = req.key.or(listed).unwrap_or("");
            let asset = Asset::new(AssetKind::S3, format!("s3://{bucket}/{key}"));
            match exceptions.covering(
                super::ExceptionKind::RawBucket,
                principal,
                workspace.unwrap_or("-"),
                req.action,
                Some(&asset),
            ) {
                Some(id) => super::lifted("buckets.raw_blocked", id),
                None => deny(
                    "buckets.raw_blocked",
                    format!("raw bucket {bucket} is closed to everyone; read governed data through the catalog, or ask a CDAO approver for a time-boxed exception"),
                ),
            }
        }
        BucketClass::Lab => lab(config, workspace, req),
        BucketClass::ProdOutput => prod_output(config, principal, workspace, req),
    }
}

/// The bucket-level settings that say who may reach a bucket's data straight from S3: its
/// ACL, its policy, its public access block and its ownership controls (which re-enable or
/// disable ACLs). Changed only by a principal the bucket's `governance_admins` names.
const WHO_MAY_REACH: [&str; 7] = [
    "PutBucketAcl",
    "PutBucketPolicy",
    "DeleteBucketPolicy",
    "PutPublicAccessBlock",
    "DeletePublicAccessBlock",
    "PutBucketOwnershipControls",
    "DeleteBucketOwnershipControls",
];

/// `buckets.public_grant`, for every bucket class: nothing may make data reachable by anyone
/// but the bucket owner, outside the gateway. `Some` decides the request; `None` leaves it to
/// the class's rules.
fn who_may_reach(
    config: &BucketConfig,
    principal: &Principal,
    req: &BucketRequest<'_>,
) -> Option<Decision> {
    if WHO_MAY_REACH.contains(&req.action.name) {
        if config.governance_admins.contains(&principal.id) {
            return Some(Decision {
                effect: Effect::Allow,
                rule: "buckets.governance_admin",
                reason: Cow::Owned(format!(
                    "{} is a governance admin of bucket {}",
                    principal.id, config.name
                )),
                exception: None,
                would_deny: None,
            });
        }
        return Some(deny(
            "buckets.public_grant",
            format!(
                "{} decides who may reach bucket {} outside the gateway; only its governance_admins may change it",
                req.action.name, config.name
            ),
        ));
    }
    if req.action.name == "PostObject" && config.class == BucketClass::ProdOutput {
        return Some(deny(
            "buckets.public_grant",
            format!(
                "PostObject to bucket {} carries its ACL in form fields the gateway does not read",
                config.name
            ),
        ));
    }
    req.public_grant.map(|why| {
        deny(
            "buckets.public_grant",
            format!(
                "{} on bucket {} was refused: {why}",
                req.action.name, config.name
            ),
        )
    })
}

/// `DeleteObjects` on a raw bucket, decided per key: each key its body names is a
/// `DeleteObject` of that key, and every one must be covered by an exception, or the whole
/// request is refused (S3 would otherwise delete the covered keys and the rest alike).
fn raw_delete_objects(
    bucket: &str,
    principal: &Principal,
    workspace: Option<&str>,
    req: &BucketRequest<'_>,
    exceptions: &dyn Exceptions,
) -> Decision {
    let closed = |why: String| {
        deny(
            "buckets.raw_blocked",
            format!("raw bucket {bucket} is closed to everyone: {why}; ask a CDAO approver for a time-boxed exception"),
        )
    };
    let keys = match req.delete_keys {
        Some(keys) if !keys.is_empty() => keys,
        _ => return closed("the keys of this DeleteObjects could not be read".into()),
    };
    let one = crate::classify::s3::DELETE_OBJECT.action;
    let mut first = None;
    for key in keys {
        let asset = Asset::new(AssetKind::S3, format!("s3://{bucket}/{key}"));
        match exceptions.covering(
            super::ExceptionKind::RawBucket,
            principal,
            workspace.unwrap_or("-"),
            &one,
            Some(&asset),
        ) {
            Some(id) => {
                first.get_or_insert(id);
            }
            None => {
                return closed(format!(
                    "no exception covers deleting {key} (one of the {} keys of this DeleteObjects), so none of them is deleted",
                    keys.len()
                ))
            }
        }
    }
    match first {
        Some(id) => super::lifted("buckets.raw_blocked", id),
        None => closed("the request names no key".into()),
    }
}

fn lab(config: &BucketConfig, workspace: Option<&str>, req: &BucketRequest<'_>) -> Decision {
    let member = workspace.is_some_and(|w| config.workspaces.iter().any(|x| x == w));
    if !member {
        return deny(
            "buckets.lab_workspace",
            format!(
                "lab bucket {} is for the compute of {} only",
                config.name,
                config.workspaces.join(", ")
            ),
        );
    }
    if let Some(denied) = lab_lock(config, req) {
        return denied;
    }
    if req.access == S3Access::ChangeBucket {
        return lab_change(config, req);
    }
    allow()
}

/// Object Lock in a lab bucket: a lock (a bucket default, an object's retention or legal
/// hold, or one set by the write that creates the object) keeps data past the retention,
/// where the lifecycle cannot delete it. `PostObject` carries its lock in form fields the
/// gateway does not read, so it cannot be shown to set none.
fn lab_lock(config: &BucketConfig, req: &BucketRequest<'_>) -> Option<Decision> {
    let what = match req.action.name {
        "PutObjectLockConfiguration" | "PutObjectRetention" | "PutObjectLegalHold" => {
            req.action.name
        }
        "PostObject" => "PostObject (its form may set a lock the gateway cannot read)",
        _ if req.object_lock => "a write with Object Lock headers",
        _ => return None,
    };
    Some(deny(
        "buckets.lab_retention",
        format!(
            "{what} would lock objects of lab bucket {} against deletion; its lifecycle must delete everything within {} days",
            config.name, config.retention_days
        ),
    ))
}

/// Bucket-level changes to a lab bucket: only those that keep its guarantees.
fn lab_change(config: &BucketConfig, req: &BucketRequest<'_>) -> Decision {
    let verdict = |what: &'static str, rule: &'static str| match req.config_body {
        Some(ConfigVerdict::Keeps) => allow(),
        Some(ConfigVerdict::Weakens(why)) => {
            deny(rule, format!("{what} of lab bucket {}: {why}", config.name))
        }
        Some(ConfigVerdict::Malformed(why)) => deny(
            rule,
            format!(
                "{what} of lab bucket {} could not be checked: {why}",
                config.name
            ),
        ),
        None => deny(
            rule,
            format!("{what} of lab bucket {} could not be checked", config.name),
        ),
    };
    match req.action.name {
        "PutBucketLifecycleConfiguration" => verdict(
            "the lifecycle configuration",
            "buckets.lab_retention",
        ),
        "DeleteBucketLifecycle" => deny(
            "buckets.lab_retention",
            format!(
                "the lifecycle of lab bucket {} enforces its {}-day retention and may not be removed",
                config.name, config.retention_days
            ),
        ),
        "PutBucketVersioning" => verdict("the versioning configuration", "buckets.lab_versioning"),
        "PutBucketTagging" => allow(),
        other => deny(
            "buckets.lab_governance",
            format!(
                "{other} would change the governance of lab bucket {} (deletion, policy, ACL and other bucket settings are managed by the platform)",
                config.name
            ),
        ),
    }
}

fn prod_output(
    config: &BucketConfig,
    principal: &Principal,
    workspace: Option<&str>,
    req: &BucketRequest<'_>,
) -> Decision {
    if principal.kind != PrincipalKind::ServicePrincipal {
        return deny(
            "buckets.prod_output_people",
            format!(
                "production output bucket {} is never touched by people",
                config.name
            ),
        );
    }
    let writer = workspace.is_some_and(|w| {
        if config.workspaces.is_empty() {
            w == DEFAULT_PROD_WORKSPACE
        } else {
            config.workspaces.iter().any(|x| x == w)
        }
    });
    let reader = writer || config.readers.contains(&principal.id);
    match req.access {
        S3Access::WriteData if writer => allow(),
        S3Access::WriteData => deny(
            "buckets.prod_output_writer",
            format!(
                "production output bucket {} is written only by production service principals",
                config.name
            ),
        ),
        S3Access::ChangeBucket => deny(
            "buckets.prod_output_governance",
            format!(
                "the settings of production output bucket {} are managed by the platform",
                config.name
            ),
        ),
        _ if reader => allow(),
        _ => deny(
            "buckets.prod_output_reader",
            format!(
                "production output bucket {} is read only by production service principals and its named readers",
                config.name
            ),
        ),
    }
}

fn allow() -> Decision {
    Decision {
        effect: Effect::Allow,
        rule: "default.allow",
        reason: Cow::Borrowed("allowed by the bucket rules"),
        exception: None,
        would_deny: None,
    }
}

#[cfg(test)]
#[path = "s3_tests.rs"]
mod tests;
