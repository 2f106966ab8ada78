//! Bounded inspection of the S3 bodies the bucket rules depend on: the lifecycle (every
//! object of a lab bucket must expire within its retention), versioning (it may not be
//! suspended) and the keys a `DeleteObjects` names. Pure: bytes in, verdict out.
//!
//! The gateway and S3 must read a body the same way, or a configuration the gateway passes
//! could mean something else to S3. So the reader accepts only the plain XML the SDKs and
//! the AWS CLI produce, against the operation's schema, and calls anything else `Malformed`
//! (which the policy denies): a DTD, entity or character references, CDATA, comments or
//! processing instructions (each can split or hide a value: `<Days>3<!---->0</Days>` is 30 to
//! S3 and 3 or 0 to a naive reader), attributes other than the S3 namespace on the root,
//! namespace prefixes (`<s3:Days>`, which a namespace-aware parser may place elsewhere), an
//! element the schema does not have, a single-valued element given twice (first or last
//! wins, depending on the parser), text beside child elements, and numbers that are not
//! plain positive decimals. Text is compared as sent, spaces included (`<Status> Enabled`
//! is not enabled, `<Prefix> </Prefix>` is a prefix).

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

/// What a bucket-configuration body says, as far as the rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigVerdict {
    /// Keeps the bucket's guarantees.
    Keeps,
    /// Weakens them; the reason is for the denial message.
    Weakens(&'static str),
    /// Cannot be read with confidence.
    Malformed(&'static str),
}

/// The only namespace S3 configuration documents use.
const S3_NAMESPACE: &[u8] = b"http://s3.amazonaws.com/doc/2006-03-01/";

/// More elements than 1,000 rules (S3's limit) could need: the rest is not read.
const MAX_ELEMENTS: usize = 32 * 1024;

/// A document's schema: for each element that has children, the children it may have and
/// whether each may repeat. An element not listed as a parent holds text only.
type Schema = &'static [(&'static str, &'static [(&'static str, bool)])];

/// `PutBucketLifecycleConfiguration` (`LifecycleConfiguration`, S3 API reference).
const LIFECYCLE: Schema = &[
    ("LifecycleConfiguration", &[("Rule", true)]),
    (
        "Rule",
        &[
            ("ID", false),
            ("Prefix", false),
            ("Filter", false),
            ("Status", false),
            ("Expiration", false),
            ("Transition", true),
            ("NoncurrentVersionTransition", true),
            ("NoncurrentVersionExpiration", false),
            ("AbortIncompleteMultipartUpload", false),
        ],
    ),
    (
        "Filter",
        &[
            ("Prefix", false),
            ("Tag", false),
            ("ObjectSizeGreaterThan", false),
            ("ObjectSizeLessThan", false),
            ("And", false),
        ],
    ),
    (
        "And",
        &[
            ("Prefix", false),
            ("Tag", true),
            ("ObjectSizeGreaterThan", false),
            ("ObjectSizeLessThan", false),
        ],
    ),
    ("Tag", &[("Key", false), ("Value", false)]),
    (
        "Expiration",
        &[
            ("Days", false),
            ("Date", false),
            ("ExpiredObjectDeleteMarker", false),
        ],
    ),
    (
        "Transition",
        &[("Days", false), ("Date", false), ("StorageClass", false)],
    ),
    (
        "NoncurrentVersionTransition",
        &[
            ("NoncurrentDays", false),
            ("NewerNoncurrentVersions", false),
            ("StorageClass", false),
        ],
    ),
    (
        "NoncurrentVersionExpiration",
        &[
            ("NoncurrentDays", false),
            ("NewerNoncurrentVersions", false),
        ],
    ),
    (
        "AbortIncompleteMultipartUpload",
        &[("DaysAfterInitiation", false)],
    ),
];

/// `PutBucketVersioning` (`VersioningConfiguration`).
const VERSIONING: Schema = &[(
    "VersioningConfiguration",
    &[("Status", false), ("MfaDelete", false)],
)];

/// `DeleteObjects` (`Delete`, S3 API reference): at most 1,000 objects.
const DELETE: Schema = &[
    ("Delete", &[("Object", true), ("Quiet", false)]),
    (
        "Object",
        &[
            ("Key", false),
            ("VersionId", false),
            ("ETag", false),
            ("LastModifiedTime", false),
            ("Size", false),
        ],
    ),
];

/// S3 refuses a `DeleteObjects` naming more objects than this.
pub const MAX_DELETE_KEYS: usize = 1000;

/// One element of a configuration document: its local name, and its text or its children.
#[derive(Debug, Default)]
struct Element {
    name: &'static str,
    text: String,
    children: Vec<Element>,
}

impl Element {
    fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    fn has(&self, name: &str) -> bool {
        self.child(name).is_some()
    }
}

/// Reads `body` as a document of `schema` whose root is `root`; `Err` with the reason when it
/// is anything but plain XML of that shape.
fn parse(body: &[u8], schema: Schema, root: &'static str) -> Result<Element, &'static str> {
    parse_with(body, schema, root, false)
}

/// `parse`, and with `references` the five predefined entities and character references are
/// read in text (keys are text the SDKs escape: `a&amp;b` is the key `a&b`, as S3 reads it).
fn parse_with(
    body: &[u8],
    schema: Schema,
    root: &'static str,
    references: bool,
) -> Result<Element, &'static str> {
    let mut reader = Reader::from_reader(body);
    let mut open: Vec<Element> = Vec::new();
    let mut done: Option<Element> = None;
    let mut elements = 0usize;
    loop {
        let (start, empty) = match reader.read_event() {
            Ok(Event::Start(e)) => (e, false),
            Ok(Event::Empty(e)) => (e, true),
            Ok(Event::End(_)) => {
                let closed = open.pop().ok_or("the XML is not well-formed")?;
                match open.last_mut() {
                    Some(parent) => parent.children.push(closed),
                    None => done = Some(closed),
                }
                continue;
            }
            Ok(Event::Text(t)) => {
                let text = t.decode().map_err(|_| "the XML text is not UTF-8")?;
                // An XML parser turns a raw CR (CRLF) into LF; S3's might or might not here,
                // so a key must send it as a reference.
                if text.contains('\r') {
                    return Err("the XML's text has a raw carriage return");
                }
                // Not XML 1.0 characters: a parser may refuse or drop them.
                if text.chars().any(|c| c.is_control() && c != '\t' && c != '\n') {
                    return Err("the XML's text has a control character");
                }
                match open.last_mut() {
                    // Kept whole, spaces included: `<Prefix> </Prefix>` is not an empty prefix.
                    Some(e) if !is_parent(schema, e.name) => e.text.push_str(&text),
                    // Indentation between elements.
                    _ if text.trim().is_empty() => {}
                    _ => return Err("the XML has text outside the elements that hold text"),
                }
                continue;
            }
            Ok(Event::GeneralRef(r)) if references => {
                let c = match r.resolve_char_ref() {
                    Ok(Some(c)) => c,
                    Ok(None) => match &*r {
                        b"amp" => '&',
                        b"lt" => '<',
                        b"gt" => '>',
                        b"quot" => '"',
                        b"apos" => '\'',
                        _ => return Err("the XML refers to an entity S3 does not define"),
                    },
                    Err(_) => return Err("the XML has an invalid character reference"),
                };
                if c.is_control() {
                    return Err("the XML's text has a control character");
                }
                match open.last_mut() {
                    Some(e) if !is_parent(schema, e.name) => e.text.push(c),
                    _ => return Err("the XML has text outside the elements that hold text"),
                }
                continue;
            }
            Ok(Event::Decl(_)) if open.is_empty() && done.is_none() && elements == 0 => continue,
            Ok(Event::Eof) => break,
            Ok(_) => {
                return Err(
                    "the XML uses constructs an S3 configuration never needs (DTD, entity references, CDATA, comments)",
                )
            }
            Err(_) => return Err("the XML is not well-formed"),
        };
        elements += 1;
        if elements > MAX_ELEMENTS {
            return Err("the XML has too many elements");
        }
        let element = match open.last() {
            None if done.is_some() => return Err("the XML has more than one root element"),
            None => {
                check_attributes(&start, true)?;
                if start.name().as_ref() != root.as_bytes() {
                    return Err("the XML's root element is not the configuration's");
                }
                Element {
                    name: root,
                    ..Element::default()
                }
            }
            Some(parent) => {
                check_attributes(&start, false)?;
                let name = child_of(schema, parent, start.name().as_ref())?;
                Element {
                    name,
                    ..Element::default()
                }
            }
        };
        if empty {
            match open.last_mut() {
                Some(parent) => parent.children.push(element),
                None => done = Some(element),
            }
        } else {
            open.push(element);
        }
    }
    if !open.is_empty() {
        return Err("the XML ends before its elements close");
    }
    done.ok_or("the XML has no root element")
}

fn is_parent(schema: Schema, name: &str) -> bool {
    schema.iter().any(|(p, _)| *p == name)
}

/// The schema's name for `name` as a child of `parent`, if it may be one there (again).
fn child_of(schema: Schema, parent: &Element, name: &[u8]) -> Result<&'static str, &'static str> {
    let children = schema
        .iter()
        .find(|(p, _)| *p == parent.name)
        .map(|(_, c)| *c)
        .ok_or("an element that holds text has a child element")?;
    // A prefixed name (`s3:Days`) matches nothing here: its bytes hold the colon.
    let &(name, repeats) = children
        .iter()
        .find(|(c, _)| c.as_bytes() == name)
        .ok_or("the XML has an element the S3 configuration does not")?;
    if !repeats && parent.has(name) {
        return Err("an element that S3 reads once is given more than once");
    }
    Ok(name)
}

/// No attributes, but the S3 namespace as the root's default namespace.
fn check_attributes(start: &BytesStart<'_>, root: bool) -> Result<(), &'static str> {
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|_| "the XML has a malformed attribute")?;
        let namespace =
            root && attribute.key.as_ref() == b"xmlns" && attribute.value.as_ref() == S3_NAMESPACE;
        if !namespace {
            return Err("the XML has attributes an S3 configuration never has");
        }
    }
    Ok(())
}

/// A count of days as S3 takes it: a plain positive decimal (no sign, no spaces), at most
/// a billion.
fn days(element: &Element) -> Result<u32, &'static str> {
    let text = element.text.as_str();
    let plain = !text.is_empty() && text.len() <= 10 && text.bytes().all(|b| b.is_ascii_digit());
    match text.parse::<u32>() {
        Ok(d) if plain && (1..=1_000_000_000).contains(&d) => Ok(d),
        _ => Err("a number of days is not a positive whole number"),
    }
}

/// What one lifecycle rule does for the retention.
struct RuleReading {
    /// Enabled and applying to every object of the bucket.
    everything: bool,
    /// `Expiration/Days`: current objects expire after that many days.
    current_days: Option<u32>,
    /// `NoncurrentVersionExpiration/NoncurrentDays`, with no versions kept beyond them.
    noncurrent_days: Option<u32>,
}

fn read_rule(rule: &Element) -> Result<RuleReading, &'static str> {
    let enabled = rule.child("Status").is_some_and(|s| s.text == "Enabled");
    let unfiltered = match (rule.child("Prefix"), rule.child("Filter")) {
        (Some(_), Some(_)) => return Err("a lifecycle rule has both a Prefix and a Filter"),
        (Some(prefix), None) => prefix.text.is_empty(),
        (None, Some(filter)) => unfiltered(filter)?,
        (None, None) => true,
    };
    let current_days = match rule.child("Expiration") {
        None => None,
        Some(e) => match (e.child("Days"), e.has("Date"), e.has("ExpiredObjectDeleteMarker")) {
            (Some(d), false, false) => Some(days(d)?),
            // By date: cannot be checked against a retention counted from each object's
            // creation. A delete-marker clean-up alone expires nothing.
            (None, true, false) | (None, false, true) => None,
            _ => return Err("a lifecycle Expiration must give exactly one of Days, Date and ExpiredObjectDeleteMarker"),
        },
    };
    let noncurrent_days = match rule.child("NoncurrentVersionExpiration") {
        None => None,
        Some(e) => {
            let d = days(
                e.child("NoncurrentDays")
                    .ok_or("a NoncurrentVersionExpiration has no NoncurrentDays")?,
            )?;
            // NewerNoncurrentVersions keeps that many versions however old they are.
            (!e.has("NewerNoncurrentVersions")).then_some(d)
        }
    };
    Ok(RuleReading {
        everything: enabled && unfiltered,
        current_days,
        noncurrent_days,
    })
}

/// Whether a `Filter` selects every object: empty, or an empty prefix alone.
fn unfiltered(filter: &Element) -> Result<bool, &'static str> {
    match filter.children.as_slice() {
        [] => Ok(true),
        [only] if only.name == "Prefix" => Ok(only.text.is_empty()),
        [only] if only.name == "And" && only.children.is_empty() => {
            Err("a lifecycle Filter has an And with no conditions")
        }
        [_] => Ok(false),
        _ => Err("a lifecycle Filter has more than one condition outside an And"),
    }
}

/// `PutBucketLifecycleConfiguration` on a lab bucket: every object must expire within
/// `retention_days`. Some enabled rule without a filter (or with an empty prefix and nothing
/// else) must expire current objects within it (`Expiration/Days`), and some such rule
/// noncurrent versions too (`NoncurrentVersionExpiration/NoncurrentDays`, without
/// `NewerNoncurrentVersions`). Rules with filters may come in addition; they cover only part
/// of the bucket, so they count for nothing.
///
/// Noncurrent versions are required always: whether the bucket is versioned is S3's to say
/// and the gateway does not ask (it never sends requests of its own). Lab buckets may not
/// have versioning suspended once enabled, and a version expiration on an unversioned bucket
/// is harmless, so demanding it costs a lab nothing and holds whatever the bucket's state.
pub fn lifecycle_keeps_retention(body: &[u8], retention_days: u32) -> ConfigVerdict {
    let root = match parse(body, LIFECYCLE, "LifecycleConfiguration") {
        Ok(r) => r,
        Err(why) => return ConfigVerdict::Malformed(why),
    };
    let mut current = false;
    let mut noncurrent = false;
    for rule in &root.children {
        let reading = match read_rule(rule) {
            Ok(r) => r,
            Err(why) => return ConfigVerdict::Malformed(why),
        };
        let within = |d: Option<u32>| d.is_some_and(|d| d <= retention_days);
        current |= reading.everything && within(reading.current_days);
        noncurrent |= reading.everything && within(reading.noncurrent_days);
    }
    if root.children.is_empty() {
        ConfigVerdict::Weakens("a lifecycle configuration without rules removes the retention")
    } else if !current {
        ConfigVerdict::Weakens(
            "no enabled rule without a filter expires current objects within the bucket's retention (Expiration/Days; a date cannot be checked against it)",
        )
    } else if !noncurrent {
        ConfigVerdict::Weakens(
            "no enabled rule without a filter expires noncurrent versions within the bucket's retention (NoncurrentVersionExpiration/NoncurrentDays, without NewerNoncurrentVersions): overwritten and deleted objects would be kept",
        )
    } else {
        ConfigVerdict::Keeps
    }
}

/// `PutBucketVersioning`: suspending versioning (or anything but `Enabled`) weakens it.
pub fn versioning_keeps(body: &[u8]) -> ConfigVerdict {
    let root = match parse(body, VERSIONING, "VersioningConfiguration") {
        Ok(r) => r,
        Err(why) => return ConfigVerdict::Malformed(why),
    };
    match root.child("Status").map(|s| s.text.as_str()) {
        Some("Enabled") => ConfigVerdict::Keeps,
        Some("Suspended") => ConfigVerdict::Weakens("versioning may not be suspended"),
        _ => ConfigVerdict::Malformed("the versioning status is missing or unknown"),
    }
}

/// The keys a `DeleteObjects` body names, in order, read as S3 reads them: the same strict
/// XML as the configurations (no DTD, CDATA, comments, processing instructions, unknown or
/// repeated elements, prefixes or attributes but the S3 namespace on the root), with the
/// predefined entities and character references resolved in text. Every `Object` has exactly
/// one non-empty `Key`; between 1 and 1,000 objects. `Err`: the body cannot be read with
/// confidence, and the request must be refused.
pub fn delete_keys(body: &[u8]) -> Result<Vec<String>, &'static str> {
    let root = parse_with(body, DELETE, "Delete", true)?;
    let mut keys = Vec::new();
    for object in root.children.iter().filter(|c| c.name == "Object") {
        let key = object.child("Key").ok_or("a deleted object names no key")?;
        if key.text.is_empty() {
            return Err("a deleted object's key is empty");
        }
        keys.push(key.text.clone());
        if keys.len() > MAX_DELETE_KEYS {
            return Err("the request deletes more than 1000 objects");
        }
    }
    if keys.is_empty() {
        return Err("the request deletes no object");
    }
    Ok(keys)
}

#[cfg(test)]
#[path = "s3_body_tests.rs"]
mod tests;
