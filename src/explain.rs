//! `gatehouse explain`: what the gateway would do with a described request — route,
//! classification, principal, decision — without sending anything anywhere.

use std::fmt::Write as _;

use http::{HeaderMap, HeaderValue, Method, Uri};
use serde_json::json;

use crate::classify::body::{inspect, BodyVerdict};
use crate::classify::BodyCheck;
use crate::config::Config;
use crate::identity::{KeyStore, Principal, Verifier};
use crate::policy::{decide, Decision, NoExceptions, Rules};
use crate::proxy::{route_and_classify, Routed};
use crate::route::RouteTable;

/// A request described on the command line.
pub struct Described<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub token: Option<&'a str>,
    pub body: Option<&'a [u8]>,
}

/// Explains a request; `Err` only for a description that is not a request at all.
pub async fn explain(
    config: &Config,
    req: &Described<'_>,
    as_json: bool,
) -> Result<String, String> {
    let method: Method = req
        .method
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| format!("{:?} is not an HTTP method", req.method))?;
    let uri: Uri = req
        .url
        .parse()
        .map_err(|_| format!("{:?} is not a URL", req.url))?;
    let authority = uri
        .authority()
        .ok_or("the URL must name a host, e.g. https://analytics.dbx.example/api/2.0/dbfs/read?path=/x")?
        .to_string();
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::HOST,
        HeaderValue::from_str(&authority).map_err(|e| e.to_string())?,
    );

    let routes = RouteTable::from_config(config);
    let keys = KeyStore::from_source(&config.identity.jwks)?;
    if !keys.is_ready() {
        keys.refresh()
            .await
            .map_err(|e| format!("cannot load the identity provider's keys: {e}"))?;
    }
    let verifier = Verifier::new(config.identity.clone(), keys);
    let rules = Rules::from_config(config);

    let mut out = Report::new(as_json);
    out.line("request", format!("{method} {}", req.url));
    let Routed {
        workspace,
        normalized,
        classification,
        ..
    } = match route_and_classify(
        &routes,
        None,
        &method,
        http::Version::HTTP_11,
        &uri,
        &headers,
    ) {
        Ok(r) => r,
        Err(refused) => {
            out.line(
                "route",
                refused.workspace.map_or("-".into(), |w| w.name.clone()),
            );
            out.decision(
                &Decision::deny(refused.rule, refused.reason),
                Some(refused.refusal.status().as_u16()),
            );
            return Ok(out.finish());
        }
    };
    out.line(
        "route",
        format!(
            "workspace {} (people: {})",
            workspace.name,
            workspace.policy.humans.as_str()
        ),
    );
    out.line("path", normalized.encoded());
    let mut action = classification.action;
    out.line(
        "action",
        format!(
            "{} ({}{})",
            action.name,
            action.category,
            if action.known {
                ""
            } else {
                ", not in the catalog"
            }
        ),
    );
    out.line(
        "asset",
        classification.asset.as_ref().map_or("-".to_owned(), |a| {
            format!("{} {}", a.kind.as_str(), a.path)
        }),
    );

    let principal: Principal = if action.category == crate::classify::Category::Auth {
        Principal::anonymous()
    } else {
        let header = req.token.map(|t| format!("Bearer {t}"));
        match verifier.verify_header(header.as_deref().map(str::as_bytes)) {
            Ok(p) => p,
            Err(e) => {
                out.line("principal", format!("not identified: {e}"));
                out.decision(&Decision::deny(e.rule(), e.to_string()), Some(401));
                return Ok(out.finish());
            }
        }
    };
    out.line(
        "principal",
        format!(
            "{} ({}; groups: {}; {})",
            principal.id,
            principal.kind.as_str(),
            if principal.groups.is_empty() {
                "-".to_owned()
            } else {
                principal.groups.join(", ")
            },
            principal.auth.as_str()
        ),
    );

    if classification.body_check != BodyCheck::None {
        match req.body {
            None => out.line(
                "body",
                "this request's body is inspected; pass --body FILE to include it".to_owned(),
            ),
            Some(body) => match inspect(classification.body_check, body) {
                BodyVerdict::Clean => out.line("body", "inspected: nothing blocked".to_owned()),
                BodyVerdict::Denied { action: a, why } => {
                    out.line("body", format!("inspected: {why}"));
                    action = a;
                }
                BodyVerdict::Malformed(why) => {
                    out.line("body", format!("malformed: {why}"));
                    out.decision(&Decision::deny("body.malformed", why), Some(400));
                    return Ok(out.finish());
                }
            },
        }
    }
    let decision = decide(
        &rules,
        &principal,
        &workspace.policy,
        &action,
        classification.asset.as_ref(),
        &NoExceptions,
    );
    let status = (!decision.effect.forwards()).then_some(403);
    out.decision(&decision, status);
    Ok(out.finish())
}

/// Collects lines as aligned text or as one JSON object.
struct Report {
    json: bool,
    fields: Vec<(&'static str, String)>,
    decision: Option<serde_json::Value>,
}

impl Report {
    fn new(json: bool) -> Report {
        Report {
            json,
            fields: Vec::new(),
            decision: None,
        }
    }

    fn line(&mut self, key: &'static str, value: String) {
        self.fields.push((key, value));
    }

    fn decision(&mut self, d: &Decision, status: Option<u16>) {
        self.line(
            "decision",
            format!(
                "{} (rule {}){}{}",
                d.effect.as_str().to_ascii_uppercase(),
                d.rule,
                if d.would_deny.is_some() {
                    ", report-only: would deny"
                } else {
                    ""
                },
                status.map_or(String::new(), |s| format!(", answered with HTTP {s}"))
            ),
        );
        self.line("reason", d.reason.to_string());
        self.decision = Some(json!({
            "effect": d.effect.as_str(), "rule": d.rule, "reason": d.reason, "status": status,
            "would_deny": d.would_deny,
        }));
    }

    fn finish(self) -> String {
        if self.json {
            let mut map = serde_json::Map::new();
            for (k, v) in &self.fields {
                if *k != "decision" && *k != "reason" {
                    map.insert((*k).to_owned(), json!(v));
                }
            }
            map.insert(
                "decision".to_owned(),
                self.decision.unwrap_or(serde_json::Value::Null),
            );
            return serde_json::Value::Object(map).to_string();
        }
        let mut s = String::new();
        for (k, v) in &self.fields {
            let _ = writeln!(s, "{k:<10} {v}");
        }
        s
    }
}
