//! A signature-verifying S3 upstream for the tests: s3s-fs serving a directory, checking
//! every SigV4 signature against one access key. The real-client tests put it behind the
//! gateway to prove that what the gateway forwards still verifies.
//!
//! `cargo run --example s3s_upstream -- --access-key AKIA… --secret-key … DIR`
//! Prints `listening 127.0.0.1:PORT` once it accepts connections.

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
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--access-key" => access_key = args.next(),
            "--secret-key" => secret_key = args.next(),
            "--port" => port = args.next().ok_or("--port needs a value")?.parse()?,
            _ => root = Some(arg),
        }
    }
    let root = root.ok_or("usage: s3s_upstream --access-key K --secret-key S [--port P] DIR")?;
    let (Some(ak), Some(sk)) = (access_key, secret_key) else {
        return Err("--access-key and --secret-key are required".into());
    };
    let fs = FileSystem::new(root).map_err(|e| format!("{e:?}"))?;
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(ak, sk));
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
