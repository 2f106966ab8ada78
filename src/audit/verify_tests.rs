//! Tampering with a real trail (written by the real writer, signed with a real key) and
//! checking that verification names what was done.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::audit::{chain, AuditSink};
use crate::config::{AuditConfig, Durability};

struct Trail {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    key: PublicKey,
    other_key: crate::audit::digest::Signer,
}

/// Two runs of the writer, small segments: a dozen segments, each attested.
async fn trail() -> Trail {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let key_path = tmp.path().join("signing.key");
    let public = crate::dev::write_ed25519_keypair(&key_path).unwrap();
    let other = tmp.path().join("other.key");
    crate::dev::write_ed25519_keypair(&other).unwrap();
    let config = AuditConfig {
        dir: dir.clone(),
        durability: Durability::Every,
        signing_key: Some(key_path),
        queue_capacity: 16,
        segment_max_bytes: 700,
        segment_max_age: Duration::from_secs(3600),
    };
    for run in 0..2 {
        let (sink, handle) = AuditSink::open(&config, "gw").unwrap();
        for n in 0..8 {
            let body = format!(
                r#"{{"phase":"decision","run":{run},"n":{n},"principal":{{"id":"alice"}}}}"#
            );
            sink.record_decision(body.into_bytes()).await.unwrap();
        }
        drop(sink);
        tokio::task::spawn_blocking(move || handle.join())
            .await
            .unwrap();
    }
    Trail {
        _tmp: tmp,
        dir,
        key: PublicKey::load(&public).unwrap(),
        other_key: crate::audit::digest::Signer::load(&other).unwrap(),
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    segment::list(dir)
        .unwrap()
        .into_iter()
        .map(|s| s.path)
        .collect()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| format!("{l}\n"))
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.concat()).unwrap();
}

/// What an attacker with write access but no key can do: rewrite records and recompute the
/// chain from there to the end, so every record hash and link holds again.
fn rewrite_with_recomputed_chain(dir: &Path, victim: usize, edit: impl Fn(&mut serde_json::Value)) {
    let mut prev: Option<[u8; 32]> = None;
    for (i, path) in segments(dir).iter().enumerate() {
        let mut out = Vec::new();
        for (j, line) in lines(path).iter().enumerate() {
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            if i < victim {
                prev = Some(chain::open(line.as_bytes()).unwrap().hash);
                out.extend_from_slice(line.as_bytes());
                continue;
            }
            if i == victim && j == 0 {
                edit(&mut v);
            }
            let seq = v["seq"].as_u64().unwrap();
            let obj = v.as_object_mut().unwrap();
            for k in ["seq", "prev", "hash"] {
                obj.remove(k);
            }
            let body = serde_json::to_vec(&v).unwrap();
            prev = Some(chain::seal(
                &mut out,
                seq,
                &body,
                &prev.unwrap_or(chain::GENESIS),
            ));
        }
        std::fs::write(path, out).unwrap();
    }
}

fn failure(dir: &Path, key: Option<&PublicKey>) -> Broken {
    verify_dir(dir, key).expect_err("tampering must be caught")
}

#[tokio::test]
async fn an_untouched_trail_verifies_with_every_signature_checked() {
    let t = trail().await;
    let reports = verify_dir(&t.dir, Some(&t.key)).unwrap();
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert!(r.segments >= 6, "{r:?}");
    assert_eq!(r.records, 20); // 2 × (start + 8 + stop)
    assert_eq!((r.first_seq, r.last_seq), (Some(1), Some(20)));
    assert!(r.digests >= r.segments as u64);
    assert_eq!(r.signatures_checked, r.digests);
    assert_eq!(r.open_segment, None);
    assert!(!r.torn_tail);
}

#[cfg(target_os = "linux")]
#[test]
fn a_device_in_a_segments_place_is_named_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let name = crate::audit::segment::segment_name("gw", 1);
    std::os::unix::fs::symlink("/dev/zero", dir.path().join(&name)).unwrap();
    let broken = verify_dir(dir.path(), None).expect_err("refused");
    assert!(broken.what.contains("not a regular file"), "{broken}");
    assert!(broken.path.ends_with(&name));
}

#[tokio::test]
async fn an_edited_field_is_named_by_line_and_seq() {
    let t = trail().await;
    let victim = &segments(&t.dir)[2];
    let mut l = lines(victim);
    l[1] = l[1].replace(
        "\"principal\":{\"id\":\"alice\"}",
        "\"principal\":{\"id\":\"mallory\"}",
    );
    write_lines(victim, &l);
    let b = failure(&t.dir, Some(&t.key));
    assert_eq!((&b.path, b.line), (victim, Some(2)), "{b}");
    assert!(b.what.contains("altered"), "{b}");
}

#[tokio::test]
async fn a_deleted_line_and_swapped_lines_break_the_sequence() {
    let t = trail().await;
    let victim = segments(&t.dir)[1].clone();
    let original = lines(&victim);
    assert!(original.len() >= 2);

    write_lines(&victim, &original[1..]);
    let b = failure(&t.dir, None);
    assert_eq!((&b.path, b.line), (&victim, Some(1)), "{b}");
    assert!(b.what.contains("was expected"), "{b}");

    let mut swapped = original.clone();
    swapped.swap(0, 1);
    write_lines(&victim, &swapped);
    let b = failure(&t.dir, None);
    assert_eq!((&b.path, b.line), (&victim, Some(1)), "{b}");
}

#[tokio::test]
async fn a_deleted_segment_is_named_as_missing() {
    let t = trail().await;
    let victim = segments(&t.dir)[3].clone();
    std::fs::remove_file(&victim).unwrap();
    let b = failure(&t.dir, Some(&t.key));
    assert_eq!(b.path, victim, "{b}");
    assert!(b.what.starts_with("missing segment"), "{b}");
}

#[tokio::test]
async fn a_replaced_segment_with_a_recomputed_chain_is_caught_by_its_signed_digest() {
    let t = trail().await;
    rewrite_with_recomputed_chain(&t.dir, 2, |v| v["principal"]["id"] = "mallory".into());
    // The record chain alone now holds everywhere …
    let mut v = chain::Verifier::default();
    for path in segments(&t.dir) {
        for line in lines(&path) {
            v.next(line.as_bytes()).unwrap();
        }
    }
    // … but the digest signed when the segment closed does not match it.
    let b = failure(&t.dir, Some(&t.key));
    assert_eq!(b.path, segments(&t.dir)[2], "{b}");
    assert!(b.what.contains("does not match digest"), "{b}");
    assert!(b.what.contains("SHA-256"), "{b}");
}

#[tokio::test]
async fn a_digest_log_rewritten_to_match_is_caught_by_its_signature() {
    let t = trail().await;
    rewrite_with_recomputed_chain(&t.dir, 2, |v| v["principal"]["id"] = "mallory".into());
    // The attacker re-attests every segment, unsigned and then with a key of their own.
    let log = t.dir.join(segment::digest_name("gw"));
    let reattest = |signer: Option<&digest::Signer>| {
        let mut prev = digest::NO_PREVIOUS;
        let mut out = Vec::new();
        for line in lines(&log) {
            let mut e = digest::open(line.as_bytes(), None).unwrap().entry;
            if let Some(name) = &e.segment {
                let bytes = std::fs::read(t.dir.join(name)).unwrap();
                let last = String::from_utf8(bytes.clone())
                    .unwrap()
                    .lines()
                    .last()
                    .map(|l| chain::open(l.as_bytes()).unwrap().hash);
                e.segment_sha256 = Some(hex::encode(Sha256::digest(&bytes)));
                e.bytes = bytes.len() as u64;
                e.last_record_hash = last.map(hex::encode);
            }
            e.prev_digest = hex::encode(prev);
            let (sealed, hash) = digest::seal(e, signer);
            prev = hash;
            out.extend(sealed);
        }
        std::fs::write(&log, out).unwrap();
    };
    reattest(None);
    // Without the key the forgery is consistent; with it, it is not.
    verify_dir(&t.dir, None).unwrap();
    let b = failure(&t.dir, Some(&t.key));
    assert_eq!((&b.path, b.line), (&log, Some(1)), "{b}");
    assert!(b.what.contains("not signed"), "{b}");

    reattest(Some(&t.other_key));
    let b = failure(&t.dir, Some(&t.key));
    assert!(b.what.contains("not the key given"), "{b}");
}

#[tokio::test]
async fn truncation_is_caught_except_a_torn_tail_of_the_open_segment() {
    let t = trail().await;
    let all = segments(&t.dir);

    // A closed segment cut short at a line boundary: its digest says otherwise.
    let victim = &all[1];
    let original = lines(victim);
    write_lines(victim, &original[..1]);
    let b = failure(&t.dir, Some(&t.key));
    assert_eq!(&b.path, victim, "{b}");
    assert!(b.what.contains("does not match digest"), "{b}");
    write_lines(victim, &original);

    // A closed segment cut mid-line is not a crash's torn tail: named at that line.
    let mut torn = original.clone();
    let half = torn[0].len() / 2;
    torn[0].truncate(half);
    write_lines(victim, &torn[..1]);
    let b = failure(&t.dir, None);
    assert_eq!((&b.path, b.line), (victim, Some(1)), "{b}");
    write_lines(victim, &original);

    // A crash mid-write: a segment with no digest yet and half a line at its end.
    let log = t.dir.join(segment::digest_name("gw"));
    let digests = lines(&log);
    let last = all.last().unwrap();
    let name = last.file_name().unwrap().to_string_lossy().into_owned();
    let attesting = digests.iter().rposition(|d| d.contains(&name)).unwrap();
    write_lines(&log, &digests[..attesting]);
    let mut tail = lines(last);
    let cut = tail.last().unwrap().len() / 2;
    tail.last_mut().unwrap().truncate(cut);
    write_lines(last, &tail);
    let reports = verify_dir(&t.dir, Some(&t.key)).unwrap();
    assert!(reports[0].torn_tail);
    assert_eq!(
        reports[0].open_segment.as_deref(),
        last.file_name().unwrap().to_str()
    );
}

#[tokio::test]
async fn a_removed_digest_is_named_and_a_key_demands_a_digest_log() {
    let t = trail().await;
    let log = t.dir.join(segment::digest_name("gw"));
    let digests = lines(&log);
    let mut without = digests.clone();
    without.remove(1);
    write_lines(&log, &without);
    let b = failure(&t.dir, None);
    assert_eq!((&b.path, b.line), (&log, Some(2)), "{b}");
    assert!(b.what.contains("digest_seq"), "{b}");

    std::fs::remove_file(&log).unwrap();
    verify_dir(&t.dir, None).unwrap();
    let b = failure(&t.dir, Some(&t.key));
    assert!(b.what.contains("no digest log"), "{b}");
}
