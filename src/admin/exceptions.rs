//! `/v1/exceptions`: the CDAO workflow over HTTP. JSON in and out; every caller identified
//! with the data path's JWT verification; errors as `{"error_code", "message"}` with the
//! status the workflow chose (403 self-approval, 409 closed, 422 too broad, …).

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};

use super::api_error as err;
use crate::exceptions::model::{
    Actor, Exception, Kind, Millis, NewRequest, Op, Scope, Status, Subject,
};
use crate::exceptions::now_ms;
use crate::exceptions::service::{millis_rfc3339, ApiError, Service};
use crate::proxy::Gateway;

const MAX_BODY: usize = 64 * 1024;

pub(super) async fn answer(
    gateway: &Gateway,
    service: Option<&Service>,
    req: Request<Incoming>,
) -> Result<(StatusCode, Value), ApiError> {
    let service = service.ok_or_else(|| {
        err(
            404,
            "NOT_CONFIGURED",
            "exceptions are not configured on this gateway ([exceptions] store)",
        )
    })?;
    let principal = super::caller(gateway, &req)?;
    let actor = Actor {
        id: principal.id.clone(),
        groups: principal.groups.clone(),
    };
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let rest = path.strip_prefix("/v1/exceptions").unwrap_or("");
    let decoded: Vec<String> = rest
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let now = now_ms();
    match (&method, segments.as_slice()) {
        (&Method::POST, []) => {
            let body: RequestBody = read_json(req).await?;
            let new = body.into_request()?;
            let ex = service.request(&actor, new).await?;
            Ok((StatusCode::CREATED, view(&ex, now)))
        }
        (&Method::GET, []) => {
            let f = list_filters(&query)?;
            let all = service.list(f.status, f.subject.as_deref(), f.kind).await?;
            let items: Vec<Value> = all.iter().map(|e| view(e, now)).collect();
            Ok((StatusCode::OK, json!({ "exceptions": items })))
        }
        (&Method::GET, [id]) => Ok((StatusCode::OK, view(&service.get(id).await?, now))),
        (&Method::POST, [id, verb @ ("approve" | "reject" | "revoke")]) => {
            let comment = read_json::<StepBody>(req).await?.comment;
            let ex = match *verb {
                "approve" => service.approve(id, &actor, comment).await?,
                "reject" => service.reject(id, &actor, comment).await?,
                _ => service.revoke(id, &actor, comment).await?,
            };
            Ok((StatusCode::OK, view(&ex, now_ms())))
        }
        (_, [] | [_] | [_, "approve" | "reject" | "revoke"]) => Err(err(
            405,
            "METHOD_NOT_ALLOWED",
            format!("{method} is not allowed on {path}"),
        )),
        _ => Err(err(404, "NOT_FOUND", format!("no such API: {path}"))),
    }
}

/// The body as JSON; an empty body reads as `{}`.
async fn read_json<T: for<'de> Deserialize<'de>>(req: Request<Incoming>) -> Result<T, ApiError> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| {
            err(
                413,
                "REQUEST_TOO_LARGE",
                format!("bodies are limited to {MAX_BODY} bytes"),
            )
        })?
        .to_bytes();
    let bytes = if bytes.is_empty() {
        Bytes::from_static(b"{}")
    } else {
        bytes
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        err(
            400,
            "MALFORMED_REQUEST",
            format!("the body is not the expected JSON: {e}"),
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepBody {
    comment: Option<String>,
}

/// `POST /v1/exceptions`: the CLI's flags, as JSON.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestBody {
    kind: String,
    subject: String,
    reason: String,
    ticket: String,
    /// `30s`, `15m`, `4h`, `7d`.
    duration: String,
    bucket: Option<String>,
    prefix: Option<String>,
    ops: Option<Vec<Op>>,
    workspace: Option<String>,
    actions: Option<Vec<String>>,
    categories: Option<Vec<String>>,
}

impl RequestBody {
    fn into_request(self) -> Result<NewRequest, ApiError> {
        let invalid = |m: String| err(422, "INVALID_REQUEST", m);
        let kind = Kind::parse(&self.kind).ok_or_else(|| {
            invalid(format!(
                "kind {:?} is not one of raw-bucket, download, workspace-access",
                self.kind
            ))
        })?;
        let need = |field: Option<String>, name: &str| {
            field.ok_or_else(|| invalid(format!("a {} exception needs {name}", kind.as_str())))
        };
        let scope = match kind {
            Kind::RawBucket => Scope::RawBucket {
                bucket: need(self.bucket, "bucket")?,
                prefix: need(self.prefix, "prefix")?,
                ops: self.ops.unwrap_or_default(),
            },
            Kind::Download => Scope::Download {
                workspace: need(self.workspace, "workspace")?,
                actions: self.actions.unwrap_or_default(),
                prefix: need(self.prefix, "prefix")?,
            },
            Kind::WorkspaceAccess => Scope::WorkspaceAccess {
                workspace: need(self.workspace, "workspace")?,
                categories: self.categories.unwrap_or_default(),
            },
        };
        let subject = Subject::parse(&self.subject)
            .ok_or_else(|| invalid("a subject (principal id or group:NAME) is required".into()))?;
        let duration = crate::config::parse_duration(&self.duration).ok_or_else(|| {
            invalid(format!(
                "duration {:?} is not like 30m, 4h or 7d",
                self.duration
            ))
        })?;
        Ok(NewRequest {
            subject,
            scope,
            reason: self.reason,
            ticket: self.ticket,
            duration_ms: Millis::try_from(duration.as_millis()).unwrap_or(Millis::MAX),
        })
    }
}

/// `GET /v1/exceptions?status=&subject=&kind=`.
#[derive(Default)]
struct ListFilter {
    status: Option<Status>,
    subject: Option<String>,
    kind: Option<Kind>,
}

fn list_filters(query: &str) -> Result<ListFilter, ApiError> {
    let mut f = ListFilter::default();
    for (name, value) in form_urlencoded(query) {
        match name.as_str() {
            "status" => {
                f.status = Some(Status::parse(&value).ok_or_else(|| {
                    err(400, "MALFORMED_REQUEST", format!("status {value:?} is not one of pending, approved, rejected, revoked, expired"))
                })?)
            }
            "subject" => f.subject = Some(value),
            "kind" => {
                f.kind = Some(Kind::parse(&value).ok_or_else(|| {
                    err(400, "MALFORMED_REQUEST", format!("kind {value:?} is not one of raw-bucket, download, workspace-access"))
                })?)
            }
            _ => return Err(err(400, "MALFORMED_REQUEST", format!("unknown filter {name:?}"))),
        }
    }
    Ok(f)
}

fn form_urlencoded(query: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((n, v)) => (decode(n), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// An exception as the API shows it: the effective status, times in RFC 3339.
pub fn view(ex: &Exception, now: Millis) -> Value {
    let time = |t: Option<Millis>| t.map(millis_rfc3339);
    json!({
        "id": ex.id,
        "kind": ex.kind().as_str(),
        "status": ex.status_at(now).as_str(),
        "subject": ex.subject,
        "scope": ex.scope,
        "reason": ex.reason,
        "ticket": ex.ticket,
        "requester": ex.requester,
        "requested_at": millis_rfc3339(ex.requested_at),
        "duration_secs": ex.duration_ms / 1000,
        "required_approvals": ex.required_approvals,
        "approvals": ex.approvals.iter().map(|a| json!({
            "approver": a.approver, "at": millis_rfc3339(a.at), "comment": a.comment,
        })).collect::<Vec<_>>(),
        "approved_at": time(ex.approved_at),
        "expires_at": time(ex.expires_at),
        "closed": ex.closed.as_ref().map(|c| json!({
            "by": c.by, "at": millis_rfc3339(c.at), "comment": c.comment,
        })),
    })
}
