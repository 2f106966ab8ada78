//! The review console in a real browser (Debian's Chromium through chromedriver) against the
//! real gateway and a real OpenID Provider on loopback (panva's oidc-provider, which enforces
//! PKCE). One browser at a time: these machines have two cores.
//!
//! Needs /usr/bin/chromium, /usr/bin/chromedriver, node and `tests/oidc/node_modules`
//! (`.ci/run` installs them). Without them the tests say so and pass, unless
//! `GATEHOUSE_REQUIRE_BROWSER=1` (as in CI), where a missing tool fails them.
//! Screenshots of the main pages go to `target/console-screenshots/`.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::s3::{s3_harness_from, s3_options, LAB_KEY};
use common::Harness;
use fantoccini::{Client, ClientBuilder, Locator};
use gatehouse::testing::LoopbackProvider;
use http::{Method, StatusCode};
use serde_json::{json, Value};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const CLIENT_SECRET: &str = "console-test-secret";

/// Browser tests run one at a time.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether the browser and the provider can run here; if not, why.
fn tools_missing() -> Option<String> {
    let needed = [
        (PathBuf::from(CHROMIUM), "chromium"),
        (PathBuf::from(CHROMEDRIVER), "chromium-driver"),
        (
            repo().join("tests/oidc/node_modules/oidc-provider"),
            "npm ci --prefix tests/oidc",
        ),
    ];
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(p, _)| !p.exists())
        .map(|(_, what)| *what)
        .collect();
    let node = Command::new("node").arg("--version").output().is_ok();
    match (missing.is_empty(), node) {
        (true, true) => None,
        _ => Some(format!(
            "missing: {missing:?}{}",
            if node { "" } else { " node" }
        )),
    }
}

/// `None` when the tools are missing and not required: the test then only says so.
fn browser_tools() -> Option<()> {
    let Some(why) = tools_missing() else {
        return Some(());
    };
    if std::env::var("GATEHOUSE_REQUIRE_BROWSER").as_deref() == Ok("1") {
        panic!("browser tests are required here but cannot run: {why}");
    }
    eprintln!("skipping the browser test: {why}");
    None
}

/// A port free now for a listener this test starts (and may restart) itself. Taken below
/// the kernel's ephemeral range (32768 and up): a port from there can become the source
/// port of any outgoing connection on the machine between the check and the (re)start,
/// which failed a restart here once with "Address already in use".
fn free_port() -> u16 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as usize
        + std::process::id() as usize;
    const FIRST: usize = 20_000;
    const SPAN: usize = 12_000;
    (0..SPAN)
        .map(|i| (FIRST + (seed + i * 7919) % SPAN) as u16)
        .find(|port| TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free port below the ephemeral range")
}

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// chromedriver and the Chromium it starts, in a process group of their own: dropped, the
/// whole group is killed, so a test that fails before closing its session leaves no browser.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let group = self.0.id();
        // `kill -s KILL -- -PGID`: the explicit form (procps reads `-KILL -N` otherwise).
        if group > 1 {
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{group}")])
                .status();
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// chromedriver on a free port, ready for sessions.
fn chromedriver() -> (Driver, String) {
    use std::os::unix::process::CommandExt;
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let process = Driver(child);
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    (process, url)
}

/// The gateway with the console, the provider, and a browser.
struct Console {
    h: Harness,
    /// `https://localhost:PORT`: where the console is.
    base: String,
    browser: Client,
    _provider: LoopbackProvider,
    _driver: Driver,
    _secrets: tempfile::TempDir,
}

impl Console {
    async fn start() -> Console {
        Console::start_with(|_| {}).await
    }

    /// `prepare` sees the trail directory before the gateway starts.
    async fn start_with(prepare: impl FnOnce(&std::path::Path)) -> Console {
        let admin_port = free_port();
        let base = format!("https://localhost:{admin_port}");
        let redirect = format!("{base}/auth/callback");
        let op = LoopbackProvider::start(&repo(), CLIENT_SECRET, &redirect, Stdio::inherit())
            .expect("the OpenID Provider starts");
        let issuer = op.issuer.clone();
        let secrets = tempfile::tempdir().unwrap();
        let secret_file = secrets.path().join("client-secret");
        std::fs::write(&secret_file, CLIENT_SECRET).unwrap();
        let store = secrets.path().join("exceptions.db");
        let extra = format!(
            r#"
[exceptions]
store = "sqlite://{store}"
approver_groups = ["cdao-approvers"]

[console]
oidc_issuer = "{issuer}"
client_id = "gatehouse-console"
client_secret_file = "{secret}"
redirect_url = "{redirect}"
auditor_groups = ["sec-auditors"]
"#,
            store = store.display(),
            secret = secret_file.display(),
        );
        // The stand-in's address is known once it runs: start plain, then again with S3
        // (raw buckets, access keys) forwarding to it, over TLS, and the console.
        let h = s3_harness_from(
            |standin| {
                let mut options = s3_options(standin, &extra);
                options.tls = true;
                options.admin_listen = format!("127.0.0.1:{admin_port}");
                options.extra_issuers = vec![issuer.clone()];
                options
            },
            prepare,
        )
        .await;
        let (driver, driver_url) = chromedriver();
        let browser = browser(&driver_url).await;
        Console {
            h,
            base,
            browser,
            _provider: op,
            _driver: driver,
            _secrets: secrets,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Signs in through the provider's login form as `login`.
    async fn sign_in(&self, login: &str) {
        sign_in_at(&self.browser, &self.base, login).await;
    }

    /// The text of `css`, once it is there. An element found on a page that a navigation
    /// then replaces goes stale; it is looked up again on the new page.
    async fn text(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self
                .browser
                .wait()
                .at_most(Duration::from_secs(20))
                .for_element(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("{css}: {e}"));
            match found.text().await {
                Ok(text) => return text,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("{css} went stale ({e}); looking again");
                }
                Err(e) => panic!("{css}: {e}"),
            }
        }
    }

    /// Waits until the browser is on a page whose address contains `part` (after a click
    /// that navigates, so that what is read next is the new page).
    async fn until_url_contains(&self, part: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self
            .browser
            .current_url()
            .await
            .unwrap()
            .as_str()
            .contains(part)
        {
            assert!(
                Instant::now() < deadline,
                "never reached a page with {part:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn screenshot(&self, name: &str) {
        let dir = repo().join("target/console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let png = self.browser.screenshot().await.unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    async fn close(self) {
        let _ = self.browser.close().await;
    }
}

/// From the console's landing page through the provider's login form, as `login`.
async fn sign_in_at(c: &Client, base: &str, login: &str) {
    c.goto(&format!("{base}/")).await.unwrap();
    c.find(Locator::Css("#sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    provider_login(c, login).await;
}

/// Fills in and submits the provider's login form (any password).
async fn provider_login(c: &Client, login: &str) {
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("input[name=login]"))
        .await
        .expect("the provider's login form")
        .send_keys(login)
        .await
        .unwrap();
    c.find(Locator::Css("input[name=password]"))
        .await
        .unwrap()
        .send_keys("any password")
        .await
        .unwrap();
    c.find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn browser(driver: &str) -> Client {
    let profile = tempfile::tempdir().unwrap().keep();
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    // The gateway's development certificate is not in Chromium's store.
    caps.insert("acceptInsecureCerts".into(), json!(true));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-quic", "--no-first-run", "--window-size=1360,1000",
                format!("--user-data-dir={}", profile.display()),
            ]
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(driver)
        .await
        .expect("a Chromium session")
}

/// A download the platform blocks, made by alice on the data path.
async fn denied_download(h: &Harness) -> String {
    let reply = h
        .get(
            "/api/2.0/dbfs/read?path=/tmp/results.csv&offset=0",
            &h.alice(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    reply.headers["x-request-id"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_auditor_signs_in_finds_a_denied_download_and_opens_it() {
    if browser_tools().is_none() {
        return;
    }
    let _one = ONE_BROWSER.lock().await;
    let console = Console::start().await;
    let request_id = denied_download(&console.h).await;

    console.sign_in("auditor1").await;
    assert_eq!(console.text("#user").await, "auditor1");
    let integrity = console.text("#integrity").await;
    assert!(
        integrity.starts_with("Trail verified") && integrity.contains("records hold"),
        "every page says whether the trail holds: {integrity}"
    );
    let cookie = console
        .browser
        .get_named_cookie("__Host-gatehouse-console")
        .await
        .expect("the session cookie");
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(cookie.secure(), Some(true));

    // The trail, narrowed to denied downloads.
    let c = &console.browser;
    c.goto(&console.url("/trail")).await.unwrap();
    c.find(Locator::Css("input[name=category]"))
        .await
        .unwrap()
        .send_keys("download")
        .await
        .unwrap();
    c.find(Locator::Css("#decision option[value=deny]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.find(Locator::Css("#search-go"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    console.until_url_contains("decision=deny").await;
    let results = console.text("#results tbody").await;
    assert!(results.contains("alice@bank.example"), "{results}");
    assert!(results.contains("dbfs.read"), "{results}");
    assert!(results.contains("dbfs:/tmp/results.csv"), "{results}");
    assert!(results.contains("denied"), "{results}");
    assert!(console
        .text("#count")
        .await
        .starts_with("1 matching request"));
    console.screenshot("trail").await;

    c.find(Locator::Css("#results tbody a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(console.text("#rule").await, "downloads.blocked");
    let facts = console.text("#facts").await;
    assert!(facts.contains(&request_id), "{facts}");
    assert!(facts.contains("403"), "the completion is joined: {facts}");
    assert!(!console.text("#reason").await.is_empty());
    console.screenshot("request").await;
    // What the auditor searched for and opened is on the record too.
    in_trail(&console.h, |r| {
        r["phase"] == "console"
            && r["event"] == "view"
            && r["user"] == "auditor1"
            && r["page"]
                .as_str()
                .is_some_and(|p| p.starts_with("/trail?") && p.contains("decision=deny"))
    })
    .await;
    in_trail(&console.h, |r| {
        r["event"] == "view" && r["page"].as_str().is_some_and(|p| p.starts_with("/trail/"))
    })
    .await;

    // What is being blocked: the chart and the most denied.
    c.goto(&console.url("/denials")).await.unwrap();
    assert!(console
        .text("#denials-total")
        .await
        .starts_with("1 denied request"));
    assert!(console
        .text("#top-principals")
        .await
        .contains("alice@bank.example 1"));
    assert!(console
        .text("#top-assets")
        .await
        .contains("dbfs:/tmp/results.csv"));
    let bars = c
        .execute(
            "return Array.from(document.querySelectorAll('#denials-chart rect title')).map(t => t.textContent)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(bars, json!(["downloads.blocked: 1"]));
    console.screenshot("denials").await;

    // An auditor is not an approver: not the page, and not the action, even posted from a
    // console page of the auditor's own session with its token.
    c.goto(&console.url("/exceptions")).await.unwrap();
    assert_eq!(console.text("#title").await, "Not allowed");
    let id = pending_request(&console.h, "needs the raw feed").await;
    c.goto(&console.url("/trail")).await.unwrap();
    c.execute(
        "const f = document.createElement('form'); f.method = 'post'; f.action = arguments[0];
         for (const [k, v] of [['decision', 'approve'], ['comment', 'looks fine'],
                               ['csrf', document.querySelector('input[name=csrf]').value]]) {
           const i = document.createElement('input'); i.name = k; i.value = v; f.appendChild(i);
         }
         document.body.appendChild(f); f.submit();",
        vec![json!(format!("/exceptions/{id}/decide"))],
    )
    .await
    .unwrap();
    assert_eq!(console.text("#title").await, "Not allowed");
    assert_eq!(exception_status(&console.h, &id).await, "pending");
    // The same post as a browser of the console would send it, status and all: 403.
    let session = console
        .browser
        .get_named_cookie("__Host-gatehouse-console")
        .await
        .unwrap();
    c.goto(&console.url("/trail")).await.unwrap();
    let csrf = c
        .find(Locator::Css("input[name=csrf]"))
        .await
        .unwrap()
        .attr("value")
        .await
        .unwrap()
        .unwrap();
    let (status, page) = post_raw(
        &console,
        &format!("/exceptions/{id}/decide"),
        &format!("__Host-gatehouse-console={}", session.value()),
        &format!("decision=approve&comment=looks+fine&csrf={csrf}"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        page.contains("Your role does not include"),
        "refused for the role, not as a cross-site post: {page}"
    );
    assert_eq!(exception_status(&console.h, &id).await, "pending");
    console.close().await;
}

/// A form post to the console from its own origin, as a browser sends one: the status and
/// the page.
async fn post_raw(console: &Console, path: &str, cookie: &str, form: &str) -> (StatusCode, String) {
    use http_body_util::BodyExt;
    let h = &console.h;
    let client = gatehouse::testing::local_client(&h.fixture.ca_cert, false).unwrap();
    let resp = client
        .request(
            http::Request::post(console.url(path))
                .header("cookie", cookie)
                .header("origin", &console.base)
                .header("sec-fetch-site", "same-origin")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    form.to_owned(),
                )))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Reading the trail is itself recorded before the page is shown: while the trail takes no
/// records, an auditor's search is refused, and it works again once the trail does.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_trail_page_whose_view_cannot_be_recorded_is_not_shown() {
    if browser_tools().is_none() {
        return;
    }
    let _one = ONE_BROWSER.lock().await;
    let first_segment = |audit_dir: &std::path::Path| {
        audit_dir.join(gatehouse::audit::segment::segment_name("gw-test", 1))
    };
    // The trail's first segment lives on a full disk: every write fails with ENOSPC.
    let console = Console::start_with(|audit_dir| {
        std::fs::create_dir_all(audit_dir).unwrap();
        std::os::unix::fs::symlink("/dev/full", first_segment(audit_dir)).unwrap();
    })
    .await;
    console.sign_in("auditor1").await;
    let c = &console.browser;
    c.goto(&console.url("/trail?principal=alice%40bank.example"))
        .await
        .unwrap();
    assert_eq!(
        console.text("#title").await,
        "The trail cannot record this view"
    );
    assert!(c.find(Locator::Css("#results")).await.is_err());

    // Space comes back: the view is recorded, then shown.
    std::fs::remove_file(first_segment(&console.h.fixture.audit_dir)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        c.goto(&console.url("/trail?principal=alice%40bank.example"))
            .await
            .unwrap();
        if c.find(Locator::Css("#results")).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the trail never came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    in_trail(&console.h, |r| {
        r["event"] == "view"
            && r["page"] == "/trail?principal=alice%40bank.example"
            && r["user"] == "auditor1"
    })
    .await;
    console.close().await;
}

#[tokio::test]
async fn someone_in_no_console_group_sees_no_access() {
    if browser_tools().is_none() {
        return;
    }
    let _one = ONE_BROWSER.lock().await;
    let console = Console::start().await;
    console.sign_in("nobody1").await;
    assert_eq!(console.text("#title").await, "No access");
    console.browser.goto(&console.url("/trail")).await.unwrap();
    assert_eq!(console.text("#title").await, "No access");
    console.screenshot("no-access").await;
    console.close().await;
}

/// Someone who changes the PKCE challenge on its way to the provider cannot finish the
/// login: the gateway redeems the code with its own verifier and the provider refuses.
#[tokio::test]
async fn a_login_whose_pkce_challenge_was_tampered_with_fails() {
    if browser_tools().is_none() {
        return;
    }
    let _one = ONE_BROWSER.lock().await;
    let console = Console::start().await;
    let (status, headers) = get_raw(&console.h, "/login").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let location = headers["location"].to_str().unwrap().to_owned();
    let binding = headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("__Host-gatehouse-login="))
        .and_then(|v| v.split(';').next())
        .expect("a login binding cookie")
        .to_owned();
    let challenge = location
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("code_challenge="))
        .unwrap()
        .to_owned();
    let forged =
        gatehouse::console::oidc::pkce_challenge("a verifier the attacker chose, 43+ chars long");
    let tampered = location.replace(&challenge, &forged);

    let c = &console.browser;
    c.goto(&console.url("/")).await.unwrap();
    c.issue_cmd(AddHostCookie {
        name: "__Host-gatehouse-login",
        value: binding,
    })
    .await
    .expect("the login binding cookie is set in the browser");
    c.goto(&tampered).await.unwrap();
    provider_login(c, "auditor1").await;
    assert_eq!(console.text("#title").await, "Sign-in failed");
    let why = console.text("#message").await;
    assert!(why.contains("refused to redeem"), "{why}");
    assert!(
        c.get_named_cookie("__Host-gatehouse-console")
            .await
            .is_err(),
        "no session was created"
    );
    in_trail(&console.h, |r| {
        r["phase"] == "console"
            && r["event"] == "login_failed"
            && r["reason"]
                .as_str()
                .unwrap_or("")
                .contains("refused to redeem")
    })
    .await;
    c.goto(&console.url("/trail")).await.unwrap();
    assert!(console.text("#sign-in").await.contains("Sign in"));
    console.close().await;
}

/// WebDriver's Add Cookie without a `domain` member: a host-only cookie, as the `__Host-`
/// prefix requires (fantoccini's `add_cookie` sends `"domain": null`, which chromedriver
/// refuses).
#[derive(Debug)]
struct AddHostCookie {
    name: &'static str,
    value: String,
}

impl fantoccini::wd::WebDriverCompatibleCommand for AddHostCookie {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/cookie", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        let cookie = json!({"cookie": {
            "name": self.name, "value": self.value, "path": "/",
            "secure": true, "httpOnly": true, "sameSite": "Lax",
        }});
        (http::Method::POST, Some(cookie.to_string()))
    }
}

/// GET on the admin listener without following redirects; the status and headers.
async fn get_raw(h: &Harness, path: &str) -> (StatusCode, http::HeaderMap) {
    use http_body_util::BodyExt;
    let client = gatehouse::testing::local_client(&h.fixture.ca_cert, false).unwrap();
    let url = format!("https://localhost:{}{path}", h.running().admin_addr.port());
    let resp = client
        .request(
            http::Request::get(url)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let _ = resp.into_body().collect().await;
    (status, headers)
}

/// Waits until the trail holds a record matching `want` (sign-in records are written without
/// holding up the browser), for at most 20 s.
async fn in_trail(h: &Harness, want: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if gatehouse::testing::read_trail(&h.fixture.audit_dir)
            .iter()
            .any(&want)
        {
            return;
        }
        assert!(Instant::now() < deadline, "the trail never recorded it");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A pending raw-bucket request, made through the admin API by `requester`.
async fn pending_request(h: &Harness, reason: &str) -> String {
    let alice = h.token("alice@bank.example", "user", &["data-scientists"]);
    let (status, body) = h
        .admin(
            Method::POST,
            "/v1/exceptions",
            Some(&alice),
            Some(json!({
                "kind": "raw-bucket", "subject": "sp-aiml-lab", "bucket": "buk-raw-landing",
                "prefix": "landing/", "ops": ["read"], "reason": reason,
                "ticket": "CHG-7", "duration": "4h"
            })),
        )
        .await;
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

async fn exception_status(h: &Harness, id: &str) -> String {
    let carol = h.token("carol@bank.example", "user", &["cdao-approvers"]);
    let (_, body) = h
        .admin(
            Method::GET,
            &format!("/v1/exceptions/{id}"),
            Some(&carol),
            None,
        )
        .await;
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    body["status"].as_str().unwrap_or("?").to_owned()
}

#[tokio::test]
async fn a_reason_with_markup_shows_as_text_and_a_cross_site_post_changes_nothing() {
    if browser_tools().is_none() {
        return;
    }
    let _one = ONE_BROWSER.lock().await;
    let console = Console::start().await;
    let reason = "<script>document.title='pwned'</script><b>needs</b> the feed";
    let id = pending_request(&console.h, reason).await;
    console.sign_in("approver1").await;
    let c = &console.browser;
    c.goto(&console.url("/exceptions")).await.unwrap();
    let shown = console.text(&format!("#pending-{id} .reason")).await;
    assert_eq!(shown, reason, "the reason is shown as typed, as text");
    assert_ne!(c.title().await.unwrap(), "pwned");
    let scripts = c
        .execute(
            "return document.querySelectorAll('main script, main b').length",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        scripts,
        json!(0),
        "no markup from the reason became an element"
    );
    console.screenshot("exceptions").await;

    // A page on another origin posts an approval into the console.
    let attacker = attacker_page(&console.url(&format!("/exceptions/{id}/decide"))).await;
    c.goto(&attacker).await.unwrap();
    c.find(Locator::Css("#go"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let title = console.text("h1").await;
    assert!(
        title.contains("Refused") || title.contains("Not signed in"),
        "the forged post was answered with {title:?}"
    );
    assert_eq!(exception_status(&console.h, &id).await, "pending");
    console.close().await;
}

/// Serves, on another loopback origin, a page whose form posts to `target`.
async fn attacker_page(target: &str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let page = format!(
        "<!doctype html><form method=post action=\"{target}\"><input name=decision value=approve><input name=comment value=forged><input name=csrf value=guessed><button id=go>win a prize</button></form>"
    );
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let page = page.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    format!("http://127.0.0.1:{port}/")
}

/// The real AWS CLI (from the venv) reads one object of the raw bucket through the gateway as
/// the lab's service principal. Whether it succeeded, and what it printed on stderr.
async fn aws_read(h: &Harness, key: &str) -> (bool, String) {
    let endpoint = format!("https://localhost:{}", h.port);
    let ca = h.fixture.ca_cert.clone();
    let key = key.to_owned();
    tokio::task::spawn_blocking(move || {
        let home = tempfile::tempdir().unwrap();
        let out = home.path().join("object");
        let output = Command::new(repo().join(".venv/bin/aws"))
            .args(["--endpoint-url", &endpoint, "s3api", "get-object"])
            .args(["--bucket", "buk-raw-landing", "--key", &key])
            .arg(&out)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .env("AWS_ACCESS_KEY_ID", LAB_KEY)
            .env("AWS_SECRET_ACCESS_KEY", "not-checked-by-the-stand-in")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CA_BUNDLE", &ca)
            .env("AWS_CONFIG_FILE", home.path().join("config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                home.path().join("credentials"),
            )
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_MAX_ATTEMPTS", "1")
            .env("AWS_PAGER", "")
            .output()
            .expect("the venv's aws runs");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn an_approver_approves_sees_it_in_force_and_revokes_it() {
    if browser_tools().is_none() {
        return;
    }
    let _one = ONE_BROWSER.lock().await;
    let console = Console::start().await;
    let id = pending_request(&console.h, "reconcile the landing feed").await;
    let (read, err) = aws_read(&console.h, "landing/feed.csv").await;
    assert!(
        !read && err.contains("AccessDenied"),
        "pending: still denied: {err}"
    );
    // Raw data needs two approvers: erin approves through the API first.
    let erin = console
        .h
        .token("erin@bank.example", "user", &["cdao-approvers"]);
    let (status, _) = console
        .h
        .admin(
            Method::POST,
            &format!("/v1/exceptions/{id}/approve"),
            Some(&erin),
            Some(json!({"comment": "ok"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    console.sign_in("approver1").await;
    let c = &console.browser;
    // A link cannot make the page claim an action that did not happen.
    c.goto(&console.url(&format!("/exceptions?done=approved&id={id}")))
        .await
        .unwrap();
    assert!(c
        .find(Locator::Css(&format!("#pending-{id}")))
        .await
        .is_ok());
    assert!(c.find(Locator::Css("#flash")).await.is_err());
    c.goto(&console.url("/exceptions")).await.unwrap();
    let card = format!("#pending-{id}");
    // A decision needs a comment: the browser itself refuses an empty one (required).
    c.find(Locator::Css(&format!("{card} textarea[name=comment]")))
        .await
        .unwrap()
        .send_keys("checked with the data owner")
        .await
        .unwrap();
    c.find(Locator::Css(&format!("{card} button.approve")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // Post, redirect, get: the page the browser lands on can be reloaded without posting.
    console.until_url_contains("done=approved").await;
    let flash = console.text("#flash").await;
    assert!(flash.contains("approved"), "{flash}");
    c.refresh().await.unwrap();
    assert!(console.text("#flash").await.contains("approved"));
    let active = console.text(&format!("#active-{id}")).await;
    assert!(active.contains("left, until"), "{active}");
    assert!(active.contains("s3://buk-raw-landing/landing/"), "{active}");
    assert_eq!(exception_status(&console.h, &id).await, "approved");
    console.screenshot("exception-in-force").await;
    let (read, err) = aws_read(&console.h, "landing/feed.csv").await;
    assert!(read, "the exception lets the AWS CLI read: {err}");
    assert!(console
        .h
        .standin
        .seen()
        .iter()
        .any(|s| s.path == "/buk-raw-landing/landing/feed.csv"));

    c.find(Locator::Css(&format!(
        "#active-{id} textarea[name=comment]"
    )))
    .await
    .unwrap()
    .send_keys("feed reconciled")
    .await
    .unwrap();
    c.find(Locator::Css(&format!("#active-{id} button.reject")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(console.text("#flash").await.contains("revoked"));
    assert_eq!(exception_status(&console.h, &id).await, "revoked");
    let (read, err) = aws_read(&console.h, "landing/feed.csv").await;
    assert!(
        !read && err.contains("AccessDenied"),
        "revoked: denied again: {err}"
    );
    let history = console.text(&format!("#history-{id}")).await;
    assert!(history.contains("approver1"), "{history}");

    // Every step is in the trail under the approver's own identity, and so is the sign-in.
    let trail = gatehouse::testing::read_trail(&console.h.fixture.audit_dir);
    let approvals = trail
        .iter()
        .filter(|r| r["phase"] == "exception" && r["actor"] == "approver1")
        .count();
    assert_eq!(approvals, 2, "approve and revoke, by approver1");
    in_trail(&console.h, |r| {
        r["phase"] == "console"
            && r["event"] == "login"
            && r["user"] == "approver1"
            && r["groups"] == json!(["cdao-approvers"])
    })
    .await;
    console.close().await;
}

/// The README's path: `gatehouse demo --console`, then a person signs in and sees the demo's
/// blocked requests.
#[tokio::test]
async fn the_demo_console_shows_the_demos_blocked_requests() {
    if browser_tools().is_none() {
        return;
    }
    let _one = ONE_BROWSER.lock().await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args([
            "demo",
            "--console",
            "--console-port",
            &port.to_string(),
            "--dir",
        ])
        .arg(dir.path().join("demo"))
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the demo starts");
    let stdout = demo.stdout.take().unwrap();
    let demo = Process(demo);
    // Read the demo's output to its end (it writes on while it runs; a closed pipe would
    // stop it), and hear when the console is up.
    let (up, printed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let mut told = false;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap_or_default();
            text.push_str(&line);
            text.push('\n');
            if !told && line.starts_with("Review console:") {
                told = true;
                let _ = up.send((true, text.clone()));
            }
        }
        if !told {
            let _ = up.send((false, text));
        }
    });
    let ready = tokio::task::spawn_blocking(move || printed.recv().unwrap_or_default())
        .await
        .unwrap();
    assert!(ready.0, "the demo printed no console address:\n{}", ready.1);
    assert!(ready.1.contains("All requests were handled as expected."));

    let (driver, driver_url) = chromedriver();
    let c = browser(&driver_url).await;
    sign_in_at(&c, &format!("https://localhost:{port}"), "auditor1").await;
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#results"))
        .await
        .unwrap();
    c.goto(&format!("https://localhost:{port}/trail?decision=deny"))
        .await
        .unwrap();
    let rows = c
        .find(Locator::Css("#results tbody"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(rows.contains("downloads.blocked"), "{rows}");
    assert!(rows.contains("denied"), "{rows}");
    let _ = c.close().await;
    drop(driver);
    drop(demo);
}
