//! The `gatehouse` binary's commands, run as an operator would.

use std::path::Path;
use std::process::Command;

fn gatehouse(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("gatehouse runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_check_accepts_the_example_and_reports_every_error_with_its_key() {
    // The example as shipped, with development certificates where it expects them.
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    assert_eq!(
        gatehouse(&["certs", "dev", "--out", certs.to_str().unwrap()]).0,
        0
    );
    let root = env!("CARGO_MANIFEST_DIR");
    let example = std::fs::read_to_string(Path::new(root).join("config/gatehouse.toml"))
        .unwrap()
        .replace("\"certs/", &format!("\"{}/", certs.display()))
        .replace("\"config/", &format!("\"{root}/config/"));
    let example_path = dir.path().join("gatehouse.toml");
    std::fs::write(&example_path, example).unwrap();
    let (code, out, err) = gatehouse(&[
        "config",
        "check",
        "--config",
        example_path.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok (3 workspaces"), "{out}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        r#"
[server]
listen = "here"
admin_listen = "127.0.0.1:9443"
[identity]
jwks_file = "/nonexistent/jwks.json"
issuers = []
audiences = ["gatehouse"]
[[workspace]]
name = "prod"
hosts = ["prod.dbx.example"]
upstream = "https://dbc-3.cloud.databricks.com/some/path"
humans = "never"
[audit]
dir = "var/audit"
durability = "sometimes"
"#,
    )
    .unwrap();
    let (code, _, err) = gatehouse(&["config", "check", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    for key in [
        "server.listen",
        "identity.jwks_file",
        "identity.issuers",
        "workspace[0].upstream",
        "workspace[0].humans",
        "audit.durability",
    ] {
        assert!(err.contains(key), "{key} missing from:\n{err}");
    }
}

#[test]
fn certs_dev_writes_a_usable_ca_and_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let (code, stdout, err) = gatehouse(&[
        "certs",
        "dev",
        "--out",
        out.to_str().unwrap(),
        "--host",
        "analytics.dbx.example",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("development"));
    for f in [
        "ca.crt",
        "ca.key",
        "gateway.crt",
        "gateway.key",
        "client.crt",
        "client.key",
        "clients-ca.crt",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    // The server configuration loads them, with client certificates verified against the CA.
    gatehouse::tls::server_config(
        &out.join("gateway.crt"),
        &out.join("gateway.key"),
        Some(&out.join("clients-ca.crt")),
    )
    .expect("usable server config");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("gateway.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "private keys are not readable by others");
    }
}

#[test]
fn explain_prints_the_decision_without_sending_anything() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 9: explain must not need the upstream.
    let fixture = gatehouse::testing::Fixture::create(
        dir.path(),
        "http://127.0.0.1:9",
        &gatehouse::testing::FixtureOptions::default(),
    )
    .unwrap();
    let config = fixture.config_path.to_str().unwrap().to_owned();
    let alice = fixture.token("alice@bank.example", "user", &["data-scientists"]);

    let (code, out, err) = gatehouse(&[
        "explain",
        "--config",
        &config,
        "--token",
        &alice,
        "--url",
        "https://analytics.dbx.example/api/2.0/dbfs/read?path=dbfs:/tmp/x",
    ]);
    assert_eq!(code, 0, "{err}");
    for needle in [
        "prod-analytics",
        "dbfs.read (download)",
        "dbfs dbfs:/tmp/x",
        "alice@bank.example (user",
        "DENY (rule downloads.blocked)",
    ] {
        assert!(out.contains(needle), "{needle} missing from:\n{out}");
    }
    assert!(!out.contains(&alice), "the token is never printed");

    let (_, out, _) = gatehouse(&[
        "explain",
        "--config",
        &config,
        "--token",
        &alice,
        "--json",
        "--url",
        "https://prod.dbx.example/api/2.1/clusters/list",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["decision"]["rule"], "workspace.humans_denied");

    let body = dir.path().join("body.json");
    std::fs::write(
        &body,
        r#"{"statement":"select 1","disposition":"EXTERNAL_LINKS"}"#,
    )
    .unwrap();
    let (_, out, _) = gatehouse(&[
        "explain",
        "--config",
        &config,
        "--token",
        &alice,
        "--method",
        "POST",
        "--body",
        body.to_str().unwrap(),
        "--url",
        "https://analytics.dbx.example/api/2.0/sql/statements",
    ]);
    assert!(
        out.contains("sql.statements.external_links") || out.contains("DENY"),
        "{out}"
    );
    assert!(out.contains("DENY (rule downloads.blocked)"), "{out}");

    let (_, out, _) = gatehouse(&[
        "explain",
        "--config",
        &config,
        "--url",
        "https://analytics.dbx.example/api/2.1/clusters/list",
    ]);
    assert!(out.contains("identity.missing_token"), "{out}");
}

#[test]
fn the_demo_runs_and_every_request_is_handled_as_expected() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let (code, out, err) = gatehouse(&["demo", "--dir", demo.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("All requests were handled as expected."));
    assert!(!out.contains("UNEXPECTED"));
    let trail = gatehouse::testing::read_trail(&demo.join("audit"));
    assert!(trail
        .iter()
        .any(|r| r["decision"]["rule"] == "downloads.blocked"));
    assert!(Path::new(&demo.join("tokens/alice.jwt")).exists());
}

#[test]
fn audit_keygen_writes_a_private_and_a_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("keys/audit-signing.key");
    let (code, out, err) = gatehouse(&["audit", "keygen", "--out", key.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("audit-signing.key.pub"));
    let private = std::fs::read_to_string(&key).unwrap();
    let public = std::fs::read_to_string(dir.path().join("keys/audit-signing.key.pub")).unwrap();
    assert!(private.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0);
    }
}

#[test]
fn audit_verify_accepts_the_demo_trail_and_names_the_first_tampered_record() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let (code, out, err) = gatehouse(&["demo", "--dir", demo.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    let audit = demo.join("audit");
    let key = demo.join("audit-signing.key.pub");
    let (code, out, err) = gatehouse(&[
        "audit",
        "verify",
        audit.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("ok,") && out.contains("1 signature(s) checked"),
        "{out}"
    );
    let (code, out, _) = gatehouse(&["audit", "verify", audit.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("signatures NOT checked"), "{out}");

    let segments = gatehouse::audit::segment::list(&audit).unwrap();
    assert_eq!(segments.len(), 1, "one run of the demo, one segment");
    let trail = segments[0].path.clone();
    let original = std::fs::read_to_string(&trail).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    let check = |text: String| {
        std::fs::write(&trail, text).unwrap();
        gatehouse(&["audit", "verify", audit.to_str().unwrap()])
    };
    // An edited field.
    let edited = original.replacen("\"effect\":\"deny\"", "\"effect\":\"allow\"", 1);
    let (code, _, err) = check(edited);
    assert_eq!(code, 1);
    assert!(err.contains("altered"), "{err}");
    // A deleted line.
    let mut without = lines.clone();
    without.remove(3);
    let (code, _, err) = check(without.join("\n") + "\n");
    assert_eq!(code, 1);
    assert!(
        err.contains("line 4") && err.contains("seq 5 where 4 was expected"),
        "{err}"
    );
    // Swapped lines.
    let mut swapped = lines.clone();
    swapped.swap(2, 3);
    let (code, _, err) = check(swapped.join("\n") + "\n");
    assert_eq!(code, 1, "{err}");
    // A line appended after the segment was closed: its signed digest says otherwise.
    let (code, _, err) = check(format!("{}{}", original, &lines[1][..20]));
    assert_eq!(code, 1);
    assert!(err.contains("does not match digest 1"), "{err}");
    // What a crash leaves (no digest yet, half a line): tolerated and reported.
    std::fs::remove_file(audit.join("gw-1.digests")).unwrap();
    let (code, out, _) = check(format!("{}{}", original, &lines[1][..20]));
    assert_eq!(code, 0);
    assert!(out.contains("torn last line"), "{out}");
    // Truncation in the middle of the file is not a tail.
    let mut cut = lines.clone();
    cut[2] = &lines[2][..lines[2].len() / 2];
    let (code, _, err) = check(cut.join("\n") + "\n");
    assert_eq!(code, 1, "{err}");
}

/// Runs the demo in a fresh directory; returns it (kept alive) and the demo's trail directory.
fn demo_trail() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let (code, out, err) = gatehouse(&["demo", "--dir", demo.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    (dir, demo.join("audit"))
}

/// `gatehouse audit <command> <trail> --json <args>`, its output parsed line by line.
fn json_lines(command: &str, trail: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["audit", command, trail, "--json"];
    all.extend_from_slice(args);
    let (code, out, err) = gatehouse(&all);
    assert_eq!(code, 0, "{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn audit_query_finds_decisions_joined_with_their_completions() {
    let (_dir, audit) = demo_trail();
    let audit = audit.to_str().unwrap();
    let json = |args: &[&str]| json_lines("query", audit, args);
    let all = json(&[]);
    let denies = json(&["--decision", "deny"]);
    assert!(!denies.is_empty() && denies.len() < all.len());
    assert!(denies.iter().all(|r| r["decision"]["effect"] == "deny"));
    assert!(
        all.iter().all(|r| r["completion"]["status"].is_u64()),
        "every decision joined"
    );
    let reads = json(&["--action", "dbfs.read", "--asset", "dbfs:/tmp/"]);
    assert_eq!(reads.len(), 2, "the plain and the disguised DBFS read");
    assert!(reads.iter().all(|r| r["completion"]["status"] == 403));
    let prod = json(&["--principal", "sp-aiml-prod", "--since", "1h"]);
    assert_eq!(prod.len(), 1);
    assert!(json(&["--until", "2000-01-01T00:00:00Z"]).is_empty());
    assert_eq!(json(&["--limit", "3"]).len(), 3);
    let (code, out, _) = gatehouse(&["audit", "query", audit, "--rule", "workspace.humans_denied"]);
    assert_eq!(code, 0);
    assert!(out.lines().next().unwrap().starts_with("ts"), "{out}");
    assert!(
        out.contains("alice@bank.example") && out.contains("403"),
        "{out}"
    );
}

#[test]
fn audit_lineage_answers_who_touched_an_asset_and_what_a_principal_touched() {
    let (_dir, audit) = demo_trail();
    let audit = audit.to_str().unwrap();
    let rows = |args: &[&str]| json_lines("lineage", audit, args);
    // Both DBFS reads of the file (the plain one and the disguised one) were refused.
    let file = rows(&["--asset", "dbfs:/tmp/customers.csv"]);
    assert_eq!(file.len(), 1, "{file:?}");
    assert_eq!(file[0]["principal"], "alice@bank.example");
    assert_eq!(file[0]["direction"], "read");
    assert_eq!(
        (file[0]["denied"].as_u64(), file[0]["allowed"].as_u64()),
        (Some(2), Some(0))
    );
    assert!(file[0]["first_seen"].as_str().unwrap() <= file[0]["last_seen"].as_str().unwrap());

    let alice = rows(&["--principal", "alice@bank.example"]);
    assert!(alice.iter().all(|r| r["principal"] == "alice@bank.example"));
    assert!(alice.iter().any(|r| r["asset"]
        .as_str()
        .unwrap()
        .contains("/Volumes/main/raw/landing/customers.csv")));
    assert!(rows(&["--principal", "nobody@bank.example"]).is_empty());

    let (code, out, _) = gatehouse(&["audit", "lineage", audit, "--asset", "dbfs:/tmp/"]);
    assert_eq!(code, 0);
    assert!(out.lines().next().unwrap().starts_with("asset"), "{out}");
    let (code, _, err) = gatehouse(&["audit", "lineage", audit]);
    assert_ne!(code, 0);
    assert!(
        err.contains("--asset") || err.contains("--principal"),
        "{err}"
    );
}

/// Sends `signal` (by name, e.g. "HUP") to a process with the system's `kill`.
#[cfg(unix)]
fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[cfg(unix)]
#[test]
fn serve_reloads_on_sighup_and_records_every_attempt_and_the_stop() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let fixture = gatehouse::testing::Fixture::create(
        dir.path(),
        "http://127.0.0.1:9",
        &gatehouse::testing::FixtureOptions::default(),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["serve", "--config", fixture.config_path.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = lines.next().unwrap().unwrap();
    assert!(
        listening.starts_with("gatehouse listening data="),
        "{listening}"
    );
    let reloads = || -> Vec<serde_json::Value> {
        gatehouse::testing::read_trail(&fixture.audit_dir)
            .into_iter()
            .filter(|r| r["phase"] == "config" && r["event"] == "reload")
            .collect()
    };
    let wait_for = |n: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while reloads().len() < n {
            assert!(std::time::Instant::now() < deadline, "no reload record");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        reloads()
    };

    send_signal(child.id(), "HUP");
    assert_eq!(wait_for(1)[0]["outcome"], "applied");
    let text = std::fs::read_to_string(&fixture.config_path).unwrap();
    std::fs::write(&fixture.config_path, text.replace("[policy]", "[polcy]")).unwrap();
    send_signal(child.id(), "HUP");
    let after = wait_for(2);
    assert_eq!(after[1]["outcome"], "refused");
    assert!(
        after[1]["errors"].to_string().contains("polcy"),
        "{}",
        after[1]
    );

    send_signal(child.id(), "TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let trail = gatehouse::testing::read_trail(&fixture.audit_dir);
    assert_eq!(trail.last().unwrap()["phase"], "stop");
}
