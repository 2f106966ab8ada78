//! The workflow at the edges: the pure steps of `model`, recorded in the audit trail,
//! persisted in the store, and put in force by swapping the live index. The admin API and the
//! console call this. A step's store change commits only once its trail record is durable:
//! no exception is ever in force (or closed) without the trail saying who did it.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::index::LiveIndex;
use super::model::{self, Actor, Exception, Kind, Limits, NewRequest, Refusal, Status};
use super::store::{Confirmation, Store, StoreError};
use super::{now_ms, Live};
use crate::audit::AuditSink;
use crate::config::{Config, ExceptionsConfig};

/// Why an admin call failed, with the HTTP status the API answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> ApiError {
        ApiError {
            status: r.status,
            code: r.code,
            message: r.message,
        }
    }
}

fn unavailable(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "exception store failed");
    ApiError {
        status: 503,
        code: "TEMPORARILY_UNAVAILABLE",
        message: "the exception store cannot be reached; nothing was changed".into(),
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError {
        status: 404,
        code: "NOT_FOUND",
        message: format!("no exception {id}"),
    }
}

/// What the configuration says the workflow may grant.
pub fn limits(config: &Config, exceptions: &ExceptionsConfig) -> Limits {
    Limits {
        approver_groups: exceptions.approver_groups.clone(),
        max_days: exceptions.max_days,
        required: exceptions.required,
        workspaces: config.workspaces.iter().map(|w| w.name.clone()).collect(),
        people_denied: config
            .workspaces
            .iter()
            .filter(|w| w.humans == crate::config::HumansMode::Deny)
            .map(|w| w.name.clone())
            .collect(),
        raw_buckets: config
            .buckets
            .iter()
            .filter(|b| b.class == crate::config::BucketClass::Raw)
            .map(|b| b.name.clone())
            .collect(),
        download_actions: crate::classify::databricks::CATALOG
            .iter()
            .filter(|a| {
                matches!(
                    a.category,
                    crate::classify::Category::Download | crate::classify::Category::Credentials
                )
            })
            .map(|a| a.name.to_owned())
            .collect(),
    }
}

pub struct Service {
    store: Store,
    limits: ArcSwap<Limits>,
    live: Live,
    audit: Arc<AuditSink>,
    gateway_id: String,
}

/// Attempts at a workflow step when another gateway changes the same exception meanwhile.
const MAX_RACES: usize = 5;

impl Service {
    /// Opens the store (running its migrations), loads what is in force and keeps the live
    /// index current: at once after a change here, on a notification of a change elsewhere,
    /// and by a full re-read every `refresh` as the safety net.
    pub async fn start(
        config: &Config,
        exceptions: &ExceptionsConfig,
        live: Live,
        audit: Arc<AuditSink>,
    ) -> Result<Arc<Service>, String> {
        let store = Store::connect_with(&exceptions.store, exceptions.refresh)
            .await
            .map_err(|e| format!("exceptions.store: {e}"))?;
        let service = Arc::new(Service {
            store,
            limits: ArcSwap::from_pointee(limits(config, exceptions)),
            live,
            audit,
            gateway_id: config.server.gateway_id.clone(),
        });
        service
            .refresh()
            .await
            .map_err(|e| format!("exceptions.store: {e}"))?;
        tokio::spawn(Service::keep_current(
            Arc::downgrade(&service),
            service.store.changes(),
            exceptions.refresh,
        ));
        Ok(service)
    }

    /// A reload's new limits (approver groups, max_days, workspaces, buckets).
    /// Who may approve, as configured now.
    pub fn approver_groups(&self) -> Vec<String> {
        self.limits.load().approver_groups.clone()
    }

    pub fn set_limits(&self, limits: Limits) {
        self.limits.store(Arc::new(limits));
    }

    /// Rebuilds the live index from the store.
    pub async fn refresh(&self) -> Result<usize, StoreError> {
        let now = now_ms();
        let in_force = self.store.in_force(now).await?;
        let index = LiveIndex::build(in_force, now);
        let n = index.len();
        self.live.store(Arc::new(index));
        Ok(n)
    }

    /// Holds the service weakly: when the gateway drops it (at stop), this ends too, and with
    /// it the last handle on the audit trail it writes to.
    async fn keep_current(
        service: std::sync::Weak<Service>,
        mut changes: tokio::sync::watch::Receiver<u64>,
        every: Duration,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate; start() has just refreshed
        loop {
            let listening = tokio::select! {
                changed = changes.changed() => changed.is_ok(),
                _ = tick.tick() => true,
            };
            let Some(service) = service.upgrade() else {
                return;
            };
            if !listening {
                // The store's notifier is gone: only the periodic re-read is left.
                changes = service.store.changes();
            }
            if let Err(e) = service.refresh().await {
                tracing::error!(error = %e, "cannot refresh exceptions from the store; the last index stays in force until its exceptions expire");
            }
            if !listening {
                drop(service);
                tick.tick().await; // never spin on a closed channel
            }
        }
    }

    pub async fn request(&self, actor: &Actor, new: NewRequest) -> Result<Exception, ApiError> {
        let limits = self.limits.load();
        let ex = model::request(new, actor, Store::new_id(), now_ms(), &limits)?;
        let recorded = self.recorded("request", actor, &ex);
        match self.store.insert_confirmed(&ex, recorded).await {
            Ok(()) => {
                self.changed().await;
                Ok(ex)
            }
            Err(e) => Err(self.not_changed("request", actor, &ex, e)),
        }
    }

    pub async fn approve(
        &self,
        id: &str,
        actor: &Actor,
        comment: Option<String>,
    ) -> Result<Exception, ApiError> {
        self.step("approve", id, actor, |ex, limits| {
            model::approve(ex, actor, comment.clone(), now_ms(), limits)
        })
        .await
    }

    pub async fn reject(
        &self,
        id: &str,
        actor: &Actor,
        comment: Option<String>,
    ) -> Result<Exception, ApiError> {
        self.step("reject", id, actor, |ex, limits| {
            model::reject(ex, actor, comment.clone(), now_ms(), limits)
        })
        .await
    }

    pub async fn revoke(
        &self,
        id: &str,
        actor: &Actor,
        comment: Option<String>,
    ) -> Result<Exception, ApiError> {
        self.step("revoke", id, actor, |ex, limits| {
            model::revoke(ex, actor, comment.clone(), now_ms(), limits)
        })
        .await
    }

    pub async fn get(&self, id: &str) -> Result<Exception, ApiError> {
        match self.store.get(id).await.map_err(unavailable)? {
            Some((ex, _)) => Ok(ex),
            None => Err(not_found(id)),
        }
    }

    pub async fn list(
        &self,
        status: Option<Status>,
        subject: Option<&str>,
        kind: Option<Kind>,
    ) -> Result<Vec<Exception>, ApiError> {
        self.store
            .list(status, subject, kind, now_ms(), 1000)
            .await
            .map_err(unavailable)
    }

    /// Reads, applies a pure step, writes if nobody changed it meanwhile; on a race, again.
    async fn step(
        &self,
        event: &str,
        id: &str,
        actor: &Actor,
        apply: impl Fn(Exception, &Limits) -> Result<Exception, Refusal>,
    ) -> Result<Exception, ApiError> {
        for _ in 0..MAX_RACES {
            let (ex, version) = self
                .store
                .get(id)
                .await
                .map_err(unavailable)?
                .ok_or_else(|| not_found(id))?;
            let next = apply(ex, &self.limits.load())?;
            let recorded = self.recorded(event, actor, &next);
            match self.store.update_confirmed(&next, version, recorded).await {
                Ok(_) => {
                    self.changed().await;
                    return Ok(next);
                }
                // Nothing was recorded: the record is written only for the winning version.
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(self.not_changed(event, actor, &next, e)),
            }
        }
        Err(ApiError {
            status: 409,
            code: "CONFLICT",
            message: format!("exception {id} kept changing; try again"),
        })
    }

    /// What a step's store change waits for before it commits: its trail record, durable. A
    /// step takes effect only once the trail says who did it; if the trail cannot take the
    /// record, the change is rolled back and the caller told (503).
    fn recorded<'a>(&'a self, event: &str, actor: &Actor, ex: &Exception) -> Confirmation<'a> {
        let record = record(&self.gateway_id, event, actor, ex);
        Box::pin(async move {
            self.audit
                .record_durably(record)
                .await
                .map_err(|e| e.to_string())
        })
    }

    /// After a committed change: this gateway's index follows at once (the others on the
    /// store's notification).
    async fn changed(&self) {
        if let Err(e) = self.refresh().await {
            tracing::error!(error = %e, "cannot refresh exceptions after a change");
        }
    }

    /// A step whose store change did not commit: why, as the API answers it.
    fn not_changed(&self, event: &str, actor: &Actor, ex: &Exception, e: StoreError) -> ApiError {
        match e {
            StoreError::Unconfirmed(why) => {
                tracing::error!(error = %why, event, exception = %ex.id, "the audit trail cannot take an exception change; it was not made");
                ApiError {
                    status: 503,
                    code: "TEMPORARILY_UNAVAILABLE",
                    message: "the audit trail cannot record this change, so it was not made; nothing was changed".into(),
                }
            }
            StoreError::Uncommitted(why) => {
                // The trail already holds the step's record: it gets a second one saying the
                // step did not take effect (kept and written later if the trail fails now).
                tracing::error!(error = %why, event, exception = %ex.id, "an exception change was recorded but not committed");
                let _ = self
                    .audit
                    .record_event(not_committed(&self.gateway_id, event, actor, ex));
                unavailable(StoreError::Db(why))
            }
            e => unavailable(e),
        }
    }
}

/// The `exception` record of a step whose record was written but whose store change did
/// not commit: the store still holds the exception as it was.
fn not_committed(gateway: &str, event: &str, actor: &Actor, ex: &Exception) -> Vec<u8> {
    serde_json::json!({
        "ts": crate::audit::timestamp(std::time::SystemTime::now()),
        "gateway": gateway,
        "phase": "exception",
        "event": "not-committed",
        "step": event,
        "actor": actor.id,
        "exception": { "id": ex.id },
    })
    .to_string()
    .into_bytes()
}

/// The `exception` record: a workflow step, in the same chain as the requests it governs.
fn record(gateway: &str, event: &str, actor: &Actor, ex: &Exception) -> Vec<u8> {
    let now = now_ms();
    serde_json::json!({
        "ts": crate::audit::timestamp(std::time::SystemTime::now()),
        "gateway": gateway,
        "phase": "exception",
        "event": event,
        "actor": actor.id,
        "exception": {
            "id": ex.id,
            "kind": ex.kind().as_str(),
            "subject": ex.subject,
            "scope": ex.scope,
            "ticket": ex.ticket,
            "reason": ex.reason,
            "status": ex.status_at(now).as_str(),
            "approvals": ex.approvals.len(),
            "required_approvals": ex.required_approvals,
            "expires_at": ex.expires_at.map(millis_rfc3339),
        },
    })
    .to_string()
    .into_bytes()
}

pub fn millis_rfc3339(ms: model::Millis) -> String {
    crate::audit::timestamp(
        std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
    )
}
