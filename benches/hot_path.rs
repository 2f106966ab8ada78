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
                let class = databricks::classify(&method, &normalized, black_box(query))
                    .expect("unambiguous parameters");
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

fn s3_classify_and_decide(c: &mut Criterion) {
    use gatehouse::classify::s3::{access_key, classify, target, S3Hosts};
    use gatehouse::config::{BucketClass, BucketConfig};
    use gatehouse::policy::s3::{decide as decide_s3, BucketRequest, Buckets};

    let hosts = S3Hosts::new(
        &[
            "s3.eu-west-2.amazonaws.com".into(),
            "*.s3.eu-west-2.amazonaws.com".into(),
        ],
        &[],
    );
    let buckets = vec![
        BucketConfig {
            name: "buk-aiml-lab".into(),
            class: BucketClass::Lab,
            workspaces: vec!["prod-analytics".into()],
            retention_days: 90,
            readers: vec![],
            governance_admins: vec![],
        },
        BucketConfig {
            name: "buk-raw-landing".into(),
            class: BucketClass::Raw,
            workspaces: vec![],
            retention_days: 90,
            readers: vec![],
            governance_admins: vec![],
        },
    ];
    let rules = Rules {
        deny_groups: vec!["tenant-martech".into()],
        unknown_api: UnknownApi::Deny,
        report_only: Default::default(),
    };
    let principal = Principal {
        id: "sp-aiml-lab".into(),
        kind: PrincipalKind::ServicePrincipal,
        groups: vec![],
        auth: AuthMethod::S3Key,
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_static("AWS4-HMAC-SHA256 Credential=AKIALABEXAMPLE00001/20261127/eu-west-2/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
    );
    let cases = [
        (
            "lab_get_path_style",
            "s3.eu-west-2.amazonaws.com",
            "/buk-aiml-lab/features/2026/11/part-0001.parquet",
        ),
        (
            "raw_get_virtual_hosted",
            "buk-raw-landing.s3.eu-west-2.amazonaws.com",
            "/2026/11/customers.csv",
        ),
    ];
    let mut group = c.benchmark_group("s3_classify_and_decide");
    for (name, host, path) in cases {
        group.bench_function(name, |b| {
            b.iter(|| {
                let t = target(&hosts, black_box(host), black_box(path)).expect("target");
                let class = classify(&Method::GET, &t, None, &headers).expect("operation");
                let key = access_key(&headers, None).expect("credential");
                let request = BucketRequest {
                    action: &class.action,
                    access: class.access,
                    bucket: class.bucket.as_deref(),
                    key: class.key.as_deref(),
                    copy_source: None,
                    config_body: None,
                    list_prefix: None,
                    object_lock: class.object_lock,
                    delete_keys: None,
                    public_grant: class.public_grant,
                };
                let d = decide_s3(
                    &rules,
                    &principal,
                    Some("prod-analytics"),
                    &Buckets { list: &buckets },
                    &request,
                    &NoExceptions,
                );
                black_box((d.effect, key.is_some()))
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    classify_and_decide,
    s3_classify_and_decide,
    token_verification
);
criterion_main!(benches);
