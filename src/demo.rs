//! `gatehouse demo`: the gateway on the example configuration, over TLS, in front of the
//! bundled stand-in workspace. It sends allowed, blocked and malformed requests as different
//! principals, shows what reached the stand-in, and prints the audit trail. It fails (non-zero
//! exit) if any request is not handled as expected, so it doubles as a smoke test.

use std::path::Path;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};

use crate::config::Config;
use crate::dev::{generate_certs, write_file, TokenSigner, TokenSpec};
use crate::standin::StandIn;
use crate::testing::{local_client, read_trail};

const UNROUTED_HOST: &str = "exfil.example";

struct Step {
    who: &'static str,
    host: &'static str,
    method: Method,
    path: &'static str,
    body: Option<&'static str>,
    expect_status: u16,
    what: &'static str,
}

struct Caller {
    name: &'static str,
    principal_type: &'static str,
    groups: &'static [&'static str],
}

const CALLERS: &[Caller] = &[
    Caller {
        name: "alice@bank.example",
        principal_type: "user",
        groups: &["data-scientists"],
    },
    Caller {
        name: "bob@bank.example",
        principal_type: "user",
        groups: &["aiml-release-managers"],
    },
    Caller {
        name: "sp-aiml-prod",
        principal_type: "service_principal",
        groups: &["aiml-prod-jobs"],
    },
    Caller {
        name: "martech-analyst@bank.example",
        principal_type: "user",
        groups: &["tenant-martech"],
    },
];

fn steps() -> Vec<Step> {
    let s = |who, host, method, path, body, expect_status, what| Step {
        who,
        host,
        method,
        path,
        body,
        expect_status,
        what,
    };
    vec![
        s(
            "alice@bank.example",
            "prod-analytics",
            Method::GET,
            "/api/2.1/clusters/list",
            None,
            200,
            "list clusters in the lab",
        ),
        s(
            "alice@bank.example",
            "prod-analytics",
            Method::GET,
            "/api/2.0/dbfs/read?path=dbfs:/tmp/customers.csv&offset=0&length=1048576",
            None,
            403,
            "databricks fs cp dbfs:/... ./ (DBFS read)",
        ),
        s(
            "alice@bank.example",
            "prod-analytics",
            Method::GET,
            "/api/2.0/fs/files/Volumes/main/raw/landing/customers.csv",
            None,
            403,
            "Files API download of a volume file",
        ),
        s(
            "alice@bank.example",
            "prod-analytics",
            Method::GET,
            "/api/2.0/%64bfs/./read?path=/tmp/customers.csv",
            None,
            403,
            "the same DBFS read, disguised with %64 and /./",
        ),
        s(
            "alice@bank.example",
            "prod-analytics",
            Method::GET,
            "/api/2.0/dbfs%2Fread?path=/tmp/customers.csv",
            None,
            400,
            "an encoded slash: ambiguous, refused",
        ),
        s(
            "alice@bank.example",
            "prod-analytics",
            Method::POST,
            "/api/2.0/sql/statements",
            Some(
                r#"{"statement":"SELECT * FROM customers","warehouse_id":"wh-1","disposition":"EXTERNAL_LINKS"}"#,
            ),
            403,
            "SQL results as presigned EXTERNAL_LINKS",
        ),
        s(
            "alice@bank.example",
            "prod-analytics",
            Method::POST,
            "/api/2.0/sql/statements",
            Some(
                r#"{"statement":"SELECT count(*) FROM customers","warehouse_id":"wh-1","disposition":"INLINE"}"#,
            ),
            200,
            "SQL results inline",
        ),
        s(
            "alice@bank.example",
            "prod-analytics",
            Method::POST,
            "/api/1.2/commands/execute",
            Some(
                r#"{"clusterId":"0101-abc","contextId":"ctx1","language":"python","command":"dbutils.fs.cp('dbfs:/tmp/customers.csv','file:/tmp/x')"}"#,
            ),
            403,
            "remote dbutils.fs through command execution",
        ),
        s(
            "alice@bank.example",
            "prod",
            Method::GET,
            "/api/2.1/clusters/list",
            None,
            403,
            "a person reaching production",
        ),
        s(
            "sp-aiml-prod",
            "prod",
            Method::GET,
            "/api/2.1/clusters/list",
            None,
            200,
            "the production service principal",
        ),
        s(
            "bob@bank.example",
            "prod-parallel",
            Method::PUT,
            "/api/2.0/serving-endpoints/fraud-model/config",
            Some(
                r#"{"served_entities":[],"traffic_config":{"routes":[{"served_model_name":"fraud-v7","traffic_percentage":10}]}}"#,
            ),
            200,
            "canary traffic split by a release manager",
        ),
        s(
            "bob@bank.example",
            "prod-parallel",
            Method::GET,
            "/api/2.1/clusters/list",
            None,
            403,
            "anything else in prod-parallel by a person",
        ),
        s(
            "martech-analyst@bank.example",
            "prod-analytics",
            Method::GET,
            "/api/2.1/clusters/list",
            None,
            403,
            "a downstream tenant identity",
        ),
        s(
            "(no token)",
            "prod-analytics",
            Method::GET,
            "/api/2.1/clusters/list",
            None,
            401,
            "no credentials",
        ),
        s(
            "(PAT)",
            "prod-analytics",
            Method::GET,
            "/api/2.1/clusters/list",
            None,
            401,
            "a personal access token",
        ),
        s(
            "alice@bank.example",
            "unknown",
            Method::GET,
            "/api/2.1/clusters/list",
            None,
            403,
            "a host the gateway does not route",
        ),
    ]
}

/// Runs the demo in `dir`, starting from the example configuration at `example`.
/// With `console`, the demo also serves the review console on `https://localhost:PORT/`,
/// with the loopback OpenID Provider of the tests (`tests/oidc`, after `npm ci --prefix
/// tests/oidc`), and keeps running until Ctrl-C.
pub async fn run(example: &Path, dir: &Path, console: Option<u16>) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let standin = StandIn::start()
        .await
        .map_err(|e| format!("cannot start the stand-in: {e}"))?;
    let provider = match console {
        Some(port) => Some(DemoProvider::start(dir, port)?),
        None => None,
    };

    // The example configuration, with development material and local addresses swapped in.
    let (config, issuer, audience, hosts) =
        demo_config(example, dir, &standin.url(), provider.as_ref())?;
    let signer = TokenSigner::generate("demo-key-1")?;
    write_file(&dir.join("jwks.json"), signer.jwks_json().as_bytes(), false)?;
    let config = Config::load(&config).map_err(|e| e.to_string())?;

    let running = crate::proxy::server::start(&config).await?;
    let port = running.data_addr.port();
    let client = local_client(&dir.join("certs/ca.crt"), false)?;

    println!("Gatehouse demo");
    println!("  example config : {}", example.display());
    println!(
        "  gateway        : https://127.0.0.1:{port} (TLS, SNI routing), admin http://{}",
        running.admin_addr
    );
    println!(
        "  stand-in       : {} (records every request that reaches it)",
        standin.url()
    );
    println!(
        "  workspaces     : {}",
        hosts
            .iter()
            .map(|(n, h)| format!("{n}={h}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!();
    println!(
        "{:<10} {:<4} {:<30} {:<14} {:<8} what",
        "result", "http", "caller", "workspace", "upstream"
    );

    let tokens_dir = dir.join("tokens");
    std::fs::create_dir_all(&tokens_dir).map_err(|e| e.to_string())?;
    let token_for = |who: &str| -> Option<String> {
        if who == "(no token)" {
            return None;
        }
        if who == "(PAT)" {
            return Some(format!("dapi{}", "0123456789abcdef".repeat(2)));
        }
        let caller = CALLERS.iter().find(|c| c.name == who)?;
        Some(signer.token(&TokenSpec {
            issuer: &issuer,
            audience: &audience,
            subject: caller.name,
            principal_type: caller.principal_type,
            groups: caller.groups,
            ttl_secs: 3600,
        }))
    };
    for caller in CALLERS {
        if let Some(t) = token_for(caller.name) {
            let file = tokens_dir.join(format!(
                "{}.jwt",
                caller.name.split('@').next().unwrap_or("x")
            ));
            write_file(&file, t.as_bytes(), true)?;
        }
    }

    let mut failures = 0;
    for step in steps() {
        let host = hosts
            .iter()
            .find(|(n, _)| n == step.host)
            .map(|(_, h)| h.as_str())
            .unwrap_or(UNROUTED_HOST);
        let url = format!("https://{host}:{port}{}", step.path);
        let before = standin.seen().len();
        let mut builder = Request::builder().method(step.method.clone()).uri(&url);
        if let Some(t) = token_for(step.who) {
            builder = builder.header("authorization", format!("Bearer {t}"));
        }
        if step.body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        let req = builder
            .body(Full::new(Bytes::from(step.body.unwrap_or("").to_owned())))
            .map_err(|e| e.to_string())?;
        let (status, message) = match client.request(req).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                let message = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned));
                (status, message)
            }
            Err(e) => {
                println!("request failed: {e}");
                (0, None)
            }
        };
        let reached = standin.seen().len() > before;
        let ok = status == step.expect_status && reached == (status == 200);
        if !ok {
            failures += 1;
        }
        println!(
            "{:<10} {:<4} {:<30} {:<14} {:<8} {}",
            if !ok {
                "UNEXPECTED"
            } else if status == 200 {
                "allowed"
            } else {
                "blocked"
            },
            status,
            step.who,
            step.host,
            if reached { "reached" } else { "never" },
            step.what
        );
        if let (Some(m), true) = (message, status != 200) {
            println!("{:<10} {:<4} {}", "", "", m);
        }
    }

    // With the console, the gateway stays up for people to look around.
    let running = match provider {
        None => {
            running.shutdown().await;
            None
        }
        Some(_) => Some(running),
    };

    println!();
    println!(
        "Audit trail ({}): one decision record before forwarding, one completion after",
        config.audit.dir.display()
    );
    println!(
        "{:>4} {:<10} {:<30} {:<32} {:<6} rule",
        "seq", "phase", "principal", "action", "effect"
    );
    for r in read_trail(&config.audit.dir) {
        let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
        if r["phase"] == "decision" {
            println!(
                "{:>4} {:<10} {:<30} {:<32} {:<6} {}",
                r["seq"].as_u64().unwrap_or(0),
                "decision",
                s(&r["principal"]["id"]),
                s(&r["action"]["name"]),
                s(&r["decision"]["effect"]),
                s(&r["decision"]["rule"])
            );
        } else if r["phase"] != "completion" {
            println!(
                "{:>4} {:<10} gateway {} (the trail's own {} record, in the same hash chain)",
                r["seq"].as_u64().unwrap_or(0),
                s(&r["phase"]),
                s(&r["gateway"]),
                s(&r["phase"])
            );
        } else {
            println!(
                "{:>4} {:<10} status {} in {} µs, {} bytes out",
                r["seq"].as_u64().unwrap_or(0),
                "completion",
                r["status"],
                r["duration_us"],
                r["bytes_out"]
            );
        }
    }
    let key_path = dir.join("audit-signing.key.pub");
    let key = crate::audit::digest::PublicKey::load(&key_path)?;
    match crate::audit::verify::verify_dir(&config.audit.dir, Some(&key)) {
        Ok(reports) => {
            let n: u64 = reports.iter().map(|r| r.records).sum();
            let d: u64 = reports.iter().map(|r| r.signatures_checked).sum();
            println!(
                "Hash chain: {n} records verified; {d} signed digest(s) match their segments (gatehouse audit verify {} --key {})",
                config.audit.dir.display(),
                key_path.display()
            );
        }
        Err(e) => {
            failures += 1;
            println!("Hash chain: FAILED: {e}");
        }
    }
    println!();
    println!("Try it yourself (nothing is sent):");
    println!(
        "  cargo run -q -- explain --config {} --token \"$(cat {}/alice.jwt)\" --url 'https://{}/api/2.0/dbfs/read?path=/tmp/x'",
        dir.join("gatehouse.toml").display(),
        tokens_dir.display(),
        hosts.first().map(|(_, h)| h.as_str()).unwrap_or("analytics.dbx.example"),
    );
    if failures > 0 {
        return Err(format!(
            "{failures} request(s) were not handled as expected"
        ));
    }
    println!("All requests were handled as expected.");
    if let (Some(p), Some(running)) = (&provider, running) {
        println!();
        println!("Review console: https://localhost:{}/", p.port);
        println!(
            "  Your browser will warn about the development certificate (or trust {}).",
            dir.join("certs/ca.crt").display()
        );
        println!(
            "  Sign in at the demo's identity provider ({}) with any password as:",
            p.provider.issuer
        );
        println!(
            "    auditor1   the security team: the trail, the blocked requests above, denials"
        );
        println!("    approver1  a CDAO approver: exception requests");
        println!("  Ctrl-C stops the gateway.");
        let _ = tokio::signal::ctrl_c().await;
        running.shutdown().await;
    }
    Ok(())
}

/// The tests' loopback OpenID Provider, for the console demo; stopped when dropped.
pub struct DemoProvider {
    provider: crate::testing::LoopbackProvider,
    port: u16,
    secret_file: std::path::PathBuf,
}

impl DemoProvider {
    fn start(dir: &Path, port: u16) -> Result<DemoProvider, String> {
        let secret = crate::console::oidc::random_token();
        let secret_file = dir.join("console-client-secret");
        write_file(&secret_file, secret.as_bytes(), true)?;
        let provider = crate::testing::LoopbackProvider::start(
            Path::new("."),
            &secret,
            &format!("https://localhost:{port}/auth/callback"),
            std::process::Stdio::null(),
        )?;
        Ok(DemoProvider {
            provider,
            port,
            secret_file,
        })
    }
}

/// Rewrites the example configuration for the demo: local listeners, generated TLS
/// material and JWKS, every workspace forwarding to the stand-in, the trail in `dir`.
/// Returns the written path, the issuer and audience tokens must carry, and (workspace,
/// first host) pairs.
#[allow(clippy::type_complexity)]
fn demo_config(
    example: &Path,
    dir: &Path,
    upstream: &str,
    console: Option<&DemoProvider>,
) -> Result<(std::path::PathBuf, String, String, Vec<(String, String)>), String> {
    let text =
        std::fs::read_to_string(example).map_err(|e| format!("{}: {e}", example.display()))?;
    let mut table: toml::Table = text
        .parse()
        .map_err(|e| format!("{}: {e}", example.display()))?;
    let mut hosts = Vec::new();
    let d = dir.display().to_string();

    if let Some(workspaces) = table.get("workspace").and_then(|w| w.as_array()) {
        let mut all = Vec::new();
        for w in workspaces {
            if let (Some(name), Some(h)) = (
                w.get("name").and_then(|n| n.as_str()),
                w.get("hosts")
                    .and_then(|h| h.as_array())
                    .and_then(|h| h.first())
                    .and_then(|h| h.as_str()),
            ) {
                hosts.push((name.to_owned(), h.to_owned()));
                all.push(h.to_owned());
            }
        }
        // Lets the demo show an unrouted host being refused by the gateway, not by TLS.
        all.push(UNROUTED_HOST.to_owned());
        // The console is at https://localhost:PORT/.
        all.push("localhost".to_owned());
        let certs = generate_certs(&all, "demo-client")?;
        certs.write(&dir.join("certs"))?;
    } else {
        generate_certs(&[UNROUTED_HOST.to_owned()], "demo-client")?.write(&dir.join("certs"))?;
    }

    let set = |table: &mut toml::Table, section: &str, key: &str, value: toml::Value| {
        if let Some(t) = table.get_mut(section).and_then(|s| s.as_table_mut()) {
            t.insert(key.to_owned(), value);
        }
    };
    let s = |v: String| toml::Value::String(v);
    set(&mut table, "server", "listen", s("127.0.0.1:0".into()));
    let admin = match console {
        Some(p) => format!("127.0.0.1:{}", p.port),
        None => "127.0.0.1:0".to_owned(),
    };
    set(&mut table, "server", "admin_listen", s(admin));
    if let Some(p) = console {
        // The console signs people in where the gateway's tokens come from.
        if let Some(issuers) = table
            .get_mut("identity")
            .and_then(|i| i.get_mut("issuers"))
            .and_then(|i| i.as_array_mut())
        {
            issuers.push(s(p.provider.issuer.clone()));
        }
        let mut c = toml::Table::new();
        c.insert("oidc_issuer".into(), s(p.provider.issuer.clone()));
        c.insert("client_id".into(), s("gatehouse-console".into()));
        c.insert(
            "client_secret_file".into(),
            s(p.secret_file.display().to_string()),
        );
        c.insert(
            "redirect_url".into(),
            s(format!("https://localhost:{}/auth/callback", p.port)),
        );
        c.insert(
            "auditor_groups".into(),
            toml::Value::Array(vec![s("sec-auditors".into())]),
        );
        table.insert("console".into(), toml::Value::Table(c));
    }
    set(
        &mut table,
        "server",
        "tls_cert",
        s(format!("{d}/certs/gateway.crt")),
    );
    set(
        &mut table,
        "server",
        "tls_key",
        s(format!("{d}/certs/gateway.key")),
    );
    if let Some(server) = table.get_mut("server").and_then(|s| s.as_table_mut()) {
        server.remove("client_ca");
    }
    if let Some(identity) = table.get_mut("identity").and_then(|s| s.as_table_mut()) {
        identity.remove("jwks_url");
        identity.insert("jwks_file".into(), s(format!("{d}/jwks.json")));
    }
    if let Some(workspaces) = table.get_mut("workspace").and_then(|w| w.as_array_mut()) {
        for w in workspaces {
            if let Some(w) = w.as_table_mut() {
                w.insert("upstream".into(), s(upstream.to_owned()));
                w.remove("upstream_ca");
            }
        }
    }
    set(&mut table, "audit", "dir", s(format!("{d}/audit")));
    if table.contains_key("exceptions") {
        set(
            &mut table,
            "exceptions",
            "store",
            s(format!("sqlite://{d}/gatehouse.db")),
        );
    }
    crate::dev::write_ed25519_keypair(&dir.join("audit-signing.key"))?;
    set(
        &mut table,
        "audit",
        "signing_key",
        s(format!("{d}/audit-signing.key")),
    );
    let first = |section: &str, key: &str, default: &str| {
        table
            .get(section)
            .and_then(|s| s.get(key))
            .and_then(|v| v.as_array())
            .and_then(|a| a.first())
            .and_then(|v| v.as_str())
            .unwrap_or(default)
            .to_owned()
    };
    let issuer = first("identity", "issuers", "https://idp.example");
    let audience = first("identity", "audiences", "gatehouse");
    let path = dir.join("gatehouse.toml");
    let text = format!(
        "# Written by `gatehouse demo` from {}.\n{}",
        example.display(),
        toml::to_string(&table).map_err(|e| e.to_string())?
    );
    write_file(&path, text.as_bytes(), false)?;
    Ok((path, issuer, audience, hosts))
}
