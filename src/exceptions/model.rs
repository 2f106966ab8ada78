//! The exception and its workflow as pure functions: what may be requested, who may approve,
//! reject or revoke, when it is in force. Stores and the admin API call these and persist the
//! result; nothing here reads a clock or a database (`now` is always handed in).

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch: what the store keeps and what comparisons use.
pub type Millis = i64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Lifts `buckets.raw_blocked` for a bucket, key prefix and operations.
    RawBucket,
    /// Lifts `downloads.blocked` / `credentials.blocked` for named actions under an asset prefix.
    Download,
    /// Lifts `workspace.humans_denied` / `workspace.config_only` for action categories.
    WorkspaceAccess,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::RawBucket => "raw-bucket",
            Kind::Download => "download",
            Kind::WorkspaceAccess => "workspace-access",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        [Kind::RawBucket, Kind::Download, Kind::WorkspaceAccess]
            .into_iter()
            .find(|k| k.as_str() == text)
    }
}

/// Operations on a raw bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Read,
    List,
    Write,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::List => "list",
            Op::Write => "write",
        }
    }
}

/// Who the exception is for: one principal id, or every member of a group (`group:NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    Principal(String),
    Group(String),
}

impl Subject {
    pub fn parse(text: &str) -> Option<Subject> {
        let text = text.trim();
        match text.strip_prefix("group:") {
            Some(g) if !g.is_empty() => Some(Subject::Group(g.to_owned())),
            Some(_) => None,
            None if !text.is_empty() => Some(Subject::Principal(text.to_owned())),
            None => None,
        }
    }

    pub fn is_principal(&self, id: &str) -> bool {
        matches!(self, Subject::Principal(p) if p == id)
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Principal(p) => f.write_str(p),
            Subject::Group(g) => write!(f, "group:{g}"),
        }
    }
}

impl Serialize for Subject {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Subject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Subject, D::Error> {
        let text = String::deserialize(d)?;
        Subject::parse(&text).ok_or_else(|| serde::de::Error::custom("an empty subject"))
    }
}

/// What the exception covers; one shape per kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Scope {
    RawBucket {
        bucket: String,
        prefix: String,
        ops: Vec<Op>,
    },
    Download {
        workspace: String,
        actions: Vec<String>,
        prefix: String,
    },
    WorkspaceAccess {
        workspace: String,
        categories: Vec<String>,
    },
}

impl Scope {
    pub fn kind(&self) -> Kind {
        match self {
            Scope::RawBucket { .. } => Kind::RawBucket,
            Scope::Download { .. } => Kind::Download,
            Scope::WorkspaceAccess { .. } => Kind::WorkspaceAccess,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Approved,
    Rejected,
    Revoked,
    Expired,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Rejected => "rejected",
            Status::Revoked => "revoked",
            Status::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        [
            Status::Pending,
            Status::Approved,
            Status::Rejected,
            Status::Revoked,
            Status::Expired,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub approver: String,
    pub at: Millis,
    pub comment: Option<String>,
}

/// Who closed it (rejected or revoked), when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closing {
    pub by: String,
    pub at: Millis,
    pub comment: Option<String>,
}

/// One exception, whole: requests are never deleted, only closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exception {
    pub id: String,
    pub subject: Subject,
    pub scope: Scope,
    pub reason: String,
    pub ticket: String,
    pub requester: String,
    pub requested_at: Millis,
    /// How long it lasts once finally approved: the clock starts at approval, not request.
    pub duration_ms: Millis,
    pub required_approvals: u32,
    pub approvals: Vec<Approval>,
    /// Stored status; `Approved` reads as `Expired` from `expires_at` on (see [`Exception::status_at`]).
    pub status: Status,
    pub approved_at: Option<Millis>,
    pub expires_at: Option<Millis>,
    pub closed: Option<Closing>,
}

impl Exception {
    pub fn kind(&self) -> Kind {
        self.scope.kind()
    }

    /// The status as of `now`: expiry needs nobody to act.
    pub fn status_at(&self, now: Millis) -> Status {
        match (self.status, self.expires_at) {
            (Status::Approved, Some(end)) if now >= end => Status::Expired,
            (s, _) => s,
        }
    }

    pub fn in_force_at(&self, now: Millis) -> bool {
        self.status_at(now) == Status::Approved
    }
}

/// The configured limits the workflow enforces (`[exceptions]` and what the rest of the
/// configuration knows: workspaces, raw buckets, download actions).
#[derive(Debug, Clone)]
pub struct Limits {
    pub approver_groups: Vec<String>,
    pub max_days: u32,
    pub required: Required,
    pub workspaces: Vec<String>,
    /// Workspaces with `humans = "deny"`: no `workspace-access` exception is ever granted there.
    pub people_denied: Vec<String>,
    pub raw_buckets: Vec<String>,
    /// Actions a `download` exception may name: the catalog's download and credential actions.
    pub download_actions: Vec<String>,
}

/// Approvals needed per kind: by default one, and two for `raw-bucket` (a two-person rule
/// for the data the platform closes to everyone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Required {
    pub raw_bucket: u32,
    pub download: u32,
    pub workspace_access: u32,
}

impl Default for Required {
    fn default() -> Required {
        Required {
            raw_bucket: 2,
            download: 1,
            workspace_access: 1,
        }
    }
}

impl Required {
    pub fn of(&self, kind: Kind) -> u32 {
        match kind {
            Kind::RawBucket => self.raw_bucket,
            Kind::Download => self.download,
            Kind::WorkspaceAccess => self.workspace_access,
        }
    }
}

/// The caller of a workflow step, as the admin API verified it.
#[derive(Debug, Clone)]
pub struct Actor {
    pub id: String,
    pub groups: Vec<String>,
}

impl Actor {
    fn is_approver(&self, limits: &Limits) -> bool {
        self.groups
            .iter()
            .any(|g| limits.approver_groups.contains(g))
    }
}

/// Why a workflow step is refused; `status` is the HTTP status the admin API answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

fn refuse(status: u16, code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        code,
        message: message.into(),
    }
}

/// A request as submitted, before checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewRequest {
    pub subject: Subject,
    pub scope: Scope,
    pub reason: String,
    pub ticket: String,
    pub duration_ms: Millis,
}

const DAY_MS: Millis = 86_400_000;

/// Checks a new request and makes the pending exception. `id` comes from the caller (the
/// store's generator) so this stays pure.
pub fn request(
    new: NewRequest,
    requester: &Actor,
    id: String,
    now: Millis,
    limits: &Limits,
) -> Result<Exception, Refusal> {
    let unprocessable = |m: String| refuse(422, "INVALID_REQUEST", m);
    if new.reason.trim().is_empty() {
        return Err(unprocessable("a reason is required".into()));
    }
    if new.ticket.trim().is_empty() {
        return Err(unprocessable("a ticket reference is required".into()));
    }
    if new.duration_ms <= 0 {
        return Err(unprocessable("the duration must be positive".into()));
    }
    if new.duration_ms > Millis::from(limits.max_days) * DAY_MS {
        return Err(unprocessable(format!(
            "the duration exceeds max_days ({} days)",
            limits.max_days
        )));
    }
    let mut new = new;
    if let Scope::Download { prefix, .. } = &mut new.scope {
        // Kept as the classifier gives assets, so what approvers read is what is matched.
        *prefix = crate::classify::databricks::asset_prefix(prefix).map_err(|e| {
            unprocessable(format!(
                "the asset prefix cannot be read one way ({e}): name it plainly, e.g. dbfs:/FileStore/approved/"
            ))
        })?;
    }
    check_scope(&new.scope, limits).map_err(|m| refuse(422, "SCOPE_TOO_BROAD", m))?;
    if let Scope::WorkspaceAccess { workspace, .. } = &new.scope {
        if limits.people_denied.contains(workspace) {
            return Err(refuse(
                422,
                "NO_INTERACTIVE_ACCESS",
                format!(
                    "workspace {workspace} denies people (humans = \"deny\"): no interactive access in production, so no exception can let a person in; only service principals act there"
                ),
            ));
        }
    }
    Ok(Exception {
        id,
        required_approvals: limits.required.of(new.scope.kind()).max(1),
        subject: new.subject,
        scope: new.scope,
        reason: new.reason.trim().to_owned(),
        ticket: new.ticket.trim().to_owned(),
        requester: requester.id.clone(),
        requested_at: now,
        duration_ms: new.duration_ms,
        approvals: Vec::new(),
        status: Status::Pending,
        approved_at: None,
        expires_at: None,
        closed: None,
    })
}

/// A scope must name exactly what is needed: a configured workspace or raw bucket, explicit
/// operations, actions or categories, and a prefix below the root.
fn check_scope(scope: &Scope, limits: &Limits) -> Result<(), String> {
    let no_wildcards = |what: &str, text: &str| {
        if text.contains('*') || text.contains('?') {
            Err(format!(
                "{what} {text:?}: wildcards are not allowed; name the prefix"
            ))
        } else {
            Ok(())
        }
    };
    let workspace_known = |w: &str| {
        if limits.workspaces.iter().any(|x| x == w) {
            Ok(())
        } else {
            Err(format!("workspace {w:?} is not configured"))
        }
    };
    match scope {
        Scope::RawBucket {
            bucket,
            prefix,
            ops,
        } => {
            if !limits.raw_buckets.iter().any(|b| b == bucket) {
                return Err(format!("{bucket:?} is not a configured raw bucket"));
            }
            if prefix.trim_matches('/').is_empty() {
                return Err("a key prefix is required: a whole raw bucket is too broad".into());
            }
            no_wildcards("prefix", prefix)?;
            if ops.is_empty() {
                return Err("name the operations: read, list, write".into());
            }
            Ok(())
        }
        Scope::Download {
            workspace,
            actions,
            prefix,
        } => {
            workspace_known(workspace)?;
            if actions.is_empty() {
                return Err("name the actions (e.g. dbfs.read)".into());
            }
            if let Some(a) = actions
                .iter()
                .find(|a| !limits.download_actions.contains(a))
            {
                return Err(format!(
                    "{a:?} is not a download or credential action a download exception can lift"
                ));
            }
            // Below the scheme's root: `dbfs:/x/`, `/Volumes/c/s/v/`, not `dbfs:/` or `/`.
            let below_root = prefix
                .split_once(":/")
                .map_or(prefix.as_str(), |(_, rest)| rest)
                .trim_matches('/');
            if below_root.is_empty() {
                return Err("an asset prefix below the root is required".into());
            }
            no_wildcards("prefix", prefix)
        }
        Scope::WorkspaceAccess {
            workspace,
            categories,
        } => {
            workspace_known(workspace)?;
            if categories.is_empty() {
                return Err("name the action categories (e.g. metadata, execute)".into());
            }
            const GRANTABLE: &[&str] = &["metadata", "execute", "config", "upload", "other"];
            match categories.iter().find(|c| !GRANTABLE.contains(&c.as_str())) {
                Some(c) => Err(format!(
                    "category {c:?} cannot be granted by workspace access (one of {}; downloads need a download exception)",
                    GRANTABLE.join(", ")
                )),
                None => Ok(()),
            }
        }
    }
}

/// Only members of `approver_groups` approve or reject (`verb`).
fn require_approver(actor: &Actor, limits: &Limits, verb: &str) -> Result<(), Refusal> {
    if actor.is_approver(limits) {
        return Ok(());
    }
    Err(refuse(
        403,
        "NOT_AN_APPROVER",
        format!(
            "only members of {} {verb} exceptions",
            limits.approver_groups.join(", ")
        ),
    ))
}

/// Only a pending exception can be `done` (approved, rejected).
fn require_pending(ex: &Exception, now: Millis, done: &str) -> Result<(), Refusal> {
    let status = ex.status_at(now);
    if status == Status::Pending {
        return Ok(());
    }
    Err(refuse(
        409,
        "NOT_PENDING",
        format!(
            "exception {} is {}; only pending ones can be {done}",
            ex.id,
            status.as_str()
        ),
    ))
}

/// Adds an approval; the last one required puts the exception in force for its duration,
/// counted from now.
pub fn approve(
    mut ex: Exception,
    approver: &Actor,
    comment: Option<String>,
    now: Millis,
    limits: &Limits,
) -> Result<Exception, Refusal> {
    require_approver(approver, limits, "approve")?;
    if approver.id == ex.requester || ex.subject.is_principal(&approver.id) {
        return Err(refuse(
            403,
            "SELF_APPROVAL",
            "nobody approves an exception they requested or that is for them",
        ));
    }
    // A group's exception is for each of its members: one of them approving it is approving
    // their own. Judged by the groups the approver holds now (their token's), not at request.
    if let Subject::Group(group) = &ex.subject {
        if approver.groups.iter().any(|g| g == group) {
            return Err(refuse(
                403,
                "SELF_APPROVAL",
                format!(
                    "nobody approves an exception that is for them: {} is for {}, and you are a member of that group",
                    ex.id, ex.subject
                ),
            ));
        }
    }
    require_pending(&ex, now, "approved")?;
    if ex.approvals.iter().any(|a| a.approver == approver.id) {
        return Err(refuse(
            409,
            "ALREADY_APPROVED",
            format!(
                "{} has already approved {}; one approver counts once",
                approver.id, ex.id
            ),
        ));
    }
    ex.approvals.push(Approval {
        approver: approver.id.clone(),
        at: now,
        comment,
    });
    if ex.approvals.len() as u32 >= ex.required_approvals {
        ex.status = Status::Approved;
        ex.approved_at = Some(now);
        ex.expires_at = Some(now.saturating_add(ex.duration_ms));
    }
    Ok(ex)
}

/// Rejects a pending request.
pub fn reject(
    mut ex: Exception,
    approver: &Actor,
    comment: Option<String>,
    now: Millis,
    limits: &Limits,
) -> Result<Exception, Refusal> {
    require_approver(approver, limits, "reject")?;
    require_pending(&ex, now, "rejected")?;
    ex.status = Status::Rejected;
    ex.closed = Some(Closing {
        by: approver.id.clone(),
        at: now,
        comment,
    });
    Ok(ex)
}

/// Revokes a pending or approved exception, at once; by its requester or any approver.
pub fn revoke(
    mut ex: Exception,
    actor: &Actor,
    comment: Option<String>,
    now: Millis,
    limits: &Limits,
) -> Result<Exception, Refusal> {
    if actor.id != ex.requester && !actor.is_approver(limits) {
        return Err(refuse(
            403,
            "NOT_ALLOWED",
            "only the requester or an approver revokes an exception",
        ));
    }
    let status = ex.status_at(now);
    if !matches!(status, Status::Pending | Status::Approved) {
        return Err(refuse(
            409,
            "CLOSED",
            format!("exception {} is already {}", ex.id, status.as_str()),
        ));
    }
    ex.status = Status::Revoked;
    ex.closed = Some(Closing {
        by: actor.id.clone(),
        at: now,
        comment,
    });
    Ok(ex)
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
