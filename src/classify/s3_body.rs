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
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                let name = e.local_name().as_ref().to_vec();
                if name == b"Rule" && path.len() == 1 {
                    current = Some(Rule::default());
                }
                if name == b"Date" && in_expiration(&path) {
                    if let Some(r) = current.as_mut() {
                        r.expiration_date = true;
                    }
                }
                path.push(name);
                if path.len() > 16 {
                    return Err("the XML is nested too deeply");
                }
            }
            Ok(Event::End(_)) => {
                if path.pop().as_deref() == Some(b"Rule") && path.len() == 1 {
                    rules.extend(current.take());
                }
            }
            Ok(Event::Empty(_)) => {}
            Ok(Event::Text(t)) => {
                let text = t.decode().map_err(|_| "the XML text is not UTF-8")?;
                let text = text.trim();
                let Some(rule) = current.as_mut() else {
                    continue;
                };
                match path.last().map(Vec::as_slice) {
                    Some(b"Status") if path.len() == 3 => rule.enabled = text == "Enabled",
                    Some(b"Days") if in_expiration(&path[..path.len() - 1]) => {
                        let days = text
                            .parse::<u64>()
                            .map_err(|_| "Expiration/Days is not a number")?;
                        rule.expiration_days = Some(days);
                    }
                    _ => {}
                }
            }
            Ok(Event::Decl(_)) | Ok(Event::Comment(_)) => {}
            Ok(Event::Eof) => break,
            // DTDs, entity references, CDATA, processing instructions: not in a lifecycle
            // document S3 clients send, and the usual way to make parsers disagree.
            Ok(_) => return Err("the XML uses constructs a lifecycle configuration never needs"),
            Err(_) => return Err("the XML is not well-formed"),
        }
    }
    if !path.is_empty() {
        return Err("the XML ends before its elements close");
    }
    Ok(rules)
}

fn in_expiration(path: &[Vec<u8>]) -> bool {
    path.len() == 3 && path[2] == b"Expiration"
}

/// `PutBucketVersioning`: suspending versioning (or anything but `Enabled`) weakens it.
pub fn versioning_keeps(body: &[u8]) -> ConfigVerdict {
    let mut reader = Reader::from_reader(body);
    let mut in_status = false;
    let mut status: Option<String> = None;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => in_status = e.local_name().as_ref() == b"Status",
            Ok(Event::End(_)) => in_status = false,
            Ok(Event::Text(t)) if in_status => match t.decode() {
                Ok(text) => status = Some(text.trim().to_owned()),
                Err(_) => return ConfigVerdict::Malformed("the XML text is not UTF-8"),
            },
            Ok(Event::Text(_) | Event::Empty(_) | Event::Decl(_) | Event::Comment(_)) => {}
            Ok(Event::Eof) => break,
            Ok(_) => {
                return ConfigVerdict::Malformed(
                    "the XML uses constructs a versioning configuration never needs",
                )
            }
            Err(_) => return ConfigVerdict::Malformed("the XML is not well-formed"),
        }
    }
    match status.as_deref() {
        Some("Enabled") => ConfigVerdict::Keeps,
        Some("Suspended") => ConfigVerdict::Weakens("versioning may not be suspended"),
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
