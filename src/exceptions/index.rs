//! The exceptions in force, as an immutable snapshot the policy reads on every request
//! without a lock or a database call. A change builds a new index and swaps it in whole.

use std::collections::HashMap;
use std::sync::Arc;

use super::model::{Exception, Kind, Millis, Op, Scope, Status, Subject};
use crate::classify::asset_path::is_within;
use crate::classify::{Action, Asset, AssetKind, Category};
use crate::identity::Principal;

/// Approved exceptions by subject. Expired ones may linger until the next rebuild; lookups
/// compare with the request's own time, so they never match.
#[derive(Debug, Default)]
pub struct LiveIndex {
    by_principal: HashMap<String, Vec<Arc<Exception>>>,
    by_group: HashMap<String, Vec<Arc<Exception>>>,
    len: usize,
}

impl LiveIndex {
    /// Keeps what is in force at `now` out of `all`.
    pub fn build(all: impl IntoIterator<Item = Exception>, now: Millis) -> LiveIndex {
        let mut index = LiveIndex::default();
        for ex in all.into_iter().filter(|e| e.in_force_at(now)) {
            let key = match &ex.subject {
                Subject::Principal(p) => (true, p.clone()),
                Subject::Group(g) => (false, g.clone()),
            };
            let map = if key.0 {
                &mut index.by_principal
            } else {
                &mut index.by_group
            };
            map.entry(key.1).or_default().push(Arc::new(ex));
            index.len += 1;
        }
        index
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The index as seen by a request at `now`.
    pub fn at(&self, now: Millis) -> LiveView<'_> {
        LiveView { index: self, now }
    }

    /// The earliest expiry among the exceptions held: when the next rebuild would shrink it.
    pub fn next_expiry(&self) -> Option<Millis> {
        self.by_principal
            .values()
            .chain(self.by_group.values())
            .flatten()
            .filter_map(|e| e.expires_at)
            .min()
    }
}

/// A request's view of the index: the clock is fixed, so a lookup is pure.
pub struct LiveView<'a> {
    index: &'a LiveIndex,
    now: Millis,
}

impl crate::policy::Exceptions for LiveView<'_> {
    fn covering(
        &self,
        kind: Kind,
        principal: &Principal,
        workspace: &str,
        action: &Action,
        asset: Option<&Asset>,
    ) -> Option<String> {
        let own = self
            .index
            .by_principal
            .get(&principal.id)
            .into_iter()
            .flatten();
        let groups = principal
            .groups
            .iter()
            .filter_map(|g| self.index.by_group.get(g))
            .flatten();
        own.chain(groups)
            .find(|ex| {
                ex.kind() == kind
                    && ex.status == Status::Approved
                    && ex.expires_at.is_some_and(|end| self.now < end)
                    && covers(&ex.scope, workspace, action, asset)
            })
            .map(|ex| ex.id.clone())
    }
}

/// Whether a scope covers one request. Pure.
pub fn covers(scope: &Scope, workspace: &str, action: &Action, asset: Option<&Asset>) -> bool {
    match scope {
        Scope::RawBucket {
            bucket,
            prefix,
            ops,
        } => {
            let Some((b, key)) = asset
                .filter(|a| a.kind == AssetKind::S3)
                .and_then(|a| a.path.strip_prefix("s3://"))
                .and_then(|p| p.split_once('/'))
            else {
                return false;
            };
            let Some(op) = raw_bucket_op(action) else {
                return false;
            };
            b == bucket && key.starts_with(prefix.as_str()) && ops.contains(&op)
        }
        Scope::Download {
            workspace: w,
            actions,
            prefix,
        } => {
            // The classifier has resolved the asset (`classify::asset_path`); the prefix
            // covers whole segments, so `approved` never covers `approved-pii`.
            w == workspace
                && actions.iter().any(|a| a == action.name)
                && asset.is_some_and(|a| is_within(prefix, &a.path))
        }
        Scope::WorkspaceAccess {
            workspace: w,
            categories,
        } => w == workspace && categories.iter().any(|c| c == action.category.as_str()),
    }
}

/// The `--ops` group of a raw-bucket request, by its S3 operation; `None`: no exception
/// covers it.
///
/// - `read`: what reading an object takes. Every download (the object's bytes, a select, a
///   restore, the source side of a copy, which the policy decides as a download) and the
///   object's own description: the AWS CLI and the SDKs' download managers call `HeadObject`
///   before `GetObject`, `GetObjectAttributes` stands in for it, and a copy between buckets
///   reads the source's tags.
/// - `list`: the listings (`aws s3 ls`, the listing behind `cp --recursive` and `sync`).
/// - `write`: creating, replacing and deleting objects one key at a time, multipart uploads
///   included, and their tags.
///
/// In no group: changes to who may reach an object (`PutObjectAcl`) or to its locks
/// (retention, legal hold: data the bank could no longer delete); `DeleteObjects` as such
/// (the data path reads its XML body and decides each key as a `DeleteObject`, so it is
/// covered key by key, never as one operation); `PostObject`, whose key is in a form body the
/// gateway does not read, so a prefix cannot bound it; `CreateSession`, whose credentials cover the whole bucket; the object's ACL,
/// retention and legal-hold settings, which reading the data does not need; and every
/// bucket-level setting.
fn raw_bucket_op(action: &Action) -> Option<Op> {
    use crate::classify::s3 as s3ops;
    let is = |ops: &[s3ops::Operation]| ops.iter().any(|o| o.action.name == action.name);
    match action.category {
        Category::Download if !is(&[s3ops::CREATE_SESSION]) => Some(Op::Read),
        Category::Metadata
            if is(&[
                s3ops::HEAD_OBJECT,
                s3ops::GET_OBJECT_ATTRIBUTES,
                s3ops::GET_OBJECT_TAGGING,
            ]) =>
        {
            Some(Op::Read)
        }
        Category::Metadata
            if is(&[
                s3ops::LIST_OBJECTS,
                s3ops::LIST_OBJECTS_V2,
                s3ops::LIST_OBJECT_VERSIONS,
                s3ops::LIST_MULTIPART_UPLOADS,
                s3ops::LIST_PARTS,
            ]) =>
        {
            Some(Op::List)
        }
        Category::Upload
            if is(&[
                s3ops::PUT_OBJECT,
                s3ops::COPY_OBJECT,
                s3ops::CREATE_MULTIPART_UPLOAD,
                s3ops::UPLOAD_PART,
                s3ops::UPLOAD_PART_COPY,
                s3ops::COMPLETE_MULTIPART_UPLOAD,
                s3ops::ABORT_MULTIPART_UPLOAD,
                s3ops::DELETE_OBJECT,
                s3ops::PUT_OBJECT_TAGGING,
                s3ops::DELETE_OBJECT_TAGGING,
            ]) =>
        {
            Some(Op::Write)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{AuthMethod, PrincipalKind};
    use crate::policy::Exceptions;

    fn action(name: &'static str, category: Category) -> Action {
        Action {
            name,
            category,
            known: true,
        }
    }

    fn alice() -> Principal {
        Principal {
            id: "alice@bank.test".into(),
            kind: PrincipalKind::User,
            groups: vec!["data-scientists".into()],
            auth: AuthMethod::Jwt,
        }
    }

    fn approved(id: &str, subject: Subject, scope: Scope, expires_at: Millis) -> Exception {
        Exception {
            id: id.into(),
            subject,
            scope,
            reason: "r".into(),
            ticket: "CHG-1".into(),
            requester: "bob".into(),
            requested_at: 0,
            duration_ms: expires_at,
            required_approvals: 1,
            approvals: vec![],
            status: Status::Approved,
            approved_at: Some(0),
            expires_at: Some(expires_at),
            closed: None,
        }
    }

    fn raw(prefix: &str, ops: &[Op]) -> Scope {
        Scope::RawBucket {
            bucket: "raw".into(),
            prefix: prefix.into(),
            ops: ops.to_vec(),
        }
    }

    #[test]
    fn a_raw_bucket_exception_covers_its_prefix_and_operations_only() {
        let s3 = |k: &str| Asset::new(AssetKind::S3, format!("s3://raw/{k}"));
        let get = action("GetObject", Category::Download);
        let put = action("PutObject", Category::Upload);
        let scope = raw("landing/", &[Op::Read]);
        assert!(covers(&scope, "-", &get, Some(&s3("landing/a.csv"))));
        assert!(!covers(&scope, "-", &get, Some(&s3("curated/a.csv"))));
        assert!(!covers(&scope, "-", &put, Some(&s3("landing/a.csv"))));
        let other = Asset::new(AssetKind::S3, "s3://raw2/landing/a.csv");
        assert!(!covers(&scope, "-", &get, Some(&other)));
        assert!(!covers(&scope, "-", &get, None));
    }

    /// What each `--ops` group lets through, by the operations the S3 classifier names: the
    /// calls a client makes for `aws s3 cp` from, `aws s3 ls` and `aws s3 cp` to the bucket,
    /// and nothing that changes who may reach an object or locks it.
    #[test]
    fn each_ops_group_covers_what_its_client_calls_need_and_nothing_else() {
        use crate::classify::s3 as ops;
        let object = Asset::new(AssetKind::S3, "s3://raw/landing/a.csv");
        let group = |op: Op| raw("landing/", &[op]);
        let covered = |op: Op, operation: &ops::Operation| {
            covers(&group(op), "-", &operation.action, Some(&object))
        };
        let reads = [
            ops::GET_OBJECT,
            ops::HEAD_OBJECT,
            ops::GET_OBJECT_ATTRIBUTES,
            ops::GET_OBJECT_TAGGING,
            ops::SELECT_OBJECT_CONTENT,
            ops::GET_OBJECT_TORRENT,
            ops::RESTORE_OBJECT,
        ];
        let lists = [
            ops::LIST_OBJECTS,
            ops::LIST_OBJECTS_V2,
            ops::LIST_OBJECT_VERSIONS,
            ops::LIST_MULTIPART_UPLOADS,
            ops::LIST_PARTS,
        ];
        let writes = [
            ops::PUT_OBJECT,
            ops::COPY_OBJECT,
            ops::CREATE_MULTIPART_UPLOAD,
            ops::UPLOAD_PART,
            ops::UPLOAD_PART_COPY,
            ops::COMPLETE_MULTIPART_UPLOAD,
            ops::ABORT_MULTIPART_UPLOAD,
            ops::DELETE_OBJECT,
            ops::PUT_OBJECT_TAGGING,
            ops::DELETE_OBJECT_TAGGING,
        ];
        for (op, members) in [
            (Op::Read, &reads[..]),
            (Op::List, &lists[..]),
            (Op::Write, &writes[..]),
        ] {
            for o in ops::CATALOG {
                let want = members.contains(o);
                assert_eq!(covered(op, o), want, "{} under {op:?}", o.name());
            }
        }
        // Outside every group: permission and lock changes, batch operations whose keys are
        // in a body the gateway does not read, and bucket-wide session credentials.
        for o in [
            ops::PUT_OBJECT_ACL,
            ops::PUT_OBJECT_RETENTION,
            ops::PUT_OBJECT_LEGAL_HOLD,
            ops::DELETE_OBJECTS,
            ops::POST_OBJECT,
            ops::CREATE_SESSION,
        ] {
            for op in [Op::Read, Op::List, Op::Write] {
                assert!(!covered(op, &o), "{} under {op:?}", o.name());
            }
        }
        // The source of a copy is read: decided as a download of the source object.
        let source_read = Action {
            category: Category::Download,
            ..ops::COPY_OBJECT.action
        };
        assert!(covers(&group(Op::Read), "-", &source_read, Some(&object)));
    }

    #[test]
    fn a_download_exception_covers_named_actions_under_its_prefix_in_its_workspace() {
        let read = action("dbfs.read", Category::Download);
        let export = action("workspace.export", Category::Download);
        let scope = Scope::Download {
            workspace: "prod-analytics".into(),
            actions: vec!["dbfs.read".into()],
            prefix: "dbfs:/FileStore/approved/".into(),
        };
        let ok = Asset::new(AssetKind::Dbfs, "dbfs:/FileStore/approved/x.csv");
        let outside = Asset::new(AssetKind::Dbfs, "dbfs:/FileStore/other/x.csv");
        assert!(covers(&scope, "prod-analytics", &read, Some(&ok)));
        assert!(!covers(&scope, "prod-analytics", &read, Some(&outside)));
        assert!(!covers(&scope, "prod-analytics", &export, Some(&ok)));
        assert!(!covers(&scope, "prod", &read, Some(&ok)));
        // Whole segments only, and never an unresolved path.
        let no_slash = Scope::Download {
            workspace: "prod-analytics".into(),
            actions: vec!["dbfs.read".into()],
            prefix: "dbfs:/FileStore/approved".into(),
        };
        let near = Asset::new(AssetKind::Dbfs, "dbfs:/FileStore/approved-pii/x.csv");
        let climbing = Asset::new(AssetKind::Dbfs, "dbfs:/FileStore/approved/../../mnt/pii/x");
        assert!(covers(&no_slash, "prod-analytics", &read, Some(&ok)));
        assert!(!covers(&no_slash, "prod-analytics", &read, Some(&near)));
        assert!(!covers(&scope, "prod-analytics", &read, Some(&climbing)));
    }

    #[test]
    fn lookups_match_subject_kind_and_time() {
        let index = LiveIndex::build(
            [
                approved(
                    "E1",
                    Subject::Principal("alice@bank.test".into()),
                    raw("a/", &[Op::Read]),
                    1_000,
                ),
                approved(
                    "E2",
                    Subject::Group("data-scientists".into()),
                    raw("b/", &[Op::Read]),
                    5_000,
                ),
                approved(
                    "E3",
                    Subject::Principal("carol".into()),
                    raw("c/", &[Op::Read]),
                    5_000,
                ),
            ],
            0,
        );
        assert_eq!(index.len(), 3);
        assert_eq!(index.next_expiry(), Some(1_000));
        let get = action("GetObject", Category::Download);
        let at = |t: Millis, key: &str| {
            let asset = Asset::new(AssetKind::S3, format!("s3://raw/{key}"));
            index
                .at(t)
                .covering(Kind::RawBucket, &alice(), "-", &get, Some(&asset))
        };
        assert_eq!(at(10, "a/x"), Some("E1".into()));
        assert_eq!(
            at(1_000, "a/x"),
            None,
            "expired at its end, with nobody acting"
        );
        assert_eq!(at(10, "b/x"), Some("E2".into()), "through a group");
        assert_eq!(at(10, "c/x"), None, "someone else's");
        let asset = Asset::new(AssetKind::S3, "s3://raw/a/x");
        assert_eq!(
            index
                .at(10)
                .covering(Kind::Download, &alice(), "-", &get, Some(&asset)),
            None,
            "only the kind asked for"
        );
        // Not in force when built: left out.
        assert!(LiveIndex::build(
            [approved(
                "E4",
                Subject::Principal("alice@bank.test".into()),
                raw("a/", &[Op::Read]),
                5
            )],
            5
        )
        .is_empty());
    }
}
