//! Where exceptions are kept: embedded SQLite by default (`sqlite://var/gatehouse.db`), or
//! PostgreSQL shared by several gateways (`postgres://…`). Both go through `sqlx::AnyPool` with
//! the same portable SQL (`$N` placeholders, TEXT and BIGINT only), so there is one code path;
//! PostgreSQL adds LISTEN/NOTIFY so that a change made through one gateway is in force on all of
//! them within a second, and a periodic full refresh in case a notification is ever lost.
//!
//! Each exception is kept whole as JSON in `body`; `kind`, `subject`, `status`, `requested_at`
//! and `expires_at` are copies for filtering, rewritten with it. Nothing is ever deleted:
//! closing an exception is an update, so expired and revoked ones stay in the history.

use std::borrow::Cow;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyArguments, AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::query::Query;
use sqlx::{Any, AnyPool, Row};
use tokio::sync::watch;

use super::model::{Exception, Kind, Millis, Status};

/// How often every gateway re-reads everything even without a notification.
pub const FULL_REFRESH: Duration = Duration::from_secs(30);
const CHANNEL: &str = "gatehouse_exceptions";
const NOTIFY: &str = "NOTIFY gatehouse_exceptions"; // CHANNEL's
/// The listening connections' `application_name`, for whoever reads `pg_stat_activity`.
const LISTENER: &str = "gatehouse exceptions listener";

/// The schema's history. Never edit a shipped entry (sqlx keeps each one's checksum and refuses
/// to start on a mismatch): append a new version instead. Only SQL both backends accept.
const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "exceptions",
    "CREATE TABLE exceptions (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        status TEXT NOT NULL,
        requested_at BIGINT NOT NULL,
        expires_at BIGINT,
        version BIGINT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX exceptions_status_expires ON exceptions (status, expires_at);
    CREATE INDEX exceptions_subject ON exceptions (subject, requested_at);
    CREATE INDEX exceptions_requested ON exceptions (requested_at);",
)];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the exception changed since it was read: read it again and re-apply")]
    Conflict,
    #[error("no such exception")]
    NotFound,
    #[error("exception store: {0}")]
    Db(String),
    /// What had to hold before the change committed did not (its audit record was not
    /// durable): the change was rolled back.
    #[error("the change was not confirmed, and was rolled back: {0}")]
    Unconfirmed(String),
    /// The change was confirmed, but the database did not commit it.
    #[error("the change was confirmed but not committed: {0}")]
    Uncommitted(String),
}

/// What must hold before a change commits, awaited inside its transaction once the row is
/// written (e.g. its audit record is durable). An error rolls the change back.
pub type Confirmation<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// A change that needs no confirmation.
fn confirmed<'a>() -> Confirmation<'a> {
    Box::pin(std::future::ready(Ok(())))
}

pub struct Store {
    pool: AnyPool,
    postgres: bool,
    /// The URL without user, password or query: all that errors and logs ever show of it.
    shown: String,
    secrets: Vec<String>,
    changes: Arc<watch::Sender<u64>>,
    follower: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Store {
    // By hand: `secrets` holds the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("url", &self.shown)
            .finish_non_exhaustive()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl Store {
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        Store::connect_with(url, FULL_REFRESH).await
    }

    /// [`Store::connect`] with another full-refresh period (tests, or a busy deployment).
    pub async fn connect_with(url: &str, full_refresh: Duration) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (shown, secrets) = (redact(url), secrets_of(url));
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Db(scrub(format!("{what} {shown}: {e}"), &secrets))
        };
        let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
        let (url, memory) = match postgres {
            true => (url.to_owned(), false),
            false => sqlite_url(url).map_err(|e| fail("opening", &e))?,
        };
        let mut options = AnyPoolOptions::new();
        if memory {
            // Every connection to `:memory:` would be a database of its own.
            options = options
                .max_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let pool = options
            .connect(&url)
            .await
            .map_err(|e| fail("connecting to", &e))?;
        if !postgres && !memory {
            // Readers never wait for the writer. The mode is kept in the file; the busy timeout
            // (5 s, which writers wait for each other) is sqlx's default on every connection.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await
                .map_err(|e| fail("setting WAL on", &e))?;
        }
        let migrator = Migrator::new(Embedded)
            .await
            .map_err(|e| fail("migrating", &e))?;
        // On PostgreSQL sqlx holds an advisory lock meanwhile: gateways may start together.
        migrator
            .run(&pool)
            .await
            .map_err(|e| fail("migrating", &e))?;
        // Listening before connect returns: no change made after it can go unheard.
        let listener = match postgres {
            true => Some(listen(&url).await.map_err(|e| fail("listening on", &e))?),
            false => None,
        };
        let changes = Arc::new(watch::channel(0).0);
        let follower = tokio::spawn(follow(
            listener,
            url,
            shown.clone(),
            secrets.clone(),
            changes.clone(),
            full_refresh,
        ));
        Ok(Store {
            pool,
            postgres,
            shown,
            secrets,
            changes,
            follower,
        })
    }

    /// Conflict if the id is taken.
    pub async fn insert(&self, ex: &Exception) -> Result<(), StoreError> {
        self.insert_confirmed(ex, confirmed()).await
    }

    /// [`Store::insert`], committed only once `confirm` has succeeded.
    pub async fn insert_confirmed(
        &self,
        ex: &Exception,
        confirm: Confirmation<'_>,
    ) -> Result<(), StoreError> {
        let body = serde_json::to_string(ex).map_err(|e| StoreError::Db(e.to_string()))?;
        let q = sqlx::query(
            "INSERT INTO exceptions (kind, subject, status, requested_at, expires_at, body, id, version)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 1)",
        );
        self.write(bind_row(q, ex, body), confirm).await.map(drop)
    }

    /// Optimistic concurrency: writes `ex` only if its row still has `expected_version`, and
    /// returns the new version. Of two gateways writing from the same version one gets
    /// Conflict, re-reads and re-applies its step, so no approval is lost.
    pub async fn update(&self, ex: &Exception, expected_version: i64) -> Result<i64, StoreError> {
        self.update_confirmed(ex, expected_version, confirmed())
            .await
    }

    /// [`Store::update`], committed only once `confirm` has succeeded. `confirm` runs only
    /// when the row was still at `expected_version` (never for a Conflict).
    pub async fn update_confirmed(
        &self,
        ex: &Exception,
        expected_version: i64,
        confirm: Confirmation<'_>,
    ) -> Result<i64, StoreError> {
        let body = serde_json::to_string(ex).map_err(|e| StoreError::Db(e.to_string()))?;
        let q = sqlx::query(
            "UPDATE exceptions SET kind = $1, subject = $2, status = $3, requested_at = $4,
             expires_at = $5, body = $6, version = version + 1 WHERE id = $7 AND version = $8",
        );
        let written = self.write(bind_row(q, ex, body).bind(expected_version), confirm);
        if written.await? == 1 {
            return Ok(expected_version + 1);
        }
        match self.get(&ex.id).await? {
            Some(_) => Err(StoreError::Conflict),
            None => Err(StoreError::NotFound),
        }
    }

    /// The exception and its version, for a later [`Store::update`].
    pub async fn get(&self, id: &str) -> Result<Option<(Exception, i64)>, StoreError> {
        let row = sqlx::query("SELECT body, version FROM exceptions WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.db(e))?;
        let version = |row: &AnyRow| row.try_get("version").map_err(|e| self.db(e));
        row.map(|row| Ok((self.decode(&row)?, version(&row)?)))
            .transpose()
    }

    /// Newest first. `status` is the effective one at `now`, as [`Exception::status_at`] says:
    /// an approved exception whose `expires_at` has come is listed as expired.
    pub async fn list(
        &self,
        status: Option<Status>,
        subject: Option<&str>,
        kind: Option<Kind>,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<Exception>, StoreError> {
        // The CASE is `Exception::status_at` in SQL: one statement whatever the filters, as
        // each absent filter binds NULL.
        let q = sqlx::query(
            "SELECT body FROM exceptions WHERE ($1 IS NULL OR subject = $1)
             AND ($2 IS NULL OR kind = $2) AND ($3 IS NULL OR $3 = CASE
                 WHEN status = 'approved' AND expires_at <= $4 THEN 'expired' ELSE status END)
             ORDER BY requested_at DESC, id DESC LIMIT $5",
        )
        .bind(subject)
        .bind(kind.map(Kind::as_str))
        .bind(status.map(Status::as_str))
        .bind(now)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX));
        self.fetch(q).await
    }

    /// Every exception in force at `now`: what the live index is built from. An approved row
    /// without `expires_at` (the workflow never writes one) is not in force: fail closed.
    pub async fn in_force(&self, now: Millis) -> Result<Vec<Exception>, StoreError> {
        let q = sqlx::query(
            "SELECT body FROM exceptions WHERE status = 'approved' AND expires_at > $1
             ORDER BY requested_at DESC, id DESC",
        );
        self.fetch(q.bind(now)).await
    }

    /// "EXC-" and 12 base32 characters (60 bits) from the OS's random source, through `ring`.
    pub fn new_id() -> String {
        const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        let rng = ring::rand::SystemRandom::new();
        let bytes: [u8; 8] = ring::rand::generate(&rng)
            .expect("the operating system's random source failed")
            .expose();
        let mut n = u64::from_le_bytes(bytes);
        let mut id = String::from("EXC-");
        for _ in 0..12 {
            id.push(char::from(ALPHABET[(n & 31) as usize]));
            n >>= 5;
        }
        id
    }

    /// Tells this gateway and (PostgreSQL) every other one sharing the store that something
    /// changed. `insert` and `update` do it themselves; this is for changes made around them.
    pub async fn notify(&self) -> Result<(), StoreError> {
        if self.postgres {
            sqlx::query(NOTIFY)
                .execute(&self.pool)
                .await
                .map_err(|e| self.db(e))?;
        }
        self.changes.send_modify(bump);
        Ok(())
    }

    /// A counter bumped on every change made through this store, on every NOTIFY from another
    /// gateway (PostgreSQL), after the listener reconnects and every full-refresh period: on
    /// each bump, re-read [`Store::in_force`].
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// One write and, on PostgreSQL, its NOTIFY in the same transaction: the other gateways
    /// hear of it when it commits, not before, and no change commits without its notification.
    /// A write that changed a row commits only after `confirm` succeeded; the row stays locked
    /// meanwhile (SQLite: the database), so nobody reads or overwrites what may yet be undone.
    async fn write(&self, q: AnyQuery<'_>, confirm: Confirmation<'_>) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.db(e))?;
        let rows = q
            .execute(&mut *tx)
            .await
            .map_err(|e| self.db(e))?
            .rows_affected();
        if rows > 0 {
            if let Err(why) = confirm.await {
                // A failed rollback leaves nothing committed either: the transaction is
                // dropped, and with it the change.
                let _ = tx.rollback().await;
                return Err(StoreError::Unconfirmed(why));
            }
        }
        // From here on the change is confirmed: a failure is reported as such.
        let after_confirmation = |e: sqlx::Error| match self.db(e) {
            StoreError::Db(why) if rows > 0 => StoreError::Uncommitted(why),
            other => other,
        };
        if rows > 0 && self.postgres {
            sqlx::query(NOTIFY)
                .execute(&mut *tx)
                .await
                .map_err(after_confirmation)?;
        }
        tx.commit().await.map_err(after_confirmation)?;
        if rows > 0 {
            self.changes.send_modify(bump);
        }
        Ok(rows)
    }

    async fn fetch(&self, q: AnyQuery<'_>) -> Result<Vec<Exception>, StoreError> {
        let rows = q.fetch_all(&self.pool).await.map_err(|e| self.db(e))?;
        rows.iter().map(|row| self.decode(row)).collect()
    }

    fn decode(&self, row: &AnyRow) -> Result<Exception, StoreError> {
        let body: String = row.try_get("body").map_err(|e| self.db(e))?;
        serde_json::from_str(&body)
            .map_err(|e| StoreError::Db(format!("a stored exception does not parse: {e}")))
    }

    fn db(&self, e: sqlx::Error) -> StoreError {
        match e.as_database_error() {
            Some(d) if d.is_unique_violation() => StoreError::Conflict,
            _ => StoreError::Db(scrub(format!("{}: {e}", self.shown), &self.secrets)),
        }
    }
}

type AnyQuery<'q> = Query<'q, Any, AnyArguments<'q>>;

fn bump(n: &mut u64) {
    *n = n.wrapping_add(1);
}

/// Binds $1..$7 as `insert` and `update` name them.
fn bind_row<'q>(q: AnyQuery<'q>, ex: &'q Exception, body: String) -> AnyQuery<'q> {
    q.bind(ex.kind().as_str())
        .bind(ex.subject.to_string())
        .bind(ex.status.as_str())
        .bind(ex.requested_at)
        .bind(ex.expires_at)
        .bind(body)
        .bind(ex.id.as_str())
}

/// The migrations compiled in, so a gateway needs no directory of SQL files beside it.
#[derive(Debug)]
struct Embedded;

type Resolved = Result<Vec<Migration>, sqlx::error::BoxDynError>;

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> Pin<Box<dyn Future<Output = Resolved> + Send>> {
        let all = MIGRATIONS.iter().map(|&(version, what, sql)| {
            Migration::new(
                version,
                Cow::Borrowed(what),
                MigrationType::Simple,
                Cow::Borrowed(sql),
                false,
            )
        });
        Box::pin(std::future::ready(Ok(all.collect())))
    }
}

/// `sqlite://var/gatehouse.db` (relative to the working directory) or `sqlite:///abs/path.db`:
/// creates the directory, and tells sqlx to create the file (it only opens one by default).
fn sqlite_url(url: &str) -> Result<(String, bool), String> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or("the store is sqlite://PATH or postgres://USER@HOST:PORT/DB")?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" || query.contains("mode=memory") {
        return Ok((url.to_owned(), true));
    }
    if let Some(dir) = Path::new(path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    Ok(match query {
        q if q.contains("mode=") => (url.to_owned(), false),
        "" => (format!("{url}?mode=rwc"), false),
        _ => (format!("{url}&mode=rwc"), false),
    })
}

async fn listen(url: &str) -> Result<PgListener, sqlx::Error> {
    // A pool of one of our own: while the server is down an attempt fails within 2 s (sqlx's
    // default retries for 30 s, backing off to 6 s between tries), and `follow` tries again.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(2))
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_lazy_with(url.parse::<PgConnectOptions>()?.application_name(LISTENER));
    let mut listener = PgListener::connect_with(&pool).await?;
    // We reconnect ourselves (see `follow`): only then do we know when to bump the counter.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Bumps `changes` on every NOTIFY, and every `every` as a full refresh. On PostgreSQL the
/// listening connection is replaced then too, so one that died silently (no reset, no error)
/// lasts one period at most; whatever was missed while not listening, the bump after each
/// reconnect makes every reader re-read.
async fn follow(
    mut listener: Option<PgListener>,
    url: String,
    shown: String,
    secrets: Vec<String>,
    changes: Arc<watch::Sender<u64>>,
    every: Duration,
) {
    let postgres = listener.is_some();
    let mut backoff = Duration::from_millis(100);
    loop {
        match listener.as_mut() {
            // SQLite: nothing to hear, only the period.
            None if !postgres => tokio::time::sleep(every).await,
            None => match listen(&url).await {
                Ok(fresh) => {
                    listener = Some(fresh);
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    let error = scrub(e.to_string(), &secrets);
                    tracing::warn!(store = %shown, %error, "cannot listen for exception changes");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            Some(current) => {
                let period = tokio::time::sleep(every);
                tokio::pin!(period);
                loop {
                    tokio::select! {
                        got = current.try_recv() => match got {
                            Ok(Some(_)) => changes.send_modify(bump),
                            Ok(None) => break tracing::warn!(store = %shown, "lost the listening connection"),
                            Err(e) => {
                                let error = scrub(e.to_string(), &secrets);
                                break tracing::warn!(store = %shown, %error, "listening failed");
                            }
                        },
                        () = &mut period => break,
                    }
                }
                // Lost, failed or simply due: a fresh connection, then a bump.
                listener = None;
                continue;
            }
        }
        changes.send_modify(bump);
    }
}

/// `scheme://host:port/path`, without `user:password@` and without the query (which may carry
/// `password=` or key paths).
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.split('?').next().unwrap_or_default().to_owned();
    };
    let rest = rest.split('?').next().unwrap_or_default();
    let end = rest.find('/').unwrap_or(rest.len());
    let host = rest[..end]
        .rsplit_once('@')
        .map_or(&rest[..end], |(_, h)| h);
    format!("{scheme}://{host}{}", &rest[end..])
}

/// The password in a URL's userinfo or `password=` parameter, to blank out of error texts.
fn secrets_of(url: &str) -> Vec<String> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let authority = base
        .split_once("://")
        .map_or("", |(_, r)| r.split('/').next().unwrap_or(""));
    let userinfo = authority.rsplit_once('@').map_or("", |(u, _)| u);
    let in_userinfo = userinfo.split_once(':').map(|(_, p)| p);
    let in_query = query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("password="));
    in_userinfo
        .into_iter()
        .chain(in_query)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

fn scrub(mut text: String, secrets: &[String]) -> String {
    for s in secrets {
        text = text.replace(s.as_str(), "***");
    }
    text
}
#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
