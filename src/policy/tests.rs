use super::*;
use crate::classify::{Action, AssetKind, Category};
use crate::identity::AuthMethod;

fn person(groups: &[&str]) -> Principal {
    Principal {
        id: "alice@bank.example".into(),
        kind: PrincipalKind::User,
        groups: groups.iter().map(|g| g.to_string()).collect(),
        auth: AuthMethod::Jwt,
    }
}

fn service() -> Principal {
    Principal {
        id: "sp-aiml-prod".into(),
        kind: PrincipalKind::ServicePrincipal,
        groups: vec![],
        auth: AuthMethod::Jwt,
    }
}

/// Workspace `w`; under `config-only`, for the release managers.
fn ws(humans: HumansMode) -> WorkspacePolicy {
    let human_groups = match humans {
        HumansMode::ConfigOnly => vec!["aiml-release-managers".into()],
        _ => vec![],
    };
    WorkspacePolicy {
        name: "w".into(),
        humans,
        human_groups,
    }
}

/// Workspace `w` open to people who are in `groups`.
fn allow_for(groups: &[&str]) -> WorkspacePolicy {
    WorkspacePolicy {
        human_groups: groups.iter().map(|g| g.to_string()).collect(),
        ..ws(HumansMode::Allow)
    }
}

fn rules() -> Rules {
    Rules {
        deny_groups: vec!["tenant-martech".into()],
        unknown_api: UnknownApi::Deny,
        report_only: HashSet::new(),
    }
}

const LIST: Action = Action::new("clusters.list", Category::Metadata);
const READ: Action = Action::new("dbfs.read", Category::Download);
const CREDS: Action = Action::new("uc.temporary_credentials", Category::Credentials);
const CONFIG: Action = Action::new("serving.config.update", Category::Config);
const CONFIG_READ: Action = Action::new("serving.config.read", Category::Metadata);
const OIDC: Action = Action::new("auth.oidc", Category::Auth);

fn rule(r: &Rules, p: &Principal, w: &WorkspacePolicy, a: &Action) -> (Effect, &'static str) {
    let d = decide(r, p, w, a, None, &NoExceptions);
    (d.effect, d.rule)
}

#[test]
fn the_decision_table() {
    use Effect::{Allow as A, Deny as D};
    use HumansMode::{Allow, ConfigOnly, Deny};
    let r = rules();
    let ds = person(&["data-scientists"]);
    let rm = person(&["aiml-release-managers"]);
    let tenant = person(&["tenant-martech"]);
    let sp = service();
    let anon = Principal::anonymous();
    let table: Vec<(&Principal, HumansMode, Action, (Effect, &str))> = vec![
        (&ds, Allow, LIST, (A, "default.allow")),
        (&ds, Allow, READ, (D, "downloads.blocked")),
        (&sp, Allow, READ, (D, "downloads.blocked")),
        (&sp, Deny, CREDS, (D, "credentials.blocked")),
        (&ds, Deny, LIST, (D, "workspace.humans_denied")),
        (&sp, Deny, LIST, (A, "default.allow")),
        (&ds, ConfigOnly, CONFIG, (D, "workspace.config_only")),
        (&rm, ConfigOnly, CONFIG, (A, "default.allow")),
        (&rm, ConfigOnly, CONFIG_READ, (A, "default.allow")),
        (&rm, ConfigOnly, LIST, (D, "workspace.config_only")),
        (&rm, ConfigOnly, READ, (D, "workspace.config_only")),
        (&sp, ConfigOnly, LIST, (A, "default.allow")),
        (&tenant, Allow, LIST, (D, "principal.denied_group")),
        (&anon, Allow, LIST, (D, "identity.missing_token")),
        (&anon, Deny, OIDC, (A, "auth.discovery")),
        (&ds, Allow, Action::UNKNOWN_API, (D, "api.unknown")),
    ];
    for (p, mode, action, expected) in table {
        assert_eq!(
            rule(&r, p, &ws(mode), &action),
            expected,
            "{} {:?} {}",
            p.id,
            mode,
            action.name
        );
    }
}

#[test]
fn human_groups_narrow_who_acts_as_a_person_where_people_are_allowed() {
    let r = rules();
    let w = allow_for(&["data-scientists", "aiml-engineering"]);
    let ds = person(&["data-scientists"]);
    let eng = person(&["aiml-engineering", "x"]);
    let other = person(&["retail-banking"]);
    let nobody = person(&[]);
    assert_eq!(rule(&r, &ds, &w, &LIST), (Effect::Allow, "default.allow"));
    assert_eq!(
        rule(&r, &eng, &w, &CONFIG),
        (Effect::Allow, "default.allow")
    );
    for p in [&other, &nobody] {
        assert_eq!(
            rule(&r, p, &w, &LIST),
            (Effect::Deny, "workspace.humans_denied")
        );
    }
    // Group names compare exactly.
    let near = person(&["Data-Scientists", "data-scientists-ro"]);
    assert_eq!(rule(&r, &near, &w, &LIST).0, Effect::Deny);
    let d = decide(&r, &other, &w, &LIST, None, &NoExceptions);
    assert!(
        d.reason.contains("data-scientists, aiml-engineering"),
        "the reason names the groups: {}",
        d.reason
    );
    // Machines are not people: the groups do not apply to them.
    assert_eq!(
        rule(&r, &service(), &w, &LIST),
        (Effect::Allow, "default.allow")
    );
    // Members are still under the download block.
    assert_eq!(
        rule(&r, &ds, &w, &READ),
        (Effect::Deny, "downloads.blocked")
    );
    // Empty: anyone with a token acts as a person, as before.
    assert_eq!(
        rule(&r, &other, &allow_for(&[]), &LIST),
        (Effect::Allow, "default.allow")
    );
}

#[test]
fn unknown_apis_can_be_recorded_instead() {
    let mut r = rules();
    r.unknown_api = UnknownApi::Record;
    assert_eq!(
        rule(&r, &service(), &ws(HumansMode::Allow), &Action::UNKNOWN_API),
        (Effect::Allow, "api.unknown.recorded")
    );
}

#[test]
fn report_only_rules_allow_and_name_the_rule_that_would_deny() {
    let mut r = rules();
    r.report_only.insert("api.unknown".into());
    let d = decide(
        &r,
        &service(),
        &ws(HumansMode::Allow),
        &Action::UNKNOWN_API,
        None,
        &NoExceptions,
    );
    assert_eq!(
        (d.effect, d.rule, d.would_deny),
        (Effect::Allow, "api.unknown", Some("api.unknown"))
    );
    // Other rules stay enforced, and an ordinary allow names no rule.
    assert_eq!(
        rule(&r, &service(), &ws(HumansMode::Allow), &READ).0,
        Effect::Deny
    );
    let d = decide(
        &r,
        &service(),
        &ws(HumansMode::Allow),
        &LIST,
        None,
        &NoExceptions,
    );
    assert_eq!((d.effect, d.would_deny), (Effect::Allow, None));
}

#[test]
fn identity_rules_are_enforced_even_if_listed_as_report_only() {
    let mut r = rules();
    r.report_only.insert("identity.missing_token".into());
    let d = decide(
        &r,
        &Principal::anonymous(),
        &ws(HumansMode::Allow),
        &LIST,
        None,
        &NoExceptions,
    );
    assert_eq!(
        (d.effect, d.rule, d.would_deny),
        (Effect::Deny, "identity.missing_token", None)
    );
}

struct OneException;
impl Exceptions for OneException {
    fn covering(
        &self,
        kind: super::ExceptionKind,
        p: &Principal,
        _: &str,
        a: &Action,
        asset: Option<&Asset>,
    ) -> Option<String> {
        (kind == super::ExceptionKind::Download
            && p.id == "sp-aiml-prod"
            && a.name == "dbfs.read"
            && asset.is_some_and(|x| x.path == "dbfs:/ok"))
        .then(|| "exc-1".to_owned())
    }
}

#[test]
fn an_exception_lifts_only_what_it_covers() {
    let r = rules();
    let ok = Asset::new(AssetKind::Dbfs, "dbfs:/ok");
    let other = Asset::new(AssetKind::Dbfs, "dbfs:/other");
    let d = decide(
        &r,
        &service(),
        &ws(HumansMode::Allow),
        &READ,
        Some(&ok),
        &OneException,
    );
    assert_eq!(
        (d.effect, d.rule, d.exception.as_deref()),
        (Effect::Allow, "exception.approved", Some("exc-1"))
    );
    let d = decide(
        &r,
        &service(),
        &ws(HumansMode::Allow),
        &READ,
        Some(&other),
        &OneException,
    );
    assert_eq!(d.effect, Effect::Deny);
    // Nor does an exception let a person into production.
    let d = decide(
        &r,
        &person(&[]),
        &ws(HumansMode::Deny),
        &READ,
        Some(&ok),
        &OneException,
    );
    assert_eq!(d.rule, "workspace.humans_denied");
}

/// A real index holding one workspace-access exception for alice in `w`: metadata only.
fn alice_may_look_around_w() -> crate::exceptions::index::LiveIndex {
    use crate::exceptions::model::{Exception, Scope, Status, Subject};
    crate::exceptions::index::LiveIndex::build(
        [Exception {
            id: "exc-wa".into(),
            subject: Subject::Principal("alice@bank.example".into()),
            scope: Scope::WorkspaceAccess {
                workspace: "w".into(),
                categories: vec!["metadata".into()],
            },
            reason: "incident review".into(),
            ticket: "INC-7".into(),
            requester: "alice@bank.example".into(),
            requested_at: 0,
            duration_ms: 100,
            required_approvals: 1,
            approvals: vec![],
            status: Status::Approved,
            approved_at: Some(0),
            expires_at: Some(100),
            closed: None,
        }],
        0,
    )
}

#[test]
fn a_workspace_access_exception_lets_a_person_in_for_its_categories_only() {
    let index = alice_may_look_around_w();
    let r = rules();
    let alice = person(&["data-scientists"]);
    let at = |t, w: &WorkspacePolicy, a: &Action| {
        let d = decide(&r, &alice, w, a, None, &index.at(t));
        (d.effect, d.rule, d.exception)
    };
    let mode = HumansMode::ConfigOnly;
    assert_eq!(
        at(10, &ws(mode), &LIST),
        (Effect::Allow, "exception.approved", Some("exc-wa".into()))
    );
    // Not beyond its categories, not past the download block, not after it lapses.
    assert_eq!(at(10, &ws(mode), &CONFIG).0, Effect::Deny);
    assert_eq!(at(10, &ws(mode), &READ).0, Effect::Deny);
    assert_eq!(at(100, &ws(mode), &LIST).0, Effect::Deny);
    let elsewhere = WorkspacePolicy {
        name: "prod".into(),
        ..ws(HumansMode::ConfigOnly)
    };
    assert_eq!(at(10, &elsewhere, &LIST).1, "workspace.config_only");
}

#[test]
fn no_exception_lets_a_person_into_a_workspace_that_denies_people() {
    // The same exception, in force, for a workspace whose mode is (or has since become)
    // `humans = "deny"`: no interactive access in production, whatever the store holds.
    let index = alice_may_look_around_w();
    let alice = person(&["data-scientists"]);
    let d = decide(
        &rules(),
        &alice,
        &ws(HumansMode::Deny),
        &LIST,
        None,
        &index.at(10),
    );
    assert_eq!(
        (d.effect, d.rule, d.exception),
        (Effect::Deny, "workspace.humans_denied", None)
    );
}

#[test]
fn denial_reasons_name_the_action_and_asset() {
    let asset = Asset::new(AssetKind::Dbfs, "dbfs:/tmp/x");
    let d = decide(
        &rules(),
        &service(),
        &ws(HumansMode::Allow),
        &READ,
        Some(&asset),
        &NoExceptions,
    );
    assert!(
        d.reason.contains("dbfs.read of dbfs:/tmp/x"),
        "{}",
        d.reason
    );
}
