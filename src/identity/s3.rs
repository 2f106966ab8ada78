//! Who is behind an S3 request: the access key id a signature names, mapped through
//! `[[s3.access_key]]`; else the client's network, matched against each workspace's
//! `source_cidrs` ("compute of workspace W"); else nobody the gateway knows.
//! The key id is a claim until the upstream accepts the signature; the completion record
//! carries the upstream's verdict.

use std::collections::HashMap;
use std::net::IpAddr;

use super::{AuthMethod, Principal, PrincipalKind};
use crate::config::{AccessKeyConfig, Config};

/// The caller of an S3 request and the workspace it acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Caller {
    pub principal: Principal,
    pub workspace: Option<String>,
}

/// Access keys and networks, compiled from configuration.
#[derive(Debug, Default)]
pub struct S3Callers {
    keys: HashMap<String, AccessKeyConfig>,
    networks: Vec<(ipnet::IpNet, String)>,
}

impl S3Callers {
    pub fn from_config(config: &Config) -> S3Callers {
        let keys = config
            .s3
            .iter()
            .flat_map(|s| s.access_keys.iter())
            .map(|k| (k.id.clone(), k.clone()))
            .collect();
        let networks = config
            .workspaces
            .iter()
            .flat_map(|w| w.source_cidrs.iter().map(|n| (*n, w.name.clone())))
            .collect();
        S3Callers { keys, networks }
    }

    /// Attributes a request; `None` when neither its key nor its network is known.
    pub fn attribute(&self, key_id: Option<&str>, client: IpAddr) -> Option<S3Caller> {
        if let Some(k) = key_id.and_then(|id| self.keys.get(id)) {
            return Some(S3Caller {
                principal: Principal {
                    id: k.principal.clone(),
                    kind: if k.service_principal {
                        PrincipalKind::ServicePrincipal
                    } else {
                        PrincipalKind::User
                    },
                    groups: k.groups.clone(),
                    auth: AuthMethod::S3Key,
                },
                workspace: k.workspace.clone(),
            });
        }
        // The most specific network wins, so a lab subnet inside a wider range is the lab.
        let client = canonical(client);
        let (_, workspace) = self
            .networks
            .iter()
            .filter(|(net, _)| net.contains(&client))
            .max_by_key(|(net, _)| net.prefix_len())?;
        Some(S3Caller {
            principal: Principal {
                id: format!("compute:{workspace}"),
                kind: PrincipalKind::ServicePrincipal,
                groups: Vec::new(),
                auth: AuthMethod::Network,
            },
            workspace: Some(workspace.clone()),
        })
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.1.2.3`) are matched as the IPv4 they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn callers() -> S3Callers {
        S3Callers {
            keys: [(
                "AKIALAB0000000000001".to_owned(),
                AccessKeyConfig {
                    id: "AKIALAB0000000000001".into(),
                    principal: "sp-aiml-lab".into(),
                    service_principal: true,
                    workspace: Some("prod-analytics".into()),
                    groups: vec![],
                },
            )]
            .into(),
            networks: vec![
                ("10.0.0.0/8".parse().unwrap(), "prod".into()),
                ("10.1.0.0/16".parse().unwrap(), "prod-analytics".into()),
            ],
        }
    }

    #[test]
    fn keys_then_networks_then_nobody() {
        let c = callers();
        let by_key = c
            .attribute(Some("AKIALAB0000000000001"), "192.0.2.1".parse().unwrap())
            .unwrap();
        assert_eq!(by_key.principal.id, "sp-aiml-lab");
        assert_eq!(by_key.principal.auth, AuthMethod::S3Key);
        assert_eq!(by_key.workspace.as_deref(), Some("prod-analytics"));

        let by_net = c
            .attribute(Some("AKIAUNKNOWN000000000"), "10.1.2.3".parse().unwrap())
            .unwrap();
        assert_eq!(by_net.principal.id, "compute:prod-analytics");
        assert_eq!(by_net.principal.auth, AuthMethod::Network);
        let mapped = c
            .attribute(None, "::ffff:10.9.9.9".parse().unwrap())
            .unwrap();
        assert_eq!(mapped.workspace.as_deref(), Some("prod"));

        assert!(c
            .attribute(Some("AKIAUNKNOWN000000000"), "192.0.2.1".parse().unwrap())
            .is_none());
        assert!(c.attribute(None, "127.0.0.1".parse().unwrap()).is_none());
    }
}
