//! Server-side console sessions and logins in progress. The browser holds only a random
//! id; the store keys sessions by the id's SHA-256, so the table itself holds nothing a
//! browser could present. Time is passed in, so expiry is tested without waiting.

use std::time::{Duration, Instant};

use dashmap::DashMap;
use sha2::{Digest, Sha256};

use super::oidc::{random_token, Identity, LoginSecrets};

/// A login not finished within this long is forgotten (the provider's code lives shorter).
pub const LOGIN_TTL: Duration = Duration::from_secs(10 * 60);
/// Bounds on what unauthenticated browsers can make the gateway hold.
const MAX_PENDING_LOGINS: usize = 10_000;
/// Logins in progress one client address may hold: a browser needs one or two, and one
/// address flooding `/login` then only evicts its own.
const MAX_PENDING_PER_CLIENT: usize = 16;
const MAX_SESSIONS: usize = 10_000;

/// Who is logged in, as the provider said at login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub name: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
}

impl From<Identity> for User {
    fn from(id: Identity) -> User {
        User {
            name: id.name.unwrap_or_else(|| id.subject.clone()),
            id: id.subject,
            email: id.email,
            groups: id.groups,
        }
    }
}

/// What a request in a live session sees.
#[derive(Debug, Clone)]
pub struct Current {
    pub user: User,
    /// The anti-forgery token every form of this session carries.
    pub csrf: String,
    /// The provider's ID token, for its logout (never shown, never logged).
    pub id_token: String,
    pub expires_in: Duration,
}

struct Session {
    user: User,
    csrf: String,
    id_token: String,
    created: Instant,
    last_seen: Instant,
}

struct PendingLogin {
    secrets: LoginSecrets,
    binding: [u8; 32],
    created: Instant,
    client: Option<std::net::IpAddr>,
}

pub struct Sessions {
    sessions: DashMap<[u8; 32], Session>,
    logins: DashMap<String, PendingLogin>,
    idle: Duration,
    max: Duration,
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// Why there is no session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSession {
    Missing,
    Expired,
}

impl Sessions {
    pub fn new(idle: Duration, max: Duration) -> Sessions {
        Sessions {
            sessions: DashMap::new(),
            logins: DashMap::new(),
            idle,
            max,
        }
    }

    /// Starts a login: the secrets to send the browser off with, and the value of the
    /// cookie that binds the provider's answer to this browser.
    pub fn begin_login(
        &self,
        now: Instant,
        client: Option<std::net::IpAddr>,
    ) -> (LoginSecrets, String) {
        if client.is_some() {
            let mut mine: Vec<(Instant, String)> = self
                .logins
                .iter()
                .filter(|p| p.client == client)
                .map(|p| (p.created, p.key().clone()))
                .collect();
            if mine.len() >= MAX_PENDING_PER_CLIENT {
                mine.sort();
                for (_, state) in &mine[..=mine.len() - MAX_PENDING_PER_CLIENT] {
                    self.logins.remove(state);
                }
            }
        }
        if self.logins.len() >= MAX_PENDING_LOGINS {
            self.logins
                .retain(|_, p| now.saturating_duration_since(p.created) < LOGIN_TTL);
        }
        if self.logins.len() >= MAX_PENDING_LOGINS {
            // Still full of fresh ones: an unauthenticated flood. Drop the oldest half
            // rather than refuse every real user.
            let mut ages: Vec<Instant> = self.logins.iter().map(|p| p.created).collect();
            ages.sort();
            let cut = ages[ages.len() / 2];
            self.logins.retain(|_, p| p.created > cut);
        }
        let secrets = LoginSecrets::generate();
        let binding = random_token();
        self.logins.insert(
            secrets.state.clone(),
            PendingLogin {
                secrets: secrets.clone(),
                binding: digest(&binding),
                created: now,
                client,
            },
        );
        (secrets, binding)
    }

    /// The login that `state` names, once: only for the browser holding its binding cookie
    /// and within `LOGIN_TTL`. The binding is checked before the login is taken, so a
    /// callback from anyone else who learned the `state` leaves the victim's sign-in alone.
    pub fn take_login(
        &self,
        state: &str,
        binding: Option<&str>,
        now: Instant,
    ) -> Option<LoginSecrets> {
        let binding = digest(binding?);
        let (_, pending) = self
            .logins
            .remove_if(state, |_, pending| pending.binding == binding)?;
        let fresh = now.saturating_duration_since(pending.created) < LOGIN_TTL;
        fresh.then_some(pending.secrets)
    }

    /// A new session (a new id on every login: no id chosen before login survives it).
    /// Returns the cookie value.
    pub fn create(&self, user: User, id_token: String, now: Instant) -> String {
        if self.sessions.len() >= MAX_SESSIONS {
            self.purge(now);
        }
        let id = random_token();
        self.sessions.insert(
            digest(&id),
            Session {
                user,
                csrf: random_token(),
                id_token,
                created: now,
                last_seen: now,
            },
        );
        id
    }

    /// The live session for this cookie value; using it counts as activity.
    pub fn current(&self, cookie: Option<&str>, now: Instant) -> Result<Current, NoSession> {
        let key = digest(cookie.ok_or(NoSession::Missing)?);
        let mut entry = self.sessions.get_mut(&key).ok_or(NoSession::Missing)?;
        let idle_for = now.saturating_duration_since(entry.last_seen);
        let age = now.saturating_duration_since(entry.created);
        if idle_for >= self.idle || age >= self.max {
            drop(entry);
            self.sessions.remove(&key);
            return Err(NoSession::Expired);
        }
        entry.last_seen = now;
        Ok(Current {
            user: entry.user.clone(),
            csrf: entry.csrf.clone(),
            id_token: entry.id_token.clone(),
            // Touched now: a full idle period, unless the absolute limit comes first.
            expires_in: self.idle.min(self.max - age),
        })
    }

    /// Logout: the session is gone at once.
    pub fn end(&self, cookie: Option<&str>) {
        if let Some(c) = cookie {
            self.sessions.remove(&digest(c));
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    fn purge(&self, now: Instant) {
        self.sessions.retain(|_, s| {
            now.saturating_duration_since(s.last_seen) < self.idle
                && now.saturating_duration_since(s.created) < self.max
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> User {
        User {
            id: "alice".into(),
            name: "Alice".into(),
            email: None,
            groups: vec!["sec-auditors".into()],
        }
    }

    #[test]
    fn a_login_is_taken_once_and_only_by_the_browser_that_started_it() {
        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(600));
        let t0 = Instant::now();
        let (secrets, binding) = s.begin_login(t0, None);
        assert!(s
            .take_login(&secrets.state, Some("another browser"), t0)
            .is_none());
        assert!(s.take_login(&secrets.state, None, t0).is_none());
        // Someone else's callback with the victim's state does not cancel the sign-in.
        assert_eq!(
            s.take_login(&secrets.state, Some(&binding), t0),
            Some(secrets.clone())
        );
        assert!(s.take_login(&secrets.state, Some(&binding), t0).is_none());
        let (secrets, binding) = s.begin_login(t0, None);
        assert!(s
            .take_login(&secrets.state, Some(&binding), t0 + LOGIN_TTL)
            .is_none());
        assert!(s.take_login("never issued", Some(&binding), t0).is_none());
    }

    #[test]
    fn one_client_flooding_logins_only_evicts_its_own() {
        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(600));
        let t0 = Instant::now();
        let (theirs, binding) = s.begin_login(t0, Some([10, 0, 0, 7].into()));
        let flooder = Some([10, 6, 6, 6].into());
        let (first, first_binding) = s.begin_login(t0, flooder);
        for i in 0..1000 {
            s.begin_login(t0 + Duration::from_millis(i + 1), flooder);
        }
        assert!(s.logins.len() <= MAX_PENDING_PER_CLIENT + 1);
        assert!(s
            .take_login(&first.state, Some(&first_binding), t0)
            .is_none());
        assert_eq!(
            s.take_login(&theirs.state, Some(&binding), t0),
            Some(theirs),
            "another client's login in progress survives"
        );
    }

    #[test]
    fn a_session_ends_when_idle_too_long_or_too_old_however_busy() {
        let idle = Duration::from_secs(60);
        let s = Sessions::new(idle, Duration::from_secs(150));
        let t0 = Instant::now();
        let id = s.create(alice(), "id-token".into(), t0);
        let now = s.current(Some(&id), t0 + Duration::from_secs(59)).unwrap();
        assert_eq!(now.user, alice());
        assert_eq!(now.csrf.len(), 43);
        // Activity keeps it alive past the idle limit …
        assert!(s.current(Some(&id), t0 + Duration::from_secs(118)).is_ok());
        // … but not past the absolute one.
        assert_eq!(
            s.current(Some(&id), t0 + Duration::from_secs(151))
                .unwrap_err(),
            NoSession::Expired
        );
        assert_eq!(s.current(Some(&id), t0).unwrap_err(), NoSession::Missing);
        let id = s.create(alice(), String::new(), t0);
        assert_eq!(
            s.current(Some(&id), t0 + idle).unwrap_err(),
            NoSession::Expired
        );
        assert_eq!(s.current(None, t0).unwrap_err(), NoSession::Missing);
    }

    #[test]
    fn logout_ends_the_session_and_each_login_gets_a_new_id_and_token() {
        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(600));
        let t0 = Instant::now();
        let a = s.create(alice(), String::new(), t0);
        let b = s.create(alice(), String::new(), t0);
        assert_ne!(a, b);
        assert_ne!(
            s.current(Some(&a), t0).unwrap().csrf,
            s.current(Some(&b), t0).unwrap().csrf
        );
        s.end(Some(&a));
        assert_eq!(s.current(Some(&a), t0).unwrap_err(), NoSession::Missing);
        assert!(s.current(Some(&b), t0).is_ok());
    }
}
