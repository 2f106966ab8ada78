//! Writes a gateway configuration for the benchmark in `benches/vs-nginx/`: every check on
//! (bearer JWT verified against a JWKS, classification, policy, an audit trail with
//! `durability = "group"`), plain HTTP on one port and TLS on another, forwarding to a local
//! origin.
//!
//!   cargo run --release --example bench_setup -- DIR ORIGIN_URL HTTP_PORT TLS_PORT
//!
//! Writes `DIR/http/gatehouse.toml` and `DIR/tls/gatehouse.toml` (each with its own trail and
//! admin port 0), and prints one line: a bearer token for a service principal, valid 24 hours,
//! that the policy allows to read `/api/2.0/clusters/list`.

use std::path::Path;

use gatehouse::dev::TokenSpec;
use gatehouse::testing::{Fixture, FixtureOptions, AUDIENCE, ISSUER};

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, origin, http_port, tls_port] = args.as_slice() else {
        return Err("usage: bench_setup DIR ORIGIN_URL HTTP_PORT TLS_PORT".into());
    };
    let dir = Path::new(dir);
    let plain = Fixture::create(
        &dir.join("http"),
        origin,
        &FixtureOptions {
            tls: false,
            listen: format!("127.0.0.1:{http_port}"),
            server_extra: vec!["workers = 1".to_owned()],
            ..FixtureOptions::default()
        },
    )?;
    let tls = Fixture::create(
        &dir.join("tls"),
        origin,
        &FixtureOptions {
            tls: true,
            listen: format!("127.0.0.1:{tls_port}"),
            server_extra: vec!["workers = 1".to_owned()],
            ..FixtureOptions::default()
        },
    )?;
    // Both gateways must accept the same token: the TLS one trusts the plain one's key too.
    std::fs::copy(plain.dir.join("jwks.json"), tls.dir.join("jwks.json"))
        .map_err(|e| format!("jwks: {e}"))?;
    let token = plain.signer.token(&TokenSpec {
        issuer: ISSUER,
        audience: AUDIENCE,
        subject: "sp-bench",
        principal_type: "service_principal",
        groups: &["aiml-bench"],
        ttl_secs: 24 * 3600,
    });
    println!("{token}");
    Ok(())
}
