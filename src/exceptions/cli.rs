//! `gatehouse exceptions …`: the approvers' command line, a thin client of the admin API.
//! It never prints the token; an API refusal becomes a non-zero exit with the API's message.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

type HttpClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

pub struct AdminClient {
    base: String,
    token: String,
    client: HttpClient,
}

impl AdminClient {
    pub fn new(admin: &str, token: &str, cacert: Option<&Path>) -> Result<AdminClient, String> {
        let connector = crate::tls::https_connector(cacert, Duration::from_secs(10), false)?;
        if token.trim().is_empty() {
            return Err("no token: give --token or set GATEHOUSE_TOKEN".into());
        }
        Ok(AdminClient {
            base: admin.trim_end_matches('/').to_owned(),
            token: token.trim().to_owned(),
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// One call; the JSON answer, or the API's error as `STATUS CODE: message`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let req = Request::builder()
            .method(method)
            .uri(&url)
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(
                body.map(Value::to_string).unwrap_or_default(),
            )))
            .map_err(|e| format!("{url}: {e}"))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("cannot reach the admin API at {}: {e}", self.base))?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), 16 * 1024 * 1024)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            let json: Value = serde_json::from_slice(&bytes).map_err(|_| {
                format!("the admin API answered {status} with something that is not JSON")
            })?;
            if status.is_success() {
                Ok(json)
            } else {
                Err(format!(
                    "{} {}: {}",
                    status.as_u16(),
                    json["error_code"].as_str().unwrap_or("ERROR"),
                    json["message"].as_str().unwrap_or("(no message)")
                ))
            }
        };
        tokio::time::timeout(Duration::from_secs(60), exchange)
            .await
            .map_err(|_| format!("the admin API at {} did not answer within 60 s", self.base))?
    }
}

/// `a,b , c` → `["a", "b", "c"]`.
pub fn list_arg(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// One line about an exception's scope.
pub fn scope_summary(ex: &Value) -> String {
    let s = &ex["scope"];
    let list = |v: &Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    let text = |k: &str| s[k].as_str().unwrap_or("").to_owned();
    match ex["kind"].as_str() {
        Some("raw-bucket") => format!(
            "s3://{}/{} [{}]",
            text("bucket"),
            text("prefix"),
            list(&s["ops"])
        ),
        Some("download") => format!(
            "{} {} [{}]",
            text("workspace"),
            text("prefix"),
            list(&s["actions"])
        ),
        Some("workspace-access") => format!("{} [{}]", text("workspace"), list(&s["categories"])),
        _ => s.to_string(),
    }
}

/// The exceptions as an aligned table.
pub fn table(items: &[Value]) -> String {
    let mut rows = vec![[
        "id",
        "kind",
        "status",
        "subject",
        "scope",
        "approvals",
        "expires_at",
        "ticket",
    ]
    .map(str::to_owned)];
    for ex in items {
        let t = |k: &str| ex[k].as_str().unwrap_or("-").to_owned();
        rows.push([
            t("id"),
            t("kind"),
            t("status"),
            t("subject"),
            scope_summary(ex),
            format!(
                "{}/{}",
                ex["approvals"].as_array().map_or(0, Vec::len),
                ex["required_approvals"]
            ),
            t("expires_at"),
            t("ticket"),
        ]);
    }
    let rows: Vec<Vec<String>> = rows.into_iter().map(Vec::from).collect();
    crate::report::aligned_table(&rows)
}

/// A human-readable account of one exception, its history included.
pub fn describe(ex: &Value) -> String {
    let t = |k: &str| ex[k].as_str().unwrap_or("-").to_owned();
    let mut out = format!(
        "{}  {}  {}\n  subject:   {}\n  scope:     {}\n  reason:    {}\n  ticket:    {}\n  requested: {} by {}\n",
        t("id"),
        t("kind"),
        t("status"),
        t("subject"),
        scope_summary(ex),
        t("reason"),
        t("ticket"),
        t("requested_at"),
        t("requester"),
    );
    for a in ex["approvals"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  approved:  {} by {}{}\n",
            a["at"].as_str().unwrap_or("-"),
            a["approver"].as_str().unwrap_or("-"),
            a["comment"]
                .as_str()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default()
        ));
    }
    out.push_str(&format!(
        "  approvals: {} of {} required\n",
        ex["approvals"].as_array().map_or(0, Vec::len),
        ex["required_approvals"]
    ));
    if let Some(end) = ex["expires_at"].as_str() {
        out.push_str(&format!("  in force:  {} until {end}\n", t("approved_at")));
    }
    if let Some(c) = ex["closed"].as_object() {
        out.push_str(&format!(
            "  closed:    {} by {}{}\n",
            c["at"].as_str().unwrap_or("-"),
            c["by"].as_str().unwrap_or("-"),
            c["comment"]
                .as_str()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default()
        ));
    }
    out
}
