//! Bounded inspection of the S3 bucket-configuration bodies the bucket rules depend on:
//! lifecycle rules (the lab's retention may not be lengthened or removed) and versioning
//! (it may not be suspended). Pure: bytes in, verdict out. Anything unusual — a DTD, entity
//! references, an unreadable number — is a `Malformed` verdict, which the policy denies.

use quick_xml::events::Event;
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

/// One `<Rule>` of a lifecycle configuration, as far as retention goes.
#[derive(Default)]
struct Rule {
    enabled: bool,
    expiration_days: Option<u64>,
    expiration_date: bool,
    /// How many `Status`, `Expiration` and `Expiration/Days` elements the rule has: more than
    /// one of any has no single reading (some parsers keep the first, others the last).
    statuses: u32,
    expirations: u32,
    days: u32,
}

/// `PutBucketLifecycleConfiguration`: every rule must be enabled and expire current objects
/// within `retention_days` (an `<Expiration><Days>` no larger than it).
pub fn lifecycle_keeps_retention(body: &[u8], retention_days: u32) -> ConfigVerdict {
    let rules = match parse_lifecycle(body) {
        Ok(r) => r,
        Err(why) => return ConfigVerdict::Malformed(why),
    };
    if rules.is_empty() {
        return ConfigVerdict::Weakens(
            "a lifecycle configuration without rules removes the retention",
        );
    }
    for rule in &rules {
        if !rule.enabled {
            return ConfigVerdict::Weakens("every lifecycle rule must be enabled");
        }
        if rule.expiration_date {
            return ConfigVerdict::Weakens(
                "expiration must be given in days (a fixed date cannot be checked against the retention)",
            );
        }
        match rule.expiration_days {
            Some(d) if d <= u64::from(retention_days) => {}
            Some(_) => {
                return ConfigVerdict::Weakens(
                    "a lifecycle rule keeps objects longer than the bucket's retention",
                )
            }
            None => {
                return ConfigVerdict::Weakens(
                    "every lifecycle rule must expire current objects (Expiration/Days)",
                )
            }
        }
    }
    ConfigVerdict::Keeps
}

fn parse_lifecycle(body: &[u8]) -> Result<Vec<Rule>, &'static str> {
    let mut reader = Reader::from_reader(body);
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut rules = Vec::new();
    let mut current: Option<Rule> = None;
    // The text of the innermost open element, joined across comments as S3 joins it: a value
    // read piece by piece (`1<!---->000`) would be read as its last piece.
    let mut text = String::new();
    loop {
        let (name, empty) = match reader.read_event() {
            Ok(Event::Start(e)) => (e.local_name().as_ref().to_vec(), false),
            Ok(Event::Empty(e)) => (e.local_name().as_ref().to_vec(), true),
            Ok(Event::End(_)) => {
                if let Some(rule) = current.as_mut() {
                    let value = text.trim();
                    match path.last().map(Vec::as_slice) {
                        Some(b"Status") if path.len() == 3 => rule.enabled = value == "Enabled",
                        Some(b"Days") if in_expiration(&path[..path.len() - 1]) => {
                            let days = value
                                .parse::<u64>()
                                .map_err(|_| "Expiration/Days is not a number")?;
                            rule.expiration_days = Some(days);
                        }
                        _ => {}
                    }
                }
                text.clear();
                if path.pop().as_deref() == Some(b"Rule") && path.len() == 1 {
                    rules.extend(current.take());
                }
                continue;
            }
            Ok(Event::Text(t)) => {
                text.push_str(&t.decode().map_err(|_| "the XML text is not UTF-8")?);
                continue;
            }
            Ok(Event::Decl(_)) | Ok(Event::Comment(_)) => continue,
            Ok(Event::Eof) => break,
            // DTDs, entity references, CDATA, processing instructions: not in a lifecycle
            // document S3 clients send, and the usual way to make parsers disagree.
            Ok(_) => return Err("the XML uses constructs a lifecycle configuration never needs"),
            Err(_) => return Err("the XML is not well-formed"),
        };
        if let Some(rule) = current.as_mut() {
            if is_value(&path) {
                return Err("a lifecycle Status or Days has elements inside it");
            }
            match name.as_slice() {
                b"Status" if path.len() == 2 => rule.statuses += 1,
                b"Expiration" if path.len() == 2 => rule.expirations += 1,
                b"Days" if in_expiration(&path) => rule.days += 1,
                b"Date" if in_expiration(&path) => rule.expiration_date = true,
                _ => {}
            }
        }
        if empty {
            continue;
        }
        if name == b"Rule" && path.len() == 1 {
            current = Some(Rule::default());
        }
        path.push(name);
        text.clear();
        if path.len() > 16 {
            return Err("the XML is nested too deeply");
        }
    }
    if !path.is_empty() {
        return Err("the XML ends before its elements close");
    }
    if rules
        .iter()
        .any(|r| r.statuses > 1 || r.expirations > 1 || r.days > 1)
    {
        return Err("a lifecycle rule repeats Status, Expiration or Days");
    }
    Ok(rules)
}

/// Whether `path` is a rule's `Status` or `Expiration/Days`, whose text the check reads.
fn is_value(path: &[Vec<u8>]) -> bool {
    match path.last().map(Vec::as_slice) {
        Some(b"Status") => path.len() == 3,
        Some(b"Days") => in_expiration(&path[..path.len() - 1]),
        _ => false,
    }
}

fn in_expiration(path: &[Vec<u8>]) -> bool {
    path.len() == 3 && path[2] == b"Expiration"
}

/// `PutBucketVersioning`: suspending versioning (or anything but `Enabled`) weakens it. Only
/// the configuration's own `Status` counts, read whole across comments, and only once.
pub fn versioning_keeps(body: &[u8]) -> ConfigVerdict {
    let mut reader = Reader::from_reader(body);
    let mut depth = 0usize;
    let mut in_status = false;
    let mut text = String::new();
    let mut statuses: Vec<String> = Vec::new();
    loop {
        match reader.read_event() {
            Ok(Event::Start(_) | Event::Empty(_)) if in_status => {
                return ConfigVerdict::Malformed("the versioning status has elements inside it")
            }
            Ok(Event::Start(e)) => {
                depth += 1;
                in_status = depth == 2 && e.local_name().as_ref() == b"Status";
                text.clear();
                if depth > 16 {
                    return ConfigVerdict::Malformed("the XML is nested too deeply");
                }
            }
            Ok(Event::Empty(e)) => {
                if depth == 1 && e.local_name().as_ref() == b"Status" {
                    statuses.push(String::new());
                }
            }
            Ok(Event::End(_)) => {
                if in_status {
                    statuses.push(text.trim().to_owned());
                    in_status = false;
                }
                depth = depth.saturating_sub(1);
            }
            Ok(Event::Text(t)) if in_status => match t.decode() {
                Ok(piece) => text.push_str(&piece),
                Err(_) => return ConfigVerdict::Malformed("the XML text is not UTF-8"),
            },
            Ok(Event::Text(_) | Event::Decl(_) | Event::Comment(_)) => {}
            Ok(Event::Eof) => break,
            Ok(_) => {
                return ConfigVerdict::Malformed(
                    "the XML uses constructs a versioning configuration never needs",
                )
            }
            Err(_) => return ConfigVerdict::Malformed("the XML is not well-formed"),
        }
    }
    if depth != 0 {
        return ConfigVerdict::Malformed("the XML ends before its elements close");
    }
    match statuses.as_slice() {
        [status] if status == "Enabled" => ConfigVerdict::Keeps,
        [status] if status == "Suspended" => {
            ConfigVerdict::Weakens("versioning may not be suspended")
        }
        [_, _, ..] => ConfigVerdict::Malformed("the versioning status is repeated"),
        _ => ConfigVerdict::Malformed("the versioning status is missing or unknown"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lifecycle(rules: &str) -> Vec<u8> {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><LifecycleConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{rules}</LifecycleConfiguration>"#
        )
        .into_bytes()
    }

    const R30: &str = "<Rule><ID>a</ID><Filter><Prefix></Prefix></Filter><Status>Enabled</Status><Expiration><Days>30</Days></Expiration></Rule>";

    #[test]
    fn lifecycle_rules_must_expire_within_the_retention() {
        use ConfigVerdict::*;
        assert_eq!(lifecycle_keeps_retention(&lifecycle(R30), 90), Keeps);
        assert_eq!(
            lifecycle_keeps_retention(&lifecycle(&format!("{R30}{R30}")), 30),
            Keeps
        );
        assert!(matches!(
            lifecycle_keeps_retention(&lifecycle(R30), 29),
            Weakens(_)
        ));
        let disabled = R30.replace("Enabled", "Disabled");
        assert!(matches!(
            lifecycle_keeps_retention(&lifecycle(&disabled), 90),
            Weakens(_)
        ));
        let no_expiration = "<Rule><ID>b</ID><Filter/><Status>Enabled</Status><AbortIncompleteMultipartUpload><DaysAfterInitiation>7</DaysAfterInitiation></AbortIncompleteMultipartUpload></Rule>";
        assert!(matches!(
            lifecycle_keeps_retention(&lifecycle(&format!("{R30}{no_expiration}")), 90),
            Weakens(_)
        ));
        let dated = "<Rule><ID>c</ID><Filter/><Status>Enabled</Status><Expiration><Date>2030-01-01T00:00:00Z</Date></Expiration></Rule>";
        assert!(matches!(
            lifecycle_keeps_retention(&lifecycle(dated), 90),
            Weakens(_)
        ));
        // Days elsewhere (a transition) is not an expiration.
        let transition = "<Rule><ID>d</ID><Filter/><Status>Enabled</Status><Transition><Days>5</Days><StorageClass>GLACIER</StorageClass></Transition></Rule>";
        assert!(matches!(
            lifecycle_keeps_retention(&lifecycle(transition), 90),
            Weakens(_)
        ));
        assert!(matches!(
            lifecycle_keeps_retention(&lifecycle(""), 90),
            Weakens(_)
        ));
    }

    #[test]
    fn odd_lifecycle_xml_is_malformed() {
        use ConfigVerdict::*;
        for body in [
            "<LifecycleConfiguration><Rule>".to_owned(),
            "not xml <".to_owned(),
            format!(
                "<!DOCTYPE x [<!ENTITY d \"30\">]>{}",
                String::from_utf8(lifecycle(R30)).unwrap()
            ),
            String::from_utf8(lifecycle(&R30.replace("30", "thirty"))).unwrap(),
            String::from_utf8(lifecycle(&R30.replace("30", "&#51;0"))).unwrap(),
        ] {
            assert!(
                matches!(lifecycle_keeps_retention(body.as_bytes(), 90), Malformed(_)),
                "{body}"
            );
        }
    }

    #[test]
    fn text_is_read_whole_across_comments_as_s3_reads_it() {
        use ConfigVerdict::*;
        // S3 joins an element's text across a comment: this rule keeps objects 1000 days,
        // not 0 (the last piece) or 1 (the first).
        let split = R30.replace("<Days>30</Days>", "<Days>1<!---->000</Days>");
        assert!(matches!(
            lifecycle_keeps_retention(&lifecycle(&split), 30),
            Weakens(_)
        ));
        let joined = R30.replace("<Days>30</Days>", "<Days> 3<!-- x -->0 </Days>");
        assert_eq!(lifecycle_keeps_retention(&lifecycle(&joined), 30), Keeps);
        let status = R30.replace("Enabled", "Enab<!---->led");
        assert_eq!(lifecycle_keeps_retention(&lifecycle(&status), 30), Keeps);
        let status = R30.replace("Enabled", "Disabled<!---->Enabled");
        assert!(matches!(
            lifecycle_keeps_retention(&lifecycle(&status), 30),
            Weakens(_)
        ));
    }

    #[test]
    fn a_repeated_element_has_no_single_reading() {
        use ConfigVerdict::*;
        // Parsers differ on whether the first or the last of a repeated element wins.
        for rule in [
            R30.replace("<Days>30</Days>", "<Days>1000</Days><Days>30</Days>"),
            R30.replace(
                "<Expiration><Days>30</Days></Expiration>",
                "<Expiration><Days>1000</Days></Expiration><Expiration><Days>30</Days></Expiration>",
            ),
            R30.replace(
                "<Status>Enabled</Status>",
                "<Status>Disabled</Status><Status>Enabled</Status>",
            ),
        ] {
            assert!(
                matches!(lifecycle_keeps_retention(&lifecycle(&rule), 90), Malformed(_)),
                "{rule}"
            );
        }
    }

    #[test]
    fn only_the_configurations_own_status_is_the_versioning_status() {
        use ConfigVerdict::*;
        for body in [
            "<VersioningConfiguration><Status>Suspended</Status><X><Status>Enabled</Status></X></VersioningConfiguration>",
            "<VersioningConfiguration><Status>Suspended</Status><Status>Enabled</Status></VersioningConfiguration>",
            "<VersioningConfiguration><Status>Suspen<!---->ded</Status></VersioningConfiguration>",
            "<VersioningConfiguration><X><Status>Enabled</Status></X></VersioningConfiguration>",
            // Found by fuzz/fuzz_targets/lifecycle_xml.rs: a lifecycle rule's Status read as
            // the versioning status.
            "<LifecycleConfiguration><Rule><Status>Enabled</Status>d<Expiration><Days>30</Days></Expiration></Rule></LifecycleConfiguration>",
        ] {
            assert_ne!(versioning_keeps(body.as_bytes()), Keeps, "{body}");
        }
        assert_eq!(
            versioning_keeps(b"<VersioningConfiguration><Status>Ena<!---->bled</Status></VersioningConfiguration>"),
            Keeps
        );
    }

    #[test]
    fn versioning_may_not_be_suspended() {
        use ConfigVerdict::*;
        let doc = |s: &str| {
            format!(
                r#"<VersioningConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Status>{s}</Status></VersioningConfiguration>"#
            )
        };
        assert_eq!(versioning_keeps(doc("Enabled").as_bytes()), Keeps);
        assert!(matches!(
            versioning_keeps(doc("Suspended").as_bytes()),
            Weakens(_)
        ));
        assert!(matches!(
            versioning_keeps(b"<VersioningConfiguration/>"),
            Malformed(_)
        ));
    }
}
