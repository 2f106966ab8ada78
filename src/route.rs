//! Host / `:authority` → `Route`.
//!
//! Matching is on the host name only: case-insensitive, port ignored, one trailing dot
//! tolerated. A host that no route names is `Route::Unknown`, which the gateway denies.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, Upstream, WorkspaceConfig};
use crate::policy::WorkspacePolicy;

/// A workspace as the data path needs it.
#[derive(Debug)]
pub struct Workspace {
    pub name: String,
    pub upstream: Upstream,
    pub policy: WorkspacePolicy,
    /// Index into the proxy's upstream clients.
    pub client: usize,
}

#[derive(Debug, Clone)]
pub enum Route {
    Workspace(Arc<Workspace>),
    /// One of `[s3] hosts` (or a mapped access point).
    S3,
    Unknown,
}

/// Host name → workspace, exact names first, then `*.suffix` patterns (longest first).
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<String, Arc<Workspace>>,
    wildcard: Vec<(String, Arc<Workspace>)>,
    s3: Option<crate::classify::s3::S3Hosts>,
}

impl RouteTable {
    pub fn from_config(config: &Config) -> RouteTable {
        let mut table = RouteTable::default();
        for (i, w) in config.workspaces.iter().enumerate() {
            let ws = Arc::new(workspace(w, i));
            for h in &w.hosts {
                match h.strip_prefix("*.") {
                    Some(suffix) => table.wildcard.push((format!(".{suffix}"), ws.clone())),
                    None => {
                        table.exact.insert(h.clone(), ws.clone());
                    }
                }
            }
        }
        table.s3 = config
            .s3
            .as_ref()
            .map(|s| crate::classify::s3::S3Hosts::new(&s.hosts, &s.access_points));
        table
            .wildcard
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        table
    }

    /// Routes a `Host` / `:authority` value (`host[:port]`, `[v6]:port`).
    pub fn route(&self, authority: &str) -> Route {
        let Some(host) = host_of(authority) else {
            return Route::Unknown;
        };
        let lookup = |h: &str| {
            if let Some(w) = self.exact.get(h) {
                return Some(w.clone());
            }
            self.wildcard
                .iter()
                .find(|(suffix, _)| h.len() > suffix.len() && h.ends_with(suffix.as_str()))
                .map(|(_, w)| w.clone())
        };
        // Avoid allocating for the common already-lower-case host.
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        if let Some(w) = self.exact.get(host) {
            return Route::Workspace(w.clone());
        }
        if self.s3.as_ref().is_some_and(|s3| s3.matches(host)) {
            return Route::S3;
        }
        lookup(host).map_or(Route::Unknown, Route::Workspace)
    }

    pub fn workspaces(&self) -> Vec<Arc<Workspace>> {
        let mut seen: Vec<Arc<Workspace>> = Vec::new();
        for w in self
            .exact
            .values()
            .chain(self.wildcard.iter().map(|(_, w)| w))
        {
            if !seen.iter().any(|s| Arc::ptr_eq(s, w)) {
                seen.push(w.clone());
            }
        }
        seen.sort_by_key(|w| w.client);
        seen
    }
}

fn workspace(w: &WorkspaceConfig, client: usize) -> Workspace {
    Workspace {
        name: w.name.clone(),
        upstream: w.upstream.clone(),
        policy: WorkspacePolicy {
            name: w.name.clone(),
            humans: w.humans,
            human_groups: w.human_groups.clone(),
        },
        client,
    }
}

/// The host part of an authority, without port and without one trailing dot.
/// `None` when the value is not a plausible authority.
pub fn host_of(authority: &str) -> Option<&str> {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port — keep the brackets' content.
        let end = rest.find(']')?;
        &rest[..end]
    } else {
        match authority.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            Some(_) => return None,
            None => authority,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b':')
    {
        return None;
    }
    Some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let dir = tempfile::tempdir().unwrap();
        let options = crate::testing::FixtureOptions {
            analytics_aliases: vec![],
            ..Default::default()
        };
        let fixture =
            crate::testing::Fixture::create(dir.path(), "http://127.0.0.1:1", &options).unwrap();
        RouteTable::from_config(&fixture.config)
    }

    fn name(route: Route) -> String {
        match route {
            Route::Workspace(w) => w.name.clone(),
            Route::S3 => "s3".to_owned(),
            Route::Unknown => "-".to_owned(),
        }
    }

    #[test]
    fn routes_by_host_case_insensitively_ignoring_port() {
        let t = table();
        for (authority, expected) in [
            ("analytics.dbx.example", "prod-analytics"),
            ("ANALYTICS.dbx.Example:8443", "prod-analytics"),
            ("analytics.dbx.example.", "prod-analytics"),
            ("parallel.dbx.example:443", "prod-parallel"),
            ("prod.dbx.example", "prod"),
            ("evil.example", "-"),
            ("analytics.dbx.example.evil.example", "-"),
            ("", "-"),
            ("analytics.dbx.example:notaport", "-"),
            ("analytics.dbx.example@evil", "-"),
            ("[::1]:8443", "-"),
        ] {
            assert_eq!(name(t.route(authority)), expected, "{authority:?}");
        }
    }

    #[test]
    fn host_of_strips_ports_and_brackets() {
        assert_eq!(host_of("a.b:1"), Some("a.b"));
        assert_eq!(host_of("[::1]:443"), Some("::1"));
        assert_eq!(host_of("a b"), None);
    }
}
