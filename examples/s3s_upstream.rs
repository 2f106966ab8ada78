//! A signature-verifying S3 upstream for the tests: s3s-fs serving a directory, checking
//! every SigV4 signature against one access key. The real-client tests put it behind the
//! gateway to prove that what the gateway forwards still verifies.
//!
//! `cargo run --example s3s_upstream -- --access-key AKIA… --secret-key … DIR`
//! Prints `listening 127.0.0.1:PORT` once it accepts connections.
//!
//! As the differential oracle's S3 side (issue 15): `--record FILE` appends one JSON line per
//! request s3s routed — `{"op", "bucket", "key", "copy_source", "request_id"}`, taken after
//! the signature is verified and before anything executes (`tests/common/s3s_oracle.rs`) —
//! to compare with the gateway's trail on the request id. `--host NAME` (repeatable, the
//! gateway's `[s3] hosts` spelling: `name` path style, `*.domain` virtual-hosted) and
//! `--access-point HOST=BUCKET` make s3s read virtual-hosted and access-point hosts as the
//! gateway is configured to; without them every request is read path style, as before.
//! Signature verification and the refusal of unsigned requests are unchanged either way.

#[path = "../tests/common/s3s_oracle.rs"]
mod s3s_oracle;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use s3s_fs::FileSystem;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut access_key = None;
    let mut secret_key = None;
    let mut port = 0u16;
    let mut root = None;
    let mut record = None;
    let mut hosts: Vec<String> = Vec::new();
    let mut access_points: Vec<(String, String)> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--access-key" => access_key = args.next(),
            "--secret-key" => secret_key = args.next(),
            "--port" => port = args.next().ok_or("--port needs a value")?.parse()?,
            "--record" => record = Some(args.next().ok_or("--record needs a file")?),
            "--host" => hosts.push(args.next().ok_or("--host needs a name")?),
            "--access-point" => {
                let value = args.next().ok_or("--access-point needs HOST=BUCKET")?;
                let (host, bucket) = value
                    .split_once('=')
                    .ok_or("--access-point needs HOST=BUCKET")?;
                access_points.push((host.to_owned(), bucket.to_owned()));
            }
            _ => root = Some(arg),
        }
    }
    let root = root.ok_or(
        "usage: s3s_upstream --access-key K --secret-key S [--port P] [--record FILE] \
         [--host NAME]… [--access-point HOST=BUCKET]… DIR",
    )?;
    let (Some(ak), Some(sk)) = (access_key, secret_key) else {
        return Err("--access-key and --secret-key are required".into());
    };
    let fs = FileSystem::new(root).map_err(|e| format!("{e:?}"))?;
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(ak, sk));
    if let Some(path) = record {
        builder.set_access(s3s_oracle::Recorder::to_file(std::path::Path::new(&path))?);
    }
    if !hosts.is_empty() || !access_points.is_empty() {
        let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
        let access_points: Vec<(&str, &str)> = access_points
            .iter()
            .map(|(h, b)| (h.as_str(), b.as_str()))
            .collect();
        builder.set_host(s3s_oracle::OracleHost::from_gateway_hosts(
            &hosts,
            &access_points,
        ));
    }
    let service = builder.build();
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening {}", listener.local_addr()?);
    loop {
        let (socket, _) = listener.accept().await?;
        let service = service.clone();
        tokio::spawn(async move {
            let _ = Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(socket), service)
                .await;
        });
    }
}
