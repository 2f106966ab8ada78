use super::*;

fn base(jwks: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:8443"
admin_listen = "127.0.0.1:9443"

[identity]
jwks_file = "{jwks}"
issuers = ["https://idp.example"]
audiences = ["gatehouse"]

[[workspace]]
name = "prod-analytics"
hosts = ["Analytics.dbx.example"]
upstream = "https://dbc-1.cloud.databricks.com"
humans = "allow"

[audit]
dir = "var/audit"
"#
    )
}

fn jwks_file() -> tempfile::NamedTempFile {
    tempfile::NamedTempFile::new().unwrap()
}

#[test]
fn a_minimal_file_parses_with_defaults() {
    let jwks = jwks_file();
    let c = Config::parse(&base(&jwks.path().display().to_string())).unwrap();
    assert_eq!(c.server.gateway_id, "gw-1");
    assert!(c.server.tls.is_none());
    assert_eq!(c.workspaces[0].hosts, vec!["analytics.dbx.example"]);
    assert_eq!(c.workspaces[0].upstream.scheme, Scheme::Https);
    assert_eq!(c.policy.unknown_api, UnknownApi::Deny);
    assert_eq!(c.audit.durability, Durability::Group);
    assert_eq!(c.identity.principal_type_claim, "principal_type");
}

#[test]
fn every_error_is_reported_at_once_naming_its_key() {
    let jwks = jwks_file();
    let text = base(&jwks.path().display().to_string())
        .replace("listen = \"127.0.0.1:8443\"", "listen = \"nowhere\"")
        .replace("humans = \"allow\"", "humans = \"sometimes\"")
        .replace(
            "upstream = \"https://dbc-1.cloud.databricks.com\"",
            "upstream = \"ftp://x\"",
        )
        + "\n[policy]\nunknown_api = \"maybe\"\nreport_only = [\"no.such.rule\"]\n"
        + "\n[[workspace]]\nname = \"prod-analytics\"\nhosts = [\"analytics.dbx.example\"]\nupstream = \"http://a\"\nhumans = \"config-only\"\n";
    let errors = Config::parse(&text).unwrap_err().0;
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    for expected in [
        "server.listen",
        "workspace[0].humans",
        "workspace[0].upstream",
        "policy.unknown_api",
        "policy.report_only",
        "workspace[1].name",
        "workspace[1].hosts",
        "workspace[1].human_groups",
    ] {
        assert!(keys.contains(&expected), "missing {expected} in {keys:?}");
    }
}

#[test]
fn unknown_keys_and_sections_are_refused() {
    let jwks = jwks_file();
    let text = base(&jwks.path().display().to_string())
        .replace("[audit]\n", "[audit]\nretention = 3\n")
        + "\n[extra]\nx = 1\n";
    let errors = Config::parse(&text).unwrap_err().0;
    assert!(
        errors
            .iter()
            .any(|e| e.key == "audit" && e.message.contains("retention")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.key == "extra"), "{errors:?}");
}

#[test]
fn tls_needs_both_files_and_jwks_exactly_one_source() {
    let jwks = jwks_file();
    let text = base(&jwks.path().display().to_string())
        .replace("[server]\n", "[server]\ntls_cert = \"/nonexistent.crt\"\n")
        .replace(
            "[identity]\n",
            "[identity]\njwks_url = \"https://idp.example/keys\"\n",
        );
    let errors = Config::parse(&text).unwrap_err().0;
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    assert!(keys.contains(&"server.tls_key"), "{keys:?}");
    assert!(keys.contains(&"identity.jwks_url"), "{keys:?}");
}

#[test]
fn the_example_config_validates() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gatehouse.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    // Relative paths are resolved against the project root, as `gatehouse` is run from there.
    let text = text.replace(
        "\"config/dev-jwks.json\"",
        &format!("\"{}/config/dev-jwks.json\"", env!("CARGO_MANIFEST_DIR")),
    );
    let text = text
        .lines()
        .filter(|l| !l.starts_with("tls_cert") && !l.starts_with("tls_key"))
        .collect::<Vec<_>>()
        .join("\n");
    let c = Config::parse(&text).unwrap();
    let names: Vec<&str> = c.workspaces.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, vec!["prod-analytics", "prod-parallel", "prod"]);
    assert_eq!(c.workspaces[1].humans, HumansMode::ConfigOnly);
    assert_eq!(c.workspaces[2].humans, HumansMode::Deny);
}

#[test]
fn host_patterns_are_lower_cased_and_checked() {
    assert_eq!(
        normalize_host_pattern("A.Example"),
        Some("a.example".into())
    );
    assert_eq!(
        normalize_host_pattern("*.s3.example"),
        Some("*.s3.example".into())
    );
    assert_eq!(normalize_host_pattern("a/b"), None);
    assert_eq!(normalize_host_pattern(""), None);
}

#[test]
fn exceptions_need_a_store_and_approvers_and_default_to_a_two_person_rule_for_raw_data() {
    let jwks = jwks_file();
    let with = |section: &str| {
        Config::parse(&format!(
            "{}\n{section}",
            base(&jwks.path().display().to_string())
        ))
    };
    let c = with("[exceptions]\napprover_groups = [\"cdao-approvers\"]\n").unwrap();
    let e = c.exceptions.unwrap();
    assert_eq!(e.store, "sqlite://var/gatehouse.db", "embedded by default");
    assert_eq!(
        (e.max_days, e.required.raw_bucket, e.required.download),
        (30, 2, 1)
    );
    assert_eq!(e.refresh, Duration::from_secs(30));
    let c = with(
        "[exceptions]\nstore = \"postgres://gh@db/gh\"\napprover_groups = [\"a\"]\nmax_days = 7\n[exceptions.required_approvals]\ndownload = 2\n",
    )
    .unwrap();
    assert_eq!(c.exceptions.unwrap().required.download, 2);
    let errors = with("[exceptions]\nstore = \"mysql://x\"\nmax_days = 0\n[exceptions.required_approvals]\nraw-bucket = 0\n")
        .unwrap_err();
    let keys: Vec<&str> = errors.0.iter().map(|e| e.key.as_str()).collect();
    for key in [
        "exceptions.store",
        "exceptions.approver_groups",
        "exceptions.max_days",
        "exceptions.required_approvals",
    ] {
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
    assert!(with(
        "[exceptions]\nstore = \"sqlite://x\"\napprover_groups = [\"a\"]\nowner = \"me\"\n"
    )
    .is_err());
}

#[test]
fn report_only_takes_policy_rules_but_never_identity_or_the_download_block() {
    let jwks = jwks_file();
    let with = |rules: &str| {
        base(&jwks.path().display().to_string()) + &format!("\n[policy]\nreport_only = [{rules}]\n")
    };
    let c = Config::parse(&with("\"buckets.raw_blocked\", \"api.unknown\"")).unwrap();
    assert_eq!(c.policy.report_only, ["buckets.raw_blocked", "api.unknown"]);
    for refused in [
        "identity.missing_token",
        "identity.invalid_token",
        "downloads.blocked",
        "credentials.blocked",
    ] {
        let errors = Config::parse(&with(&format!("\"{refused}\"")))
            .unwrap_err()
            .0;
        assert_eq!(errors[0].key, "policy.report_only", "{refused}");
        assert!(errors[0].message.contains(refused));
    }
}

#[test]
fn an_upstream_authority_gets_its_scheme_default_port_only_when_it_names_none() {
    let up = |scheme, authority: &str| Upstream {
        scheme,
        authority: authority.to_owned(),
    };
    assert_eq!(
        up(Scheme::Http, "origin.local").authority_with_port(),
        "origin.local:80"
    );
    assert_eq!(
        up(Scheme::Https, "dbc.example").authority_with_port(),
        "dbc.example:443"
    );
    assert_eq!(
        up(Scheme::Http, "127.0.0.1:8080").authority_with_port(),
        "127.0.0.1:8080"
    );
    assert_eq!(up(Scheme::Http, "[::1]").authority_with_port(), "[::1]:80");
    assert_eq!(
        up(Scheme::Http, "[::1]:9000").authority_with_port(),
        "[::1]:9000"
    );
}

fn with_console(console: &str) -> (Result<Config, ConfigErrors>, tempfile::NamedTempFile) {
    let jwks = jwks_file();
    let secret = tempfile::NamedTempFile::new().unwrap();
    let text = base(&jwks.path().display().to_string()).replace(
        r#"issuers = ["https://idp.example"]"#,
        r#"issuers = ["https://idp.example", "https://login.bank.example/", "http://127.0.0.1:5556"]"#,
    ) + "\n[console]\n"
        + &console.replace("SECRET", &secret.path().display().to_string());
    (Config::parse(&text), secret)
}

#[test]
fn the_console_section_parses_with_default_session_lifetimes() {
    let (c, _secret) = with_console(
        "oidc_issuer = \"https://login.bank.example/\"\nclient_id = \"gatehouse-console\"\nclient_secret_file = \"SECRET\"\nredirect_url = \"https://gw.bank.example:9443/auth/callback\"\nauditor_groups = [\"sec-auditors\"]\n",
    );
    let console = c.unwrap().console.unwrap();
    assert_eq!(console.oidc_issuer, "https://login.bank.example");
    assert_eq!(console.auditor_groups, vec!["sec-auditors"]);
    assert_eq!(console.session_idle, DEFAULT_SESSION_IDLE);
    assert_eq!(console.session_max, DEFAULT_SESSION_MAX);
    let (c, _secret) = with_console(
        "oidc_issuer = \"http://127.0.0.1:5556\"\nclient_id = \"c\"\nclient_secret_file = \"SECRET\"\nredirect_url = \"http://localhost:9443/auth/callback\"\nsession_idle = \"10m\"\nsession_max = \"1h\"\n",
    );
    let console = c.unwrap().console.unwrap();
    assert_eq!(console.session_idle, Duration::from_secs(600));
    assert_eq!(console.session_max, Duration::from_secs(3600));
    assert!(
        Config::parse(&base(&jwks_file().path().display().to_string()))
            .unwrap()
            .console
            .is_none()
    );
}

#[test]
fn the_console_refuses_clear_text_off_loopback_a_missing_secret_and_odd_lifetimes() {
    let (c, _secret) = with_console(
        "oidc_issuer = \"http://login.bank.example\"\nclient_id = \" \"\nclient_secret_file = \"/no/such/secret\"\nredirect_url = \"https://gw.bank.example:9443/\"\nsession_idle = \"9h\"\nsession_max = \"8h\"\n",
    );
    let errors = c.unwrap_err().0;
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    for expected in [
        "console.oidc_issuer",
        "console.client_id",
        "console.client_secret_file",
        "console.redirect_url",
        "console.session_idle",
    ] {
        assert!(keys.contains(&expected), "{expected} not in {keys:?}");
    }
    let (c, _secret) = with_console(
        "oidc_issuer = \"https://login.bank.example\"\nclient_id = \"c\"\nclient_secret_file = \"SECRET\"\nredirect_url = \"http://gw.bank.example/auth/callback\"\nsession_max = \"forever\"\n",
    );
    let keys: Vec<String> = c.unwrap_err().0.into_iter().map(|e| e.key).collect();
    assert!(
        keys.contains(&"console.redirect_url".to_owned()),
        "{keys:?}"
    );
    assert!(keys.contains(&"console.session_max".to_owned()), "{keys:?}");
}

#[test]
fn the_console_must_sign_people_in_where_the_gateways_tokens_come_from() {
    let (c, _secret) = with_console(
        "oidc_issuer = \"https://other-idp.example\"\nclient_id = \"c\"\nclient_secret_file = \"SECRET\"\nredirect_url = \"https://gw.bank.example:9443/auth/callback\"\nprincipal_claim = \"\"\n",
    );
    let errors = c.unwrap_err().0;
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    assert!(keys.contains(&"console.oidc_issuer"), "{keys:?}");
    assert!(keys.contains(&"console.principal_claim"), "{keys:?}");
    let (c, _secret) = with_console(
        "oidc_issuer = \"https://login.bank.example\"\nclient_id = \"c\"\nclient_secret_file = \"SECRET\"\nredirect_url = \"https://gw.bank.example:9443/auth/callback\"\nprincipal_claim = \"email\"\n",
    );
    let console = c.unwrap().console.unwrap();
    assert_eq!(console.principal_claim, "email");
    assert_eq!(
        console.index_file, None,
        "the gateway puts it in the trail directory"
    );
    let (c, _secret) = with_console(
        "oidc_issuer = \"https://login.bank.example\"\nclient_id = \"c\"\nclient_secret_file = \"SECRET\"\nredirect_url = \"https://gw.bank.example:9443/auth/callback\"\nindex_file = \"/var/lib/gatehouse/index.sqlite\"\n",
    );
    assert_eq!(
        c.unwrap().console.unwrap().index_file,
        Some(std::path::PathBuf::from("/var/lib/gatehouse/index.sqlite"))
    );
    let (c, _secret) = with_console(
        "oidc_issuer = \"https://login.bank.example\"\nclient_id = \"c\"\nclient_secret_file = \"SECRET\"\nredirect_url = \"https://gw.bank.example:9443/exceptions/cb\"\n",
    );
    let keys: Vec<String> = c.unwrap_err().0.into_iter().map(|e| e.key).collect();
    assert_eq!(keys, ["console.redirect_url"]);
}

#[test]
fn governance_admins_are_principal_ids() {
    let jwks = jwks_file();
    let bucket = |admins: &str| {
        base(&jwks.path().display().to_string())
            + &format!(
                "\n[[bucket]]\nname = \"buk-raw\"\nclass = \"raw\"\ngovernance_admins = {admins}\n"
            )
    };
    let c = Config::parse(&bucket("[\"sp-platform-acl\"]")).unwrap();
    assert_eq!(c.buckets[0].governance_admins, vec!["sp-platform-acl"]);
    let c = Config::parse(
        &(base(&jwks.path().display().to_string())
            + "\n[[bucket]]\nname = \"buk-raw\"\nclass = \"raw\"\n"),
    )
    .unwrap();
    assert!(c.buckets[0].governance_admins.is_empty(), "none by default");
    for bad in [
        "[\"\"]",
        "[\"group:admins\"]",
        "[\"a b\"]",
        "[\"x\", \"x\"]",
    ] {
        let errors = Config::parse(&bucket(bad)).unwrap_err().0;
        assert!(
            errors
                .iter()
                .any(|e| e.key == "bucket[0].governance_admins"),
            "{bad}: {errors:?}"
        );
    }
}
