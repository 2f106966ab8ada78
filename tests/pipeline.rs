//! Behaviour of `pipeline` against origins on 127.0.0.1: a raw TCP origin
//! whose framing and connection closes each test controls, and a hyper
//! origin. No timing assertions; `within` only turns a hang into a failure.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use gatehouse::proxy::pipeline::{
    Pipeline, PipelineConfig, PipelineError, PipelinedBody, Pipelines,
};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Either, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// A request as the origin saw it.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    /// Which accepted connection (0 = first).
    conn: usize,
    /// Which request on that connection (0 = first).
    nth: usize,
}

/// What the origin does for one request, in order.
enum Act {
    Write(Vec<u8>),
    /// `len` pattern bytes, raw (the head was written before).
    Pattern(usize),
    /// `len` pattern bytes as a chunked body, 1 MiB per chunk.
    ChunkedPattern(usize),
    /// Wait for the test before going on.
    Hold(Arc<Notify>),
    /// Stop answering without a word: FIN, then discard what still arrives.
    Close,
    /// Drop the socket at once (RST, since pipelined requests are unread).
    Reset,
}

#[derive(Default)]
struct Stats {
    connections: AtomicUsize,
    requests: AtomicUsize,
    /// Most complete request heads found in the buffer after one read.
    max_heads_per_read: AtomicUsize,
}

type Handler = Arc<dyn Fn(&Seen) -> Vec<Act> + Send + Sync>;

const PIECE: usize = 1 << 20;
const PATTERN_PERIOD: usize = 251;

async fn origin(
    handler: impl Fn(&Seen) -> Vec<Act> + Send + Sync + 'static,
) -> (String, Arc<Stats>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    let stats = Arc::new(Stats::default());
    let handler: Handler = Arc::new(handler);
    let counters = Arc::clone(&stats);
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let conn = counters.connections.fetch_add(1, SeqCst);
            tokio::spawn(serve(
                sock,
                conn,
                Arc::clone(&handler),
                Arc::clone(&counters),
            ));
        }
    });
    (addr, stats)
}

async fn serve(mut sock: TcpStream, conn: usize, handler: Handler, stats: Arc<Stats>) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut nth = 0;
    loop {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        let heads = buf.windows(4).filter(|w| w == b"\r\n\r\n").count();
        stats.max_heads_per_read.fetch_max(heads, SeqCst);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
            let seen = Seen { path, conn, nth };
            nth += 1;
            stats.requests.fetch_add(1, SeqCst);
            for act in handler(&seen) {
                let written = match act {
                    Act::Write(bytes) => sock.write_all(&bytes).await.is_ok(),
                    Act::Pattern(len) => write_pattern(&mut sock, len, false).await,
                    Act::ChunkedPattern(len) => write_pattern(&mut sock, len, true).await,
                    Act::Hold(signal) => {
                        signal.notified().await;
                        true
                    }
                    Act::Close => return linger(sock).await,
                    Act::Reset => return,
                };
                if !written {
                    return;
                }
            }
        }
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % PATTERN_PERIOD) as u8).collect()
}

async fn write_pattern(sock: &mut TcpStream, len: usize, chunked: bool) -> bool {
    let source = pattern(PIECE + PATTERN_PERIOD);
    let mut offset = 0;
    while offset < len {
        let n = PIECE.min(len - offset);
        let data = &source[offset % PATTERN_PERIOD..][..n];
        let framed = if chunked {
            let mut framed = format!("{n:x}\r\n").into_bytes();
            framed.extend_from_slice(data);
            framed.extend_from_slice(b"\r\n");
            sock.write_all(&framed).await
        } else {
            sock.write_all(data).await
        };
        if framed.is_err() {
            return false;
        }
        offset += n;
    }
    !chunked || sock.write_all(b"0\r\n\r\n").await.is_ok()
}

async fn linger(mut sock: TcpStream) {
    let _ = sock.shutdown().await;
    let mut sink = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut sink)).await
    {
        if n == 0 {
            return;
        }
    }
}

fn get(path: &str) -> Request<()> {
    Request::get(path)
        .header("host", "origin.test")
        .body(())
        .expect("request")
}

fn ok(body: &str) -> Act {
    Act::Write(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

/// Bodies of varying length, so responses straddle read boundaries.
fn expected_body(path: &str) -> String {
    format!("{path};").repeat(path.len() % 7 + 1)
}

fn config(max_connections: usize, max_depth: usize) -> PipelineConfig {
    PipelineConfig {
        max_connections,
        max_depth,
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(60),
    }
}

async fn text(response: Response<PipelinedBody>) -> Result<String, PipelineError> {
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8(bytes.to_vec()).expect("utf-8 body"))
}

async fn fetch(pipeline: &Pipeline, path: &str) -> Result<String, PipelineError> {
    text(pipeline.send(get(path)).await?).await
}

/// Turns a hang into a failure; not a timing assertion.
async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), fut)
        .await
        .expect("test hung")
}

async fn wait_until(cond: impl Fn() -> bool) {
    within(async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// Polls once, so the request is queued on a connection before the next one.
async fn poll_once<F: Future>(fut: Pin<&mut F>) -> Poll<F::Output> {
    let mut fut = fut;
    std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await
}

/// Queues `paths` in order, each request on the wire before any response
/// can arrive; returns the pinned response futures.
async fn queue_in_order<'a>(
    pipeline: &'a Pipeline,
    paths: &[&str],
) -> Vec<Pin<Box<impl Future<Output = Result<Response<PipelinedBody>, PipelineError>> + 'a>>> {
    let mut futures = Vec::new();
    for path in paths {
        let mut fut = Box::pin(pipeline.send(get(path)));
        assert!(
            poll_once(fut.as_mut()).await.is_pending(),
            "{path} answered before it was queued"
        );
        futures.push(fut);
    }
    futures
}

/// `callers` tasks each send `each` requests with their own paths, one
/// after another; every body must name the caller's own path.
async fn run_callers(pipeline: &Pipeline, callers: usize, each: usize, tag: &str) {
    let mut tasks = tokio::task::JoinSet::new();
    for caller in 0..callers {
        let pipeline = pipeline.clone();
        let tag = tag.to_owned();
        tasks.spawn(async move {
            for request in 0..each {
                let path = format!("/{tag}/c{caller}/r{request}");
                let body = fetch(&pipeline, &path)
                    .await
                    .unwrap_or_else(|e| panic!("{path}: {e}"));
                assert_eq!(
                    body,
                    expected_body(&path),
                    "a caller got another request's response"
                );
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("caller task");
    }
}

fn echo_origin() -> impl Fn(&Seen) -> Vec<Act> + Send + Sync + 'static {
    |seen| vec![ok(&expected_body(&seen.path))]
}

// 1. Order: many callers, distinct responses, two shared connections.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_callers_each_get_their_own_response_over_two_connections() {
    let (addr, stats) = origin(echo_origin()).await;
    let pipeline = Pipeline::new(addr, config(2, 16));
    within(run_callers(&pipeline, 200, 20, "order")).await;
    assert!(
        stats.connections.load(SeqCst) <= 2,
        "origin saw {} connections",
        stats.connections.load(SeqCst)
    );
    assert_eq!(stats.requests.load(SeqCst), 200 * 20);
    assert!(
        stats.max_heads_per_read.load(SeqCst) > 1,
        "no read at the origin held more than one request head: nothing was pipelined"
    );
}

#[tokio::test]
async fn order_holds_on_a_current_thread_runtime() {
    let (addr, stats) = origin(echo_origin()).await;
    let pipeline = Pipeline::new(addr, config(2, 16));
    within(run_callers(&pipeline, 100, 10, "current")).await;
    assert!(stats.connections.load(SeqCst) <= 2);
    assert!(
        stats.max_heads_per_read.load(SeqCst) > 1,
        "nothing was pipelined"
    );
}

/// A body without a length hint, so hyper sends it chunked.
struct TwoChunks(Option<Bytes>, Option<Bytes>);

impl Body for TwoChunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = self.0.take().or_else(|| self.1.take());
        Poll::Ready(next.map(|data| Ok(Frame::data(data))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_holds_against_a_hyper_origin() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let service =
                hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let body = Bytes::from(expected_body(req.uri().path()));
                    // Every other response chunked, to mix framings on one connection.
                    let body = if body.len() % 2 == 0 {
                        Either::Left(Full::new(body))
                    } else {
                        let half = body.len() / 2;
                        Either::Right(TwoChunks(
                            Some(body.slice(..half)),
                            Some(body.slice(half..)),
                        ))
                    };
                    Ok::<_, Infallible>(Response::new(body))
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .pipeline_flush(true)
                    .serve_connection(hyper_util::rt::TokioIo::new(sock), service),
            );
        }
    });
    let pipeline = Pipeline::new(addr, config(2, 16));
    within(run_callers(&pipeline, 100, 10, "hyper")).await;
}

// 2. Forced closes: every caller still gets its own response.

#[derive(Clone, Copy, Debug)]
enum Closing {
    /// `Connection: close` on every `every`-th response.
    Announced,
    /// FIN after every `every`-th response, requests behind it unanswered.
    Silent,
    /// HTTP/1.0 responses: each is the last on its connection.
    Http10,
}

async fn survives_closes(closing: Closing, every: usize) {
    let (addr, stats) = origin(move |seen| {
        let body = expected_body(&seen.path);
        let last = (seen.nth + 1) % every == 0;
        let response = |status_line: &str, extra: &str| {
            Act::Write(
                format!(
                    "{status_line}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes(),
            )
        };
        match closing {
            Closing::Announced if last => vec![
                response("HTTP/1.1 200 OK", "Connection: close\r\n"),
                Act::Close,
            ],
            Closing::Silent if last => vec![response("HTTP/1.1 200 OK", ""), Act::Close],
            Closing::Http10 => vec![response("HTTP/1.0 200 OK", ""), Act::Close],
            Closing::Announced | Closing::Silent => vec![response("HTTP/1.1 200 OK", "")],
        }
    })
    .await;
    let pipeline = Pipeline::new(addr, config(2, 8));
    within(run_callers(
        &pipeline,
        40,
        10,
        &format!("{closing:?}-{every}"),
    ))
    .await;
    assert!(
        stats.connections.load(SeqCst) > 2,
        "the origin never closed a connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_close_every_third_response() {
    survives_closes(Closing::Announced, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_close_every_third_response() {
    survives_closes(Closing::Silent, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_close_after_every_response() {
    survives_closes(Closing::Silent, 1).await;
}

#[tokio::test]
async fn http10_responses_end_their_connection() {
    survives_closes(Closing::Http10, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_connection_reset_before_any_response() {
    let (addr, stats) = origin(|seen| match seen.conn {
        0 => vec![Act::Reset],
        _ => vec![ok(&expected_body(&seen.path))],
    })
    .await;
    let pipeline = Pipeline::new(addr, config(2, 8));
    within(run_callers(&pipeline, 40, 5, "reset")).await;
    assert!(stats.connections.load(SeqCst) > 1);
}

#[tokio::test]
async fn a_request_that_kills_every_connection_fails_after_one_retry() {
    let (addr, _) = origin(|seen| match seen.path.as_str() {
        "/poison" => vec![Act::Close],
        path => vec![ok(&expected_body(path))],
    })
    .await;
    let pipeline = Pipeline::new(addr, config(1, 8));
    let mut queued = queue_in_order(&pipeline, &["/poison", "/behind-poison"]).await;
    let behind = queued.pop().expect("behind");
    let poison = queued.pop().expect("poison");
    assert!(matches!(within(poison).await, Err(PipelineError::Closed)));
    assert_eq!(
        text(within(behind).await.expect("behind"))
            .await
            .expect("body"),
        expected_body("/behind-poison")
    );
}

// 3. Framing: chunked, HEAD, 204/304, interim 1xx, close-delimited.

#[tokio::test]
async fn framings_keep_one_connection_aligned() {
    let release = Arc::new(Notify::new());
    let hold = Arc::clone(&release);
    let (addr, stats) = origin(move |seen| {
        let write = |raw: &str| Act::Write(raw.as_bytes().to_vec());
        match seen.path.as_str() {
            "/chunked-whole" => vec![write(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                 3\r\nabc\r\n4;name=value\r\ndefg\r\n0\r\nX-Trailer: dropped\r\n\r\n",
            )],
            "/chunked-streamed" => vec![
                write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n"),
                Act::Hold(Arc::clone(&hold)),
                write("7\r\n-second\r\n0\r\n\r\n"),
            ],
            "/head" => vec![write("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nX-Kind: head\r\n\r\n")],
            "/no-content" => vec![write("HTTP/1.1 204 No Content\r\nX-Kind: 204\r\n\r\n")],
            "/not-modified" => vec![write("HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\nETag: \"v1\"\r\n\r\n")],
            "/interim" => vec![
                write("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"),
                ok("final after interim"),
            ],
            "/until-close" => vec![write("HTTP/1.1 200 OK\r\n\r\nread until the upstream closes"), Act::Close],
            path => vec![ok(&expected_body(path))],
        }
    })
    .await;
    let pipeline = Pipeline::new(addr, config(1, 8));
    let after = |step: &str| format!("/after-{step}");
    let check_after = |step: &'static str| {
        let pipeline = &pipeline;
        async move {
            let path = after(step);
            assert_eq!(
                fetch(pipeline, &path).await.expect("after"),
                expected_body(&path),
                "misaligned after {step}"
            );
        }
    };

    assert_eq!(
        fetch(&pipeline, "/chunked-whole").await.expect("chunked"),
        "abcdefg"
    );
    check_after("chunked-whole").await;

    let response = pipeline
        .send(get("/chunked-streamed"))
        .await
        .expect("streamed head");
    let mut body = response.into_body();
    assert!(!body.is_end_stream());
    assert_eq!(body.size_hint().exact(), None);
    let first = body
        .frame()
        .await
        .expect("frame")
        .expect("data")
        .into_data()
        .expect("data frame");
    assert_eq!(first, "first");
    release.notify_one();
    assert_eq!(body.collect().await.expect("rest").to_bytes(), "-second");
    check_after("chunked-streamed").await;

    let head = Request::head("/head")
        .header("host", "origin.test")
        .body(())
        .expect("request");
    let response = pipeline.send(head).await.expect("head");
    assert_eq!(response.headers()["content-length"], "1000");
    assert_eq!(response.headers()["x-kind"], "head");
    assert!(response.body().is_end_stream());
    assert_eq!(response.body().size_hint().exact(), Some(0));
    check_after("head").await;

    for (path, status) in [
        ("/no-content", StatusCode::NO_CONTENT),
        ("/not-modified", StatusCode::NOT_MODIFIED),
    ] {
        let response = pipeline.send(get(path)).await.expect("bodiless");
        assert_eq!(response.status(), status);
        assert!(response.body().is_end_stream());
        assert_eq!(text(response).await.expect("body"), "");
    }
    check_after("bodiless").await;

    let response = pipeline.send(get("/interim")).await.expect("interim");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        !response.headers().contains_key("link"),
        "interim headers leaked into the final response"
    );
    assert_eq!(
        response.body().size_hint().exact(),
        Some("final after interim".len() as u64)
    );
    assert_eq!(text(response).await.expect("body"), "final after interim");
    check_after("interim").await;
    assert_eq!(stats.connections.load(SeqCst), 1);

    assert_eq!(
        fetch(&pipeline, "/until-close").await.expect("until close"),
        "read until the upstream closes"
    );
    check_after("until-close").await;
    assert_eq!(
        stats.connections.load(SeqCst),
        2,
        "a close-delimited body ends its connection"
    );
}

// 4. A 64 MiB body streams, and the request queued behind it completes.

async fn check_pattern(mut body: PipelinedBody) -> usize {
    let expected = pattern(PIECE + PATTERN_PERIOD);
    let mut offset = 0;
    while let Some(frame) = body.frame().await {
        let data = frame.expect("body frame").into_data().expect("data frame");
        assert!(data.len() <= PIECE, "frame larger than expected");
        assert!(
            data[..] == expected[offset % PATTERN_PERIOD..][..data.len()],
            "corrupt body at {offset}"
        );
        offset += data.len();
    }
    offset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_body_streams_and_the_request_behind_it_completes() {
    const BIG: usize = 64 << 20;
    let (addr, stats) = origin(|seen| match seen.path.as_str() {
        "/big" => vec![
            Act::Write(format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n").into_bytes()),
            Act::Pattern(BIG),
        ],
        "/big-chunked" => vec![
            Act::Write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec()),
            Act::ChunkedPattern(BIG),
        ],
        path => vec![ok(&expected_body(path))],
    })
    .await;
    let pipeline = Pipeline::new(addr, config(1, 4));
    for big in ["/big", "/big-chunked"] {
        let small = format!("{big}/behind");
        let mut queued = queue_in_order(&pipeline, &[big, &small]).await;
        let small_response = queued.pop().expect("small");
        let big_response = within(queued.pop().expect("big")).await.expect("big head");
        if big == "/big" {
            assert_eq!(big_response.body().size_hint().exact(), Some(BIG as u64));
        }
        assert_eq!(within(check_pattern(big_response.into_body())).await, BIG);
        let small_response = within(small_response).await.expect("small head");
        assert_eq!(
            text(small_response).await.expect("small body"),
            expected_body(&small)
        );
    }
    assert_eq!(stats.connections.load(SeqCst), 1);
}

// 5. Callers that leave early do not desync the connection.

#[tokio::test]
async fn dropped_callers_do_not_desync_the_connection() {
    const MEDIUM: usize = 512 * 1024;
    const HUGE: usize = 8 << 20;
    let release = Arc::new(Notify::new());
    let hold = Arc::clone(&release);
    let (addr, stats) = origin(move |seen| {
        let sized = |len: usize| {
            vec![
                Act::Write(
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").into_bytes(),
                ),
                Act::Pattern(len),
            ]
        };
        match seen.path.as_str() {
            "/slow" => vec![Act::Hold(Arc::clone(&hold)), ok(&expected_body("/slow"))],
            "/medium" => sized(MEDIUM),
            "/huge" => sized(HUGE),
            path => vec![ok(&expected_body(path))],
        }
    })
    .await;
    let pipeline = Pipeline::new(addr, config(1, 8));

    // The caller's future is dropped while its response is still owed.
    let mut queued = queue_in_order(&pipeline, &["/slow", "/after-slow"]).await;
    let after_slow = queued.pop().expect("after");
    let stats_seen = Arc::clone(&stats);
    wait_until(move || stats_seen.requests.load(SeqCst) >= 1).await;
    drop(queued);
    release.notify_one();
    let response = within(after_slow).await.expect("after slow");
    assert_eq!(
        text(response).await.expect("body"),
        expected_body("/after-slow")
    );
    assert_eq!(stats.connections.load(SeqCst), 1);

    // A 512 KiB body dropped after its first frame is read and discarded in place.
    let mut queued = queue_in_order(&pipeline, &["/medium", "/after-medium"]).await;
    let after_medium = queued.pop().expect("after");
    let mut body = within(queued.pop().expect("medium"))
        .await
        .expect("medium head")
        .into_body();
    assert!(body.frame().await.expect("frame").is_ok());
    drop(body);
    let response = within(after_medium).await.expect("after medium");
    assert_eq!(
        text(response).await.expect("body"),
        expected_body("/after-medium")
    );
    assert_eq!(
        stats.connections.load(SeqCst),
        1,
        "a small dropped body should not cost the connection"
    );

    // An 8 MiB body dropped midway is not worth reading: the connection
    // closes and the request behind it moves to a new one.
    let mut queued = queue_in_order(&pipeline, &["/huge", "/after-huge"]).await;
    let after_huge = queued.pop().expect("after");
    let mut body = within(queued.pop().expect("huge"))
        .await
        .expect("huge head")
        .into_body();
    assert!(body.frame().await.expect("frame").is_ok());
    drop(body);
    let response = within(after_huge).await.expect("after huge");
    assert_eq!(
        text(response).await.expect("body"),
        expected_body("/after-huge")
    );
    assert_eq!(stats.connections.load(SeqCst), 2);
}

#[tokio::test]
async fn a_stalled_response_nobody_wants_does_not_hold_up_the_requests_behind_it() {
    let never = Arc::new(Notify::new());
    let (addr, stats) = origin(move |seen| match seen.path.as_str() {
        "/never" => vec![Act::Hold(Arc::clone(&never))],
        path => vec![ok(&expected_body(path))],
    })
    .await;
    let pipeline = Pipeline::new(addr, config(1, 8));
    let mut queued = queue_in_order(&pipeline, &["/never", "/behind-never"]).await;
    let behind = queued.pop().expect("behind");
    let stats_seen = Arc::clone(&stats);
    wait_until(move || stats_seen.requests.load(SeqCst) >= 1).await;
    drop(queued); // the caller of /never times out
    let response = within(behind).await.expect("behind");
    assert_eq!(
        text(response).await.expect("body"),
        expected_body("/behind-never")
    );
    assert_eq!(stats.connections.load(SeqCst), 2);
}

// 6. Malformed responses fail their own caller and every request written behind them (their
// answers can no longer be told apart); the pool recovers.

#[tokio::test]
async fn malformed_responses_fail_their_caller_and_the_pool_recovers() {
    const CASES: &[(&str, &str)] = &[
        ("/bad-length", "HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nabc"),
        ("/two-lengths", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
        ("/gzip-coding", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
        ("/coding-and-length", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        ("/bad-chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
        ("/switching", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: other\r\n\r\n"),
        ("/garbage", "SSH-2.0-OpenSSH_9.6\r\n\r\n"),
    ];
    let (addr, stats) = origin(
        |seen| match CASES.iter().find(|(path, _)| *path == seen.path) {
            Some((_, raw)) => vec![Act::Write(raw.as_bytes().to_vec())],
            None => vec![ok(&expected_body(&seen.path))],
        },
    )
    .await;
    let pipeline = Pipeline::new(addr, config(1, 8));
    for (path, _) in CASES {
        let good = format!("{path}/then-good");
        let mut queued = queue_in_order(&pipeline, &[path, &good]).await;
        let good_response = queued.pop().expect("good");
        // The error may surface as the result or inside the body.
        let bad = match within(queued.pop().expect("bad")).await {
            Ok(response) => text(response).await,
            Err(err) => Err(err),
        };
        assert!(
            matches!(bad, Err(PipelineError::Malformed(_))),
            "{path}: expected Malformed, got {bad:?}"
        );
        let behind = within(good_response).await;
        assert!(
            matches!(behind, Err(PipelineError::Desync(_))),
            "{good}: written behind a malformed response, expected Desync, got {:?}",
            behind.map(|r| r.status())
        );
        let after = format!("{path}/after");
        assert_eq!(
            within(fetch(&pipeline, &after))
                .await
                .unwrap_or_else(|e| panic!("{after}: {e}")),
            expected_body(&after)
        );
    }
    assert_eq!(
        stats.connections.load(SeqCst),
        CASES.len() + 1,
        "each malformed response costs its connection"
    );
}

// 7. An upstream that sends what nobody asked for: the connection ends, and nothing it sent
// reaches a caller.

/// The result of a request whose error may surface as the result or inside the body.
async fn outcome(
    fut: impl Future<Output = Result<Response<PipelinedBody>, PipelineError>>,
) -> Result<String, PipelineError> {
    match within(fut).await {
        Ok(response) => text(response).await,
        Err(err) => Err(err),
    }
}

#[tokio::test]
async fn bytes_on_an_idle_connection_end_it() {
    let release = Arc::new(Notify::new());
    let hold = Arc::clone(&release);
    let (addr, stats) = origin(move |seen| match seen.path.as_str() {
        "/first" => vec![
            ok(&expected_body("/first")),
            Act::Hold(Arc::clone(&hold)),
            Act::Write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray".to_vec()),
        ],
        path => vec![ok(&expected_body(path))],
    })
    .await;
    let pipeline = Pipeline::new(addr, config(1, 8));
    assert_eq!(
        fetch(&pipeline, "/first").await.expect("first"),
        expected_body("/first")
    );
    release.notify_one();
    let watched = pipeline.clone();
    wait_until(move || watched.connections() == 0).await;
    assert_eq!(
        within(fetch(&pipeline, "/second")).await.expect("second"),
        expected_body("/second")
    );
    assert_eq!(stats.connections.load(SeqCst), 2);
}

#[tokio::test]
async fn a_408_fails_its_request_and_those_written_behind_it() {
    let (addr, stats) = origin(|seen| match seen.path.as_str() {
        "/crossed" => vec![
            Act::Write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n".to_vec()),
            ok(&expected_body("/crossed")),
        ],
        path => vec![ok(&expected_body(path))],
    })
    .await;
    let pipeline = Pipeline::new(addr, config(1, 8));
    let mut queued = queue_in_order(&pipeline, &["/crossed", "/behind"]).await;
    let behind = queued.pop().expect("behind");
    let crossed = queued.pop().expect("crossed");
    assert!(matches!(
        outcome(crossed).await,
        Err(PipelineError::Malformed(_))
    ));
    assert!(matches!(
        outcome(behind).await,
        Err(PipelineError::Desync(_))
    ));
    assert_eq!(
        within(fetch(&pipeline, "/later")).await.expect("later"),
        expected_body("/later")
    );
    assert_eq!(stats.connections.load(SeqCst), 2);
}

#[tokio::test]
async fn bytes_left_over_after_a_response_fail_it_when_nothing_is_behind() {
    let (addr, _) = origin(|seen| match seen.path.as_str() {
        "/extra" => {
            let mut raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec();
            raw.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfake");
            vec![Act::Write(raw)]
        }
        "/head-with-body" => vec![Act::Write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody".to_vec(),
        )],
        path => vec![ok(&expected_body(path))],
    })
    .await;
    let pipeline = Pipeline::new(addr, config(1, 8));
    assert!(matches!(
        outcome(pipeline.send(get("/extra"))).await,
        Err(PipelineError::Malformed(_))
    ));
    let head = Request::head("/head-with-body")
        .header("host", "origin.test")
        .body(())
        .expect("request");
    assert!(matches!(
        outcome(pipeline.send(head)).await,
        Err(PipelineError::Malformed(_))
    ));
    assert_eq!(
        within(fetch(&pipeline, "/next")).await.expect("next"),
        expected_body("/next")
    );
}

#[tokio::test]
async fn keys_never_share_a_connection() {
    let (addr, stats) = origin(echo_origin()).await;
    let pipelines = Pipelines::new(addr, config(2, 16));
    for key in ["alice", "bob", "alice", "bob"] {
        let path = format!("/{key}");
        assert_eq!(
            within(fetch(&pipelines.get(key), &path))
                .await
                .expect("fetch"),
            expected_body(&path)
        );
    }
    assert_eq!(pipelines.keys(), 2);
    assert_eq!(
        stats.connections.load(SeqCst),
        2,
        "one connection per key, reused by that key only"
    );
}

// Edges: unreachable upstream, ineligible requests, idle close.

#[tokio::test]
async fn unreachable_upstream_fails_every_queued_caller() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    drop(listener);
    let pipeline = Pipeline::new(addr, config(2, 4));
    let (a, b, c) = tokio::join!(
        fetch(&pipeline, "/a"),
        fetch(&pipeline, "/b"),
        fetch(&pipeline, "/c")
    );
    for result in [a, b, c] {
        assert!(
            matches!(result, Err(PipelineError::Connect(_))),
            "{result:?}"
        );
    }
    assert_eq!(pipeline.connections(), 0);
}

#[tokio::test]
async fn only_bodiless_get_and_head_are_accepted() {
    let pipeline = Pipeline::new("127.0.0.1:9".to_owned(), config(1, 1));
    let post = Request::post("/x").body(()).expect("request");
    assert!(matches!(
        pipeline.send(post).await,
        Err(PipelineError::Unsupported(_))
    ));
    let with_length = Request::get("/x")
        .header("content-length", "0")
        .body(())
        .expect("request");
    assert!(matches!(
        pipeline.send(with_length).await,
        Err(PipelineError::Unsupported(_))
    ));
}

#[tokio::test]
async fn idle_connections_close() {
    let (addr, stats) = origin(echo_origin()).await;
    let pipeline = Pipeline::new(
        addr,
        PipelineConfig {
            idle_timeout: Duration::from_millis(100),
            ..config(2, 4)
        },
    );
    assert_eq!(
        fetch(&pipeline, "/one").await.expect("one"),
        expected_body("/one")
    );
    let watched = pipeline.clone();
    wait_until(move || watched.connections() == 0).await;
    assert_eq!(
        fetch(&pipeline, "/two").await.expect("two"),
        expected_body("/two")
    );
    assert_eq!(stats.connections.load(SeqCst), 2);
}

#[test]
fn usable_from_multi_thread_services() {
    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>(_: &T) {}
    assert_send_sync::<Pipeline>();
    assert_send_sync::<PipelinedBody>();
    let pipeline = Pipeline::new("127.0.0.1:9".to_owned(), config(1, 1));
    assert_send(&pipeline.send(get("/")));
}
