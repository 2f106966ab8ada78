//! The bucket-configuration readers (src/classify/s3_body.rs): lifecycle rules against the
//! lab bucket's retention, and the versioning status.
//!
//! Input: the XML body of PutBucketLifecycleConfiguration or PutBucketVersioning.
//!
//! The gateway reads these strictly (anything S3 could read differently is Malformed); S3
//! reads them with a full XML parser that joins an element's text across comments and CDATA.
//! Properties, beyond not panicking:
//! - a lifecycle the gateway accepts (`Keeps`) for a retention keeps it for every longer one;
//! - a lifecycle the gateway accepts, read by a complete XML parser (roxmltree) the way S3
//!   reads it, under any reading of a repeated element (first or last wins), has an enabled
//!   rule without a filter that expires current objects within the retention, and one that
//!   expires noncurrent versions within it: every object of the bucket goes in time;
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

/// Whether a rule applies to every object: no filter, or one that narrows nothing (an empty
/// prefix and no tag or size condition), and no legacy prefix but an empty one.
fn unfiltered(rule: Node<'_, '_>) -> bool {
    let prefix_empty = |node: Node<'_, '_>| children(node, "Prefix").all(|p| text(p).is_empty());
    prefix_empty(rule)
        && children(rule, "Filter").all(|filter| {
            prefix_empty(filter)
                && filter
                    .children()
                    .filter(Node::is_element)
                    .all(|c| c.tag_name().name() == "Prefix")
        })
}

/// Every value of `path` under `node` (any reading of repeats), as plain decimals within
/// `retention`; false when there is none.
fn all_within(node: Node<'_, '_>, path: &[&str], retention: u32) -> bool {
    let mut nodes = vec![node];
    for name in path {
        nodes = nodes.iter().flat_map(|n| children(*n, name)).collect();
    }
    !nodes.is_empty()
        && nodes.iter().all(|n| {
            text(*n)
                .parse::<u64>()
                .is_ok_and(|d| d <= u64::from(retention))
        })
}

/// Whether S3, under any reading of repeated elements, deletes every object (current and
/// noncurrent) within `retention` days by this lifecycle configuration.
fn lifecycle_within(doc: &Document<'_>, retention: u32) -> bool {
    let covering: Vec<_> = children(doc.root_element(), "Rule")
        .filter(|rule| {
            let statuses: Vec<_> = children(*rule, "Status").map(text).collect();
            !statuses.is_empty() && statuses.iter().all(|s| s == "Enabled") && unfiltered(*rule)
        })
        .collect();
    covering
        .iter()
        .any(|rule| all_within(*rule, &["Expiration", "Days"], retention))
        && covering.iter().any(|rule| {
            all_within(
                *rule,
                &["NoncurrentVersionExpiration", "NoncurrentDays"],
                retention,
            ) && children(*rule, "NoncurrentVersionExpiration")
                .all(|e| children(e, "NewerNoncurrentVersions").next().is_none())
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
