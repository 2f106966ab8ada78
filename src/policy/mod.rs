//! `(Principal, Workspace, Action, Asset, Exceptions) → Decision`, pure.
//!
//! No I/O, no locks, no clocks: everything the decision depends on is passed in, so it can be
//! tested exhaustively, benchmarked alone and explained (`gatehouse explain`). A decision
//! starts as a deny; only the explicit allow arms at the end change that.

use std::borrow::Cow;
use std::collections::HashSet;

use crate::classify::{Action, Asset, Category};
use crate::config::{Config, HumansMode, UnknownApi};
use crate::identity::{Principal, PrincipalKind};

/// A stable rule identifier: the audit record, the log line and the client's error message
/// all carry the same one.
pub type RuleId = &'static str;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        }
    }

    /// Whether the request goes on to the upstream.
    pub fn forwards(self) -> bool {
        !matches!(self, Effect::Deny)
    }
}

/// The verdict for one request, with the rule that produced it and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub effect: Effect,
    pub rule: RuleId,
    pub reason: Cow<'static, str>,
    /// The approved exception that turned a deny into an allow.
    pub exception: Option<String>,
    /// The rule, in `[policy] report_only`, that would have denied this allowed request.
    pub would_deny: Option<RuleId>,
}

impl Decision {
    pub fn deny(rule: RuleId, reason: impl Into<Cow<'static, str>>) -> Decision {
        Decision {
            effect: Effect::Deny,
            rule,
            reason: reason.into(),
            exception: None,
            would_deny: None,
        }
    }

    fn allow(rule: RuleId, reason: impl Into<Cow<'static, str>>) -> Decision {
        Decision {
            effect: Effect::Allow,
            rule,
            reason: reason.into(),
            exception: None,
            would_deny: None,
        }
    }
}

/// The workspace a request is routed to, as the policy needs to see it.
#[derive(Debug, Clone)]
pub struct WorkspacePolicy {
    pub name: String,
    pub humans: HumansMode,
    pub human_groups: Vec<String>,
}

/// Time-boxed exceptions approved by CDAO approvers. The live set is a snapshot handed in by
/// the caller, so looking one up is still pure.
pub use crate::exceptions::model::Kind as ExceptionKind;

pub trait Exceptions {
    /// The id of an approved, unexpired exception of `kind` covering this request, if any.
    fn covering(
        &self,
        kind: ExceptionKind,
        principal: &Principal,
        workspace: &str,
        action: &Action,
        asset: Option<&Asset>,
    ) -> Option<String>;
}

/// No exceptions at all (until the exception store exists, and in `explain` without one).
pub struct NoExceptions;

impl Exceptions for NoExceptions {
    fn covering(
        &self,
        _: ExceptionKind,
        _: &Principal,
        _: &str,
        _: &Action,
        _: Option<&Asset>,
    ) -> Option<String> {
        None
    }
}

/// The platform's rules, compiled from configuration.
#[derive(Debug, Clone)]
pub struct Rules {
    pub deny_groups: Vec<String>,
    pub unknown_api: UnknownApi,
    pub report_only: HashSet<String>,
}

impl Rules {
    /// A deny by a rule in `report_only` becomes an allow that names the rule in
    /// `would_deny`: recorded, not enforced. Identity rules are always enforced, whatever the
    /// configuration says (it cannot name them; this is the second lock).
    pub fn report_mode(&self, decision: Decision) -> Decision {
        if decision.effect == Effect::Deny
            && !decision.rule.starts_with("identity.")
            && self.report_only.contains(decision.rule)
        {
            return Decision {
                effect: Effect::Allow,
                would_deny: Some(decision.rule),
                ..decision
            };
        }
        decision
    }

    pub fn from_config(config: &Config) -> Rules {
        Rules {
            deny_groups: config.identity.deny_groups.clone(),
            unknown_api: config.policy.unknown_api,
            report_only: config.policy.report_only.iter().cloned().collect(),
        }
    }
}

/// Decides one request.
pub fn decide(
    rules: &Rules,
    principal: &Principal,
    workspace: &WorkspacePolicy,
    action: &Action,
    asset: Option<&Asset>,
    exceptions: &dyn Exceptions,
) -> Decision {
    rules.report_mode(decide_enforced(
        rules, principal, workspace, action, asset, exceptions,
    ))
}

fn decide_enforced(
    rules: &Rules,
    principal: &Principal,
    workspace: &WorkspacePolicy,
    action: &Action,
    asset: Option<&Asset>,
    exceptions: &dyn Exceptions,
) -> Decision {
    // Clients must be able to discover how to log in before they hold a token.
    if action.category == Category::Auth {
        return Decision::allow("auth.discovery", "login and discovery endpoints are open");
    }
    if principal.kind == PrincipalKind::Anonymous {
        return Decision::deny(
            "identity.missing_token",
            "this endpoint needs an OAuth access token",
        );
    }
    if principal.in_any_group(&rules.deny_groups) {
        return Decision::deny(
            "principal.denied_group",
            "downstream tenant identities consume published data products through the central catalog only; they have no direct workspace access",
        );
    }
    // A person may be granted time-boxed access beyond the workspace's mode; the download and
    // credential blocks below still apply to them. Never where people are denied outright
    // (no interactive access in production): the workflow refuses such exceptions, and one
    // that is in a store anyway (approved before that rule, or before the workspace's mode
    // changed) is not consulted.
    let mut granted = None;
    if principal.kind == PrincipalKind::User {
        if let Some(denied) = humans_rule(principal, workspace, action) {
            if workspace.humans == HumansMode::Deny {
                return denied;
            }
            match exceptions.covering(
                ExceptionKind::WorkspaceAccess,
                principal,
                &workspace.name,
                action,
                asset,
            ) {
                Some(id) => granted = Some((denied.rule, id)),
                None => return denied,
            }
        }
    }
    let blocked = match action.category {
        Category::Download => Some((
            "downloads.blocked",
            "downloading data out of the platform is blocked",
        )),
        Category::Credentials => Some((
            "credentials.blocked",
            "handing out cloud credentials or secret values is blocked",
        )),
        _ => None,
    };
    if let Some((rule, why)) = blocked {
        if let Some(id) = exceptions.covering(
            ExceptionKind::Download,
            principal,
            &workspace.name,
            action,
            asset,
        ) {
            return lifted(rule, id);
        }
        let what = match asset {
            Some(a) => format!("{} of {}", action.name, a.path),
            None => action.name.to_owned(),
        };
        return Decision::deny(
            rule,
            format!("{why}: {what}; a CDAO approver can grant a time-boxed exception"),
        );
    }
    if !action.known {
        return match rules.unknown_api {
            UnknownApi::Deny => Decision::deny(
                "api.unknown",
                "this API path is not in the gateway's catalog, and unknown APIs are denied",
            ),
            UnknownApi::Record => Decision::allow(
                "api.unknown.recorded",
                "API path not in the catalog; allowed and recorded (unknown_api = \"record\")",
            ),
        };
    }
    match granted {
        Some((rule, id)) => lifted(rule, id),
        None => Decision::allow("default.allow", "allowed by the platform's rules"),
    }
}

/// An allow that names the rule an approved exception lifted, and the exception.
pub(crate) fn lifted(rule: &str, id: String) -> Decision {
    Decision {
        effect: Effect::Allow,
        rule: "exception.approved",
        reason: Cow::Owned(format!("{rule} lifted by approved exception {id}")),
        exception: Some(id),
        would_deny: None,
    }
}

/// The workspace's rule for people (`humans`): the denial, if this action is not theirs.
fn humans_rule(
    principal: &Principal,
    workspace: &WorkspacePolicy,
    action: &Action,
) -> Option<Decision> {
    match workspace.humans {
        // Where people are allowed, `human_groups` (when set) says which people: a bank's
        // other token holders are not this workspace's users.
        HumansMode::Allow
            if !workspace.human_groups.is_empty()
                && !principal.in_any_group(&workspace.human_groups) =>
        {
            Some(Decision::deny(
                "workspace.humans_denied",
                format!(
                    "in workspace {} only members of {} act as people",
                    workspace.name,
                    workspace.human_groups.join(", ")
                ),
            ))
        }
        HumansMode::Allow => None,
        HumansMode::Deny => Some(Decision::deny(
            "workspace.humans_denied",
            format!(
                "people may not use workspace {}: only service principals act there",
                workspace.name
            ),
        )),
        HumansMode::ConfigOnly if !principal.in_any_group(&workspace.human_groups) => {
            Some(Decision::deny(
                "workspace.config_only",
                format!(
                    "in workspace {} people may only change serving-endpoint configuration, and only members of {}",
                    workspace.name,
                    workspace.human_groups.join(", ")
                ),
            ))
        }
        HumansMode::ConfigOnly if !is_serving_configuration(action) => Some(Decision::deny(
            "workspace.config_only",
            format!(
                "in workspace {} people may only change or read serving-endpoint configuration (throttling, canary, traffic splits); {} is not that",
                workspace.name, action.name
            ),
        )),
        HumansMode::ConfigOnly => None,
    }
}

/// Serving-endpoint configuration changes and their reads: all that people may do under
/// `config-only`.
fn is_serving_configuration(action: &Action) -> bool {
    action.category == Category::Config || action.name == "serving.config.read"
}

pub mod s3;

#[cfg(test)]
mod tests;
