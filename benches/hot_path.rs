//! Hot-path costs, per request: classification + decision, and token verification cold and
//! cached. Budget on the project's 2-core machines: classify + decide <= 2 µs, cached token
//! check <= 1 µs. Run: `cargo bench --bench hot_path`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use gatehouse::classify::{databricks, normalize_path};
use gatehouse::config::{HumansMode, UnknownApi};
use gatehouse::dev::{TokenSigner, TokenSpec};
use gatehouse::identity::{AuthMethod, KeySet, KeyStore, Principal, PrincipalKind, Verifier};
use gatehouse::policy::{decide, NoExceptions, Rules, WorkspacePolicy};
use http::Method;

fn classify_and_decide(c: &mut Criterion) {
    let rules = Rules {
        deny_groups: vec!["tenant-martech".into(), "tenant-complaints".into()],
        unknown_api: UnknownApi::Deny,
        report_only: Default::default(),
    };
    let principal = Principal {
        id: "alice@bank.example".into(),
        kind: PrincipalKind::User,
        groups: vec!["data-scientists".into(), "ml-engineers".into()],
        auth: AuthMethod::Jwt,
    };
    let workspace = WorkspacePolicy {
        name: "prod-analytics".into(),
        humans: HumansMode::Allow,
        human_groups: vec![],
    };
    let cases = [
        ("allowed_list", Method::GET, "/api/2.1/clusters/list", None),
        (
            "blocked_dbfs_read",
            Method::GET,
            "/api/2.0/dbfs/read",
            Some("path=dbfs:/tmp/customers.csv&offset=0&length=1048576"),
        ),
        (
            "blocked_volume_file",
            Method::GET,
            "/api/2.0/fs/files/Volumes/main/raw/landing/2026/11/customers.csv",
            None,
        ),
        (
            "disguised_read",
            Method::GET,
            "/api/2.0/x/../%64bfs/./read",
            Some("path=/tmp/x"),
        ),
    ];
    let mut group = c.benchmark_group("classify_and_decide");
    for (name, method, path, query) in cases {
        group.bench_function(name, |b| {
            b.iter(|| {
                let normalized = normalize_path(black_box(path)).expect("valid path");
                let class = databricks::classify(&method, &normalized, black_box(query));
                let d = decide(
                    &rules,
                    &principal,
                    &workspace,
                    &class.action,
                    class.asset.as_ref(),
                    &NoExceptions,
                );
                black_box(d.effect)
            })
        });
    }
    group.finish();
}

fn token_verification(c: &mut Criterion) {
    let signer = TokenSigner::generate("bench-1").expect("key");
    let set = KeySet::from_json(signer.jwks_json().as_bytes()).expect("jwks");
    let config = gatehouse::config::IdentityConfig {
        jwks: gatehouse::config::JwksSource::File(Default::default()),
        issuers: vec!["https://idp.bench".into()],
        audiences: vec!["gatehouse".into()],
        principal_type_claim: "principal_type".into(),
        groups_claim: "groups".into(),
        deny_groups: vec![],
        leeway: std::time::Duration::from_secs(30),
        token_cache_entries: 100_000,
    };
    let verifier = Verifier::new(config, KeyStore::fixed(set));
    let token = signer.token(&TokenSpec {
        issuer: "https://idp.bench",
        audience: "gatehouse",
        subject: "alice@bank.example",
        principal_type: "user",
        groups: &["data-scientists", "ml-engineers"],
        ttl_secs: 3600,
    });
    let header = format!("Bearer {token}").into_bytes();
    let mut group = c.benchmark_group("token");
    group.bench_function("cold_es256_verify", |b| {
        b.iter(|| black_box(verifier.verify_header(Some(black_box(&header))).is_ok()))
    });
    verifier.identify(Some(&header)).expect("valid token");
    group.bench_function("cached", |b| {
        b.iter(|| black_box(verifier.identify(Some(black_box(&header))).is_ok()))
    });
    group.finish();
}

criterion_group!(benches, classify_and_decide, token_verification);
criterion_main!(benches);
