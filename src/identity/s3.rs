//! Who is behind an S3 request: the access key id a signature names, mapped through
//! `[[s3.access_key]]`; or, for temporary credentials only, the client's network, matched
//! against each workspace's `source_cidrs` ("compute of workspace W"); else nobody, and the
//! request is refused. Pure: the key, the session-token flag and the client address in, a
//! caller or a refusal out.
//!
//! | credential | from | outcome |
//! |---|---|---|
//! | a mapped key, its workspace with `source_cidrs` | that workspace's network | the key's principal |
//! | a mapped key, its workspace with `source_cidrs` | anywhere else | `identity.s3_wrong_network` |
//! | a mapped key, its workspace without `source_cidrs` (or none) | anywhere | the key's principal |
//! | temporary, unmapped (`ASIA…` with a session token) | a workspace's network | `compute:<workspace>` |
//! | temporary, unmapped | anywhere else | `identity.s3_unknown_caller` |
//! | any other unmapped key (`AKIA…`, `ASIA…` without a token, a token with another shape, `ABIA…`, `ACCA…`, non-AWS ids) | anywhere | `identity.s3_unknown_key` |
//! | no credential the gateway can read (anonymous, a form upload) | anywhere | `identity.s3_unknown_caller` |
//!
//! Why only temporary credentials are attributed by network: the compute of a workspace holds
//! instance-profile (STS) credentials, so an unmapped temporary key from its network is its
//! compute. A long-term key belongs to an IAM user somewhere — a person's key copied onto the
//! cluster — and must be named in `[[s3.access_key]]` to be let in at all. Both marks of a
//! temporary credential are required (the `ASIA` id and the token): anything else is not a
//! shape STS issues, so it is refused rather than guessed at.
//!
//! Why a mapped key is held to its workspace's network: a key of the lab used from a laptop is
//! data leaving the platform, whatever the bucket rules say about the lab. A client address
//! belongs to the workspace whose network around it is the most specific, as for attribution,
//! so a lab subnet inside a wider production range is the lab's, not production's.
//!
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

/// The credential a request names, as far as attribution goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyClaim<'a> {
    pub id: &'a str,
    /// A security token came with it (`x-amz-security-token`, header or query).
    pub session_token: bool,
}

/// Why a request has no caller. Each is denied, recorded and never forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unattributed {
    /// An unmapped key that is not a temporary credential.
    UnknownKey,
    /// A mapped key used from outside its workspace's networks.
    WrongNetwork { workspace: String },
    /// No credential, or a temporary one from a network no workspace claims.
    UnknownCaller { credential: bool },
}

impl Unattributed {
    pub fn rule(&self) -> &'static str {
        match self {
            Unattributed::UnknownKey => "identity.s3_unknown_key",
            Unattributed::WrongNetwork { .. } => "identity.s3_wrong_network",
            Unattributed::UnknownCaller { .. } => "identity.s3_unknown_caller",
        }
    }

    /// For the denial message: says what is missing, never echoes the key.
    pub fn reason(&self) -> String {
        match self {
            Unattributed::UnknownKey => "the access key is not mapped to a principal; only temporary credentials (STS, instance profiles) of a workspace's compute are attributed by network".to_owned(),
            Unattributed::WrongNetwork { workspace } => format!(
                "the access key belongs to workspace {workspace}, and this client is not on {workspace}'s compute networks"
            ),
            Unattributed::UnknownCaller { credential: true } => {
                "the temporary credentials are not mapped to a principal and the client's network belongs to no workspace".to_owned()
            }
            Unattributed::UnknownCaller { credential: false } => {
                "the request carries no access key the gateway can read".to_owned()
            }
        }
    }
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

    /// Attributes a request (the table in the module documentation).
    pub fn attribute(
        &self,
        key: Option<KeyClaim<'_>>,
        client: IpAddr,
    ) -> Result<S3Caller, Unattributed> {
        let Some(key) = key else {
            return Err(Unattributed::UnknownCaller { credential: false });
        };
        let network = self.network_of(client);
        if let Some(k) = self.keys.get(key.id) {
            if let Some(workspace) = k.workspace.as_deref() {
                let fenced = self.networks.iter().any(|(_, w)| w == workspace);
                if fenced && network != Some(workspace) {
                    return Err(Unattributed::WrongNetwork {
                        workspace: workspace.to_owned(),
                    });
                }
            }
            return Ok(S3Caller {
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
        if !(key.session_token && key.id.starts_with("ASIA")) {
            return Err(Unattributed::UnknownKey);
        }
        let workspace = network.ok_or(Unattributed::UnknownCaller { credential: true })?;
        Ok(S3Caller {
            principal: Principal {
                id: format!("compute:{workspace}"),
                kind: PrincipalKind::ServicePrincipal,
                groups: Vec::new(),
                auth: AuthMethod::Network,
            },
            workspace: Some(workspace.to_owned()),
        })
    }

    /// The workspace whose network around `client` is the most specific, so a lab subnet
    /// inside a wider range is the lab.
    fn network_of(&self, client: IpAddr) -> Option<&str> {
        let client = canonical(client);
        self.networks
            .iter()
            .filter(|(net, _)| net.contains(&client))
            .max_by_key(|(net, _)| net.prefix_len())
            .map(|(_, workspace)| workspace.as_str())
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

    const LAB_KEY: &str = "AKIALAB0000000000001";
    const PROD_KEY: &str = "AKIAPROD000000000001";
    const OPEN_KEY: &str = "AKIAOPEN000000000001";

    fn mapped(id: &str, principal: &str, workspace: Option<&str>) -> (String, AccessKeyConfig) {
        (
            id.to_owned(),
            AccessKeyConfig {
                id: id.into(),
                principal: principal.into(),
                service_principal: true,
                workspace: workspace.map(str::to_owned),
                groups: vec![],
            },
        )
    }

    /// prod's compute is 10.0.0.0/8 but for the lab's 10.1.0.0/16 inside it; `elsewhere` has
    /// a key and no networks.
    fn callers() -> S3Callers {
        S3Callers {
            keys: [
                mapped(LAB_KEY, "sp-aiml-lab", Some("prod-analytics")),
                mapped(PROD_KEY, "sp-aiml-prod", Some("prod")),
                mapped(OPEN_KEY, "sp-elsewhere", Some("elsewhere")),
            ]
            .into(),
            networks: vec![
                ("10.0.0.0/8".parse().unwrap(), "prod".into()),
                ("10.1.0.0/16".parse().unwrap(), "prod-analytics".into()),
            ],
        }
    }

    fn key(id: &str) -> Option<KeyClaim<'_>> {
        Some(KeyClaim {
            id,
            session_token: false,
        })
    }

    fn temporary(id: &str) -> Option<KeyClaim<'_>> {
        Some(KeyClaim {
            id,
            session_token: true,
        })
    }

    /// `Ok(principal id, workspace)` or the rule id.
    type Outcome = Result<(String, Option<String>), &'static str>;

    fn attribute(key: Option<KeyClaim<'_>>, client: &str) -> Outcome {
        callers()
            .attribute(key, client.parse().unwrap())
            .map(|c| (c.principal.id, c.workspace))
            .map_err(|e| e.rule())
    }

    fn ok(principal: &str, workspace: &str) -> Outcome {
        Ok((principal.to_owned(), Some(workspace.to_owned())))
    }

    #[test]
    fn the_attribution_table() {
        let cases: &[(Option<KeyClaim>, &str, Outcome)] = &[
            // A mapped key, from its workspace's network only.
            (
                key(LAB_KEY),
                "10.1.2.3",
                ok("sp-aiml-lab", "prod-analytics"),
            ),
            (
                key(LAB_KEY),
                "::ffff:10.1.2.3",
                ok("sp-aiml-lab", "prod-analytics"),
            ),
            (key(LAB_KEY), "192.0.2.1", Err("identity.s3_wrong_network")),
            (key(LAB_KEY), "10.9.9.9", Err("identity.s3_wrong_network")),
            (key(LAB_KEY), "127.0.0.1", Err("identity.s3_wrong_network")),
            (
                temporary(LAB_KEY),
                "192.0.2.1",
                Err("identity.s3_wrong_network"),
            ),
            (key(PROD_KEY), "10.9.9.9", ok("sp-aiml-prod", "prod")),
            // The lab subnet is the lab's, inside prod's wider range.
            (key(PROD_KEY), "10.1.2.3", Err("identity.s3_wrong_network")),
            // A workspace without networks: its keys are not fenced.
            (key(OPEN_KEY), "192.0.2.1", ok("sp-elsewhere", "elsewhere")),
            (key(OPEN_KEY), "10.1.2.3", ok("sp-elsewhere", "elsewhere")),
            // Unmapped long-term keys: never attributed by network.
            (
                key("AKIAUNKNOWN000000000"),
                "10.1.2.3",
                Err("identity.s3_unknown_key"),
            ),
            (
                key("AKIAUNKNOWN000000000"),
                "192.0.2.1",
                Err("identity.s3_unknown_key"),
            ),
            // A session token does not make a long-term key temporary.
            (
                temporary("AKIAUNKNOWN000000000"),
                "10.1.2.3",
                Err("identity.s3_unknown_key"),
            ),
            // Nor an STS-looking id without its token; nor other shapes.
            (
                key("ASIAUNKNOWN000000000"),
                "10.1.2.3",
                Err("identity.s3_unknown_key"),
            ),
            (
                temporary("ABIAUNKNOWN000000000"),
                "10.1.2.3",
                Err("identity.s3_unknown_key"),
            ),
            (
                temporary("ACCAUNKNOWN000000000"),
                "10.1.2.3",
                Err("identity.s3_unknown_key"),
            ),
            (
                temporary("minioadmin"),
                "10.1.2.3",
                Err("identity.s3_unknown_key"),
            ),
            (
                temporary("asiaunknown000000000"),
                "10.1.2.3",
                Err("identity.s3_unknown_key"),
            ),
            // Temporary credentials: the compute of the workspace whose network it is.
            (
                temporary("ASIAUNKNOWN000000000"),
                "10.1.2.3",
                ok("compute:prod-analytics", "prod-analytics"),
            ),
            (
                temporary("ASIAUNKNOWN000000000"),
                "::ffff:10.9.9.9",
                ok("compute:prod", "prod"),
            ),
            (
                temporary("ASIAUNKNOWN000000000"),
                "192.0.2.1",
                Err("identity.s3_unknown_caller"),
            ),
            // No credential at all: not attributed by network either.
            (None, "10.1.2.3", Err("identity.s3_unknown_caller")),
            (None, "127.0.0.1", Err("identity.s3_unknown_caller")),
        ];
        for (claim, client, want) in cases {
            assert_eq!(&attribute(*claim, client), want, "{claim:?} from {client}");
        }
        let by_net = callers()
            .attribute(
                temporary("ASIAUNKNOWN000000000"),
                "10.1.2.3".parse().unwrap(),
            )
            .unwrap();
        assert_eq!(by_net.principal.auth, AuthMethod::Network);
        assert_eq!(by_net.principal.kind, PrincipalKind::ServicePrincipal);
        let by_key = callers()
            .attribute(key(LAB_KEY), "10.1.2.3".parse().unwrap())
            .unwrap();
        assert_eq!(by_key.principal.auth, AuthMethod::S3Key);
    }

    #[test]
    fn refusals_say_why_without_the_key() {
        let wrong = callers()
            .attribute(key(PROD_KEY), "192.0.2.1".parse().unwrap())
            .unwrap_err();
        assert!(
            wrong.reason().contains("workspace prod"),
            "{}",
            wrong.reason()
        );
        for e in [
            wrong,
            callers()
                .attribute(key("AKIAUNKNOWN000000000"), "10.1.2.3".parse().unwrap())
                .unwrap_err(),
        ] {
            assert!(!e.reason().contains("AKIA"), "{}", e.reason());
        }
    }
}
