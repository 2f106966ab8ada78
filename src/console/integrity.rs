//! The trail's integrity as every console page shows it: the whole trail is verified (hash
//! chain, digests, signatures when a signing key is configured) in the background, at start
//! and then every 5 minutes (less often on a trail so large that this would take more than
//! 2 % of a core), and the last outcome is kept.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::human;
use crate::audit::digest::PublicKey;
use crate::audit::verify::{self, Broken, GatewayReport};

/// How often the trail is verified again, at most.
pub const EVERY: Duration = Duration::from_secs(300);

/// Verification keeps to this share of one core or less: on a trail so large that one pass
/// takes longer than `EVERY / SHARE`, the next waits `SHARE` times as long as it took.
const SHARE: u32 = 50;

/// How long to wait before verifying again, after a pass that took `took`. Pure.
pub fn pause_after(took: Duration, every: Duration) -> Duration {
    every.max(took * SHARE)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    NotYet,
    Holds {
        records: u64,
        /// Each gateway's last verified record.
        last: Vec<(String, u64)>,
        signed: bool,
    },
    Broken(String),
}

#[derive(Debug, Clone)]
struct Checked {
    outcome: Outcome,
    at_unix: i64,
}

/// What a page shows: whether the trail holds, in one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntegrityView {
    /// `ok`, `broken` or `pending`: also the banner's CSS class.
    pub state: &'static str,
    pub text: String,
}

pub struct Integrity {
    last: ArcSwap<Checked>,
}

/// What one verification says, pure.
pub fn outcome(result: &Result<Vec<GatewayReport>, Broken>, signed: bool) -> Outcome {
    match result {
        Ok(reports) => Outcome::Holds {
            records: reports.iter().map(|r| r.records).sum(),
            last: reports
                .iter()
                .filter_map(|r| r.last_seq.map(|s| (r.gateway.clone(), s)))
                .collect(),
            signed,
        },
        Err(broken) => Outcome::Broken(broken.to_string()),
    }
}

/// The banner for an outcome checked at `at_unix`, pure.
pub fn view(outcome: &Outcome, at_unix: i64, now: i64) -> IntegrityView {
    let when = human::relative(at_unix, now);
    match outcome {
        Outcome::NotYet => IntegrityView {
            state: "pending",
            text: "Trail integrity: the first verification is running.".to_owned(),
        },
        Outcome::Holds {
            records,
            last,
            signed,
        } => {
            let last: Vec<String> = last.iter().map(|(g, s)| format!("{g} #{s}")).collect();
            IntegrityView {
                state: "ok",
                text: format!(
                    "Trail verified {when}: {records} records hold{}{}.",
                    if last.is_empty() {
                        String::new()
                    } else {
                        format!(", last verified {}", last.join(", "))
                    },
                    if *signed { ", digests signed" } else { "" }
                ),
            }
        }
        Outcome::Broken(what) => IntegrityView {
            state: "broken",
            text: format!(
                "TRAIL INTEGRITY BROKEN (found {when}): {what}. Nothing after this point can be trusted; tell the security team's lead."
            ),
        },
    }
}

impl Integrity {
    /// Starts verifying `dir` now and every `every`; the task ends when the runtime does.
    pub fn start(
        dir: PathBuf,
        key: Option<PublicKey>,
        every: Duration,
    ) -> (Arc<Integrity>, tokio::task::JoinHandle<()>) {
        let integrity = Arc::new(Integrity {
            last: ArcSwap::from_pointee(Checked {
                outcome: Outcome::NotYet,
                at_unix: unix_now(),
            }),
        });
        let keep = integrity.clone();
        let task = tokio::spawn(async move {
            loop {
                let (dir, key) = (dir.clone(), key.clone());
                let started = std::time::Instant::now();
                let checked = tokio::task::spawn_blocking(move || {
                    let result = verify::verify_dir(&dir, key.as_ref());
                    outcome(&result, key.is_some())
                })
                .await;
                if let Ok(outcome) = checked {
                    if let Outcome::Broken(what) = &outcome {
                        tracing::error!(what = %what, "the audit trail does not verify");
                    }
                    keep.last.store(Arc::new(Checked {
                        outcome,
                        at_unix: unix_now(),
                    }));
                }
                tokio::time::sleep(pause_after(started.elapsed(), every)).await;
            }
        });
        (integrity, task)
    }

    pub fn view(&self) -> IntegrityView {
        let last = self.last.load();
        view(&last.outcome, last.at_unix, unix_now())
    }
}

fn unix_now() -> i64 {
    crate::identity::unix_now() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_banner_says_what_holds_or_where_it_broke() {
        let holds = Outcome::Holds {
            records: 1200,
            last: vec![("gw-1".into(), 1180)],
            signed: true,
        };
        let v = view(&holds, 1000, 1120);
        assert_eq!(v.state, "ok");
        assert_eq!(
            v.text,
            "Trail verified 2 min ago: 1200 records hold, last verified gw-1 #1180, digests signed."
        );
        let v = view(
            &Outcome::Broken("gw-1.x.jsonl line 7 (seq 7): hash mismatch".into()),
            1000,
            1000,
        );
        assert_eq!(v.state, "broken");
        assert!(
            v.text.contains("line 7 (seq 7): hash mismatch"),
            "{}",
            v.text
        );
        assert_eq!(view(&Outcome::NotYet, 0, 0).state, "pending");
    }

    #[test]
    fn a_trail_too_large_to_verify_quickly_is_verified_less_often() {
        let every = Duration::from_secs(300);
        assert_eq!(pause_after(Duration::from_secs(4), every), every);
        assert_eq!(
            pause_after(Duration::from_secs(40), every),
            Duration::from_secs(2000)
        );
    }

    #[test]
    fn a_real_trail_verifies_and_an_edited_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = Vec::new();
        let mut prev = crate::audit::chain::GENESIS;
        for seq in 1..=3 {
            prev = crate::audit::chain::seal(&mut text, seq, br#"{"phase":"decision"}"#, &prev);
        }
        let file = dir
            .path()
            .join(crate::audit::segment::segment_name("gw", 1));
        std::fs::write(&file, &text).unwrap();
        let o = outcome(&verify::verify_dir(dir.path(), None), false);
        assert_eq!(
            o,
            Outcome::Holds {
                records: 3,
                last: vec![("gw".into(), 3)],
                signed: false
            }
        );
        let edited = String::from_utf8(text)
            .unwrap()
            .replacen("decision", "decisiom", 1);
        std::fs::write(&file, edited).unwrap();
        assert!(matches!(
            outcome(&verify::verify_dir(dir.path(), None), false),
            Outcome::Broken(_)
        ));
    }
}
