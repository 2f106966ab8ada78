//! The memory floor of an idle HTTP/1.1 keep-alive connection in hyper, with nothing of
//! gatehouse around it: a bare `hyper::server::conn::http1` server on one thread answering
//! `200 ok`. `BENCHMARKS.md` compares its resident memory with 10,000 idle connections against
//! the gateway's:
//!
//!   cargo run --release --example idle_floor -- 127.0.0.1:39190 &
//!   python3 benches/vs-nginx/idle.py --port 39190 --pid $! --conns 10000

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

fn main() -> Result<(), String> {
    let addr = std::env::args().nth(1).ok_or("usage: idle_floor ADDR")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| e.to_string())?;
        println!("idle_floor listening {addr}");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}
