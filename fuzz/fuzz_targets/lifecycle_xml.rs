//! The bucket-configuration readers (src/classify/s3_body.rs): lifecycle rules against the
//! lab bucket's retention, and the versioning status.
//!
//! Input: the XML body of PutBucketLifecycleConfiguration or PutBucketVersioning.
//!
//! The gateway reads these with a streaming reader; S3 reads them with a full XML parser
//! that joins an element's text across comments and CDATA. Properties, beyond not panicking:
//! - a lifecycle the gateway accepts (`Keeps`) for a retention keeps it for every longer one;
//! - a lifecycle the gateway accepts, read by a complete XML parser (roxmltree) the way S3
//!   reads it, has rules, every one of them enabled and expiring objects in days within the
//!   retention, under any reading of a repeated element (first or last wins);
//! - a versioning status the gateway accepts reads `Enabled` in the same way.
//!
//! Documents the reference parser refuses (S3 would answer MalformedXML) are not compared.
#![no_main]

use gatehouse::classify::s3_body::{lifecycle_keeps_retention, versioning_keeps, ConfigVerdict};
use libfuzzer_sys::fuzz_target;
use roxmltree::{Document, Node};

const RETENTION: u32 = 30;

fn children<'a, 'i>(node: Node<'a, 'i>, name: &'a str) -> impl Iterator<Item = Node<'a, 'i>> {
    node.children()
        .filter(move |n| n.is_element() && n.tag_name().name() == name)
}

/// An element's own text, joined across comments and CDATA, trimmed.
fn text(node: Node<'_, '_>) -> String {
    let joined: String = node
        .children()
        .filter(Node::is_text)
        .filter_map(|n| n.text())
        .collect();
    joined.trim().to_owned()
}

/// Whether S3, under any reading of repeated elements, keeps objects at most `retention`
/// days by this lifecycle configuration.
fn lifecycle_within(doc: &Document<'_>, retention: u32) -> bool {
    let rules: Vec<_> = children(doc.root_element(), "Rule").collect();
    !rules.is_empty()
        && rules.iter().all(|rule| {
            let statuses: Vec<_> = children(*rule, "Status").map(text).collect();
            let expirations: Vec<_> = children(*rule, "Expiration").collect();
            let days: Vec<_> = expirations
                .iter()
                .flat_map(|e| children(*e, "Days"))
                .map(text)
                .collect();
            let dated = expirations
                .iter()
                .any(|e| children(*e, "Date").next().is_some());
            !statuses.is_empty()
                && statuses.iter().all(|s| s == "Enabled")
                && !dated
                && !days.is_empty()
                && days
                    .iter()
                    .all(|d| d.parse::<u64>().is_ok_and(|d| d <= u64::from(retention)))
        })
}

fn versioning_enabled(doc: &Document<'_>) -> bool {
    let statuses: Vec<_> = children(doc.root_element(), "Status").map(text).collect();
    !statuses.is_empty() && statuses.iter().all(|s| s == "Enabled")
}

fuzz_target!(|data: &[u8]| {
    let keeps = lifecycle_keeps_retention(data, RETENTION) == ConfigVerdict::Keeps;
    if keeps {
        for longer in [RETENTION + 1, 365, u32::MAX] {
            assert_eq!(
                lifecycle_keeps_retention(data, longer),
                ConfigVerdict::Keeps,
                "kept within {RETENTION} days but not within {longer}"
            );
        }
    }
    let versioning = versioning_keeps(data) == ConfigVerdict::Keeps;

    let Ok(xml) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(doc) = Document::parse(xml) else {
        return;
    };
    if keeps {
        assert!(
            lifecycle_within(&doc, RETENTION),
            "accepted, but S3 may keep objects longer than {RETENTION} days: {xml:?}"
        );
    }
    if versioning {
        assert!(
            versioning_enabled(&doc),
            "accepted, but S3 may not read versioning as Enabled: {xml:?}"
        );
    }
});
