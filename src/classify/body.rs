//! A bounded request body → whether it turns an inspected request into a blocked one.
//!
//! Only two catalog rows are decided by their body: SQL statements asking for
//! `EXTERNAL_LINKS`, and command execution reaching DBFS through `dbutils.fs` or `%fs`. The
//! caller bounds the body and denies when it is too large; this module never sees a stream and
//! never allows a body it cannot parse (that is `Malformed`, which the caller denies).
//!
//! The command check is text matching over arbitrary code. It is defence in depth that catches
//! the ordinary and the lightly disguised spellings; code can always build the same call in ways
//! no text check will see, so the boundary is the policy on `Category::Execute`, not this.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

use super::text::{eq_folded, fold_char, form_pairs};
use super::{Action, BodyCheck, Category};

/// `POST …/sql/statements` with `disposition: EXTERNAL_LINKS` (or any value but `INLINE`):
/// presigned links to results.
pub const SQL_EXTERNAL_LINKS: Action =
    Action::new("sql.statements.external_links", Category::Download);
/// `commands/execute` whose code reaches DBFS through `dbutils.fs` or `%fs`.
pub const COMMAND_FS: Action = Action::new("commands.execute_fs", Category::Download);

/// What the body says about the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyVerdict {
    /// Nothing in the body changes the classification.
    Clean,
    /// The body makes this request a blocked action.
    Denied { action: Action, why: &'static str },
    /// The body cannot be read the way the upstream would read it; deny.
    Malformed(&'static str),
}

/// Inspects `body` for the rule `check` names.
pub fn inspect(check: BodyCheck, body: &[u8]) -> BodyVerdict {
    match check {
        BodyCheck::None => BodyVerdict::Clean,
        BodyCheck::SqlStatement => inspect_statement(body),
        BodyCheck::Command => inspect_command(body),
    }
}

/// Whether command text reaches DBFS through `dbutils.fs` or the `%fs` magic.
///
/// Case, whitespace and line continuations are ignored, full-width and mathematical letters
/// (which Python folds to ASCII in identifiers) are folded, and the indirect spellings
/// `getattr(dbutils, "fs")`, `dbutils.__getattribute__('fs')` and
/// `run_line_magic("fs", …)` are caught by looking for a quoted `fs` next to `dbutils` or
/// `magic` anywhere in the text. False positives deny a command; that is the safe side.
pub fn command_uses_fs(text: &str) -> bool {
    if text.split(['\n', '\r']).any(is_fs_magic_line) {
        return true;
    }
    let compact = compact_code(text);
    if compact.contains("dbutils.fs") {
        return true;
    }
    let names_fs = compact.contains("\"fs\"")
        || compact.contains("'fs'")
        || compact.contains(".fs.")
        || compact.contains(".fs(");
    names_fs && (compact.contains("dbutils") || compact.contains("magic"))
}

fn inspect_statement(body: &[u8]) -> BodyVerdict {
    let dispositions = match fields_named(body, "disposition") {
        Ok(found) => found,
        Err(why) => return BodyVerdict::Malformed(why),
    };
    // Every occurrence counts: parsers differ on whether the first or the last duplicate key
    // wins, so any one asking for links decides.
    for value in dispositions {
        match value {
            Value::String(s) if !is_inline_disposition(&s) => {
                return BodyVerdict::Denied {
                    action: SQL_EXTERNAL_LINKS,
                    why: "only disposition INLINE is allowed: EXTERNAL_LINKS returns presigned \
                          links to query results",
                };
            }
            Value::String(_) | Value::Null => {}
            _ => return BodyVerdict::Malformed("`disposition` is not a string"),
        }
    }
    BodyVerdict::Clean
}

/// Whether a `disposition` value keeps results inline. Anything else counts as asking for
/// links: `EXTERNAL_LINKS` today, and any hybrid the API adds later (an
/// `INLINE_OR_EXTERNAL_LINKS` would hand out links for large results).
pub fn is_inline_disposition(value: &str) -> bool {
    eq_folded(value.trim(), "inline")
}

fn inspect_command(body: &[u8]) -> BodyVerdict {
    let mut commands: Vec<Cow<'_, str>> = Vec::new();
    let looks_json = body.trim_ascii_start().first() == Some(&b'{');
    if looks_json {
        match fields_named(body, "command") {
            Ok(values) => {
                for value in values {
                    match value {
                        Value::String(s) => commands.push(Cow::Owned(s)),
                        Value::Null => {}
                        _ => return BodyVerdict::Malformed("`command` is not a string"),
                    }
                }
            }
            Err(why) => return BodyVerdict::Malformed(why),
        }
    }
    // The upstream picks JSON or form by `Content-Type`, which this function does not see, so
    // a JSON body is also read as a form: a `&command=` smuggled inside a JSON string must not
    // pass because the JSON reading found nothing.
    commands.extend(
        form_pairs(body)
            .filter(|(name, _)| eq_folded(name, "command"))
            .map(|(_, value)| value),
    );
    if commands.is_empty() {
        return BodyVerdict::Malformed("the body has no `command`");
    }
    if commands.iter().any(|text| command_uses_fs(text)) {
        return BodyVerdict::Denied {
            action: COMMAND_FS,
            why: "the command reads DBFS through dbutils.fs or %fs",
        };
    }
    BodyVerdict::Clean
}

/// The values of every top-level key that folds to `name`, duplicates included. A map would
/// keep one duplicate and hide the other, so the object is walked pair by pair.
fn fields_named(body: &[u8], name: &'static str) -> Result<Vec<Value>, &'static str> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let values = FieldsNamed(name)
        .deserialize(&mut de)
        .map_err(|_| "the body is not a JSON object")?;
    de.end()
        .map_err(|_| "the body has data after its JSON object")?;
    Ok(values)
}

struct FieldsNamed(&'static str);

impl<'de> DeserializeSeed<'de> for FieldsNamed {
    type Value = Vec<Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<Value>, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FieldsNamed {
    type Value = Vec<Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Value>, A::Error> {
        let mut found = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if eq_folded(&key, self.0) {
                found.push(map.next_value::<Value>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// A line that starts (after indentation) with the `%fs` magic, or `%%fs`.
fn is_fs_magic_line(line: &str) -> bool {
    let Some(rest) = line.trim_start().strip_prefix('%') else {
        return false;
    };
    let rest = rest.strip_prefix('%').unwrap_or(rest);
    let mut chars = rest.chars();
    let word = (
        chars.next().and_then(fold_char),
        chars.next().and_then(fold_char),
    );
    word == (Some(b'f'), Some(b's')) && chars.next().is_none_or(char::is_whitespace)
}

/// `text` lowercased and folded to ASCII where Python would, with whitespace and backslashes
/// (line continuations) removed, so `dbutils . fs` and `dbutils\\\n.fs` read as `dbutils.fs`.
fn compact_code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_whitespace() || c == '\\' {
            continue;
        }
        match fold_identifier_char(c) {
            Some(b) => out.push(char::from(b)),
            None => out.push(c),
        }
    }
    out
}

/// Python applies NFKC to identifiers, so `ｄｂｕｔｉｌｓ` and mathematical bold letters name
/// `dbutils`. The full-width and mathematical alphanumeric blocks cover the practical cases.
fn fold_identifier_char(c: char) -> Option<u8> {
    if let Some(b) = fold_char(c) {
        return Some(b);
    }
    let code = u32::from(c);
    let ascii = match code {
        0xFF01..=0xFF5E => code - 0xFEE0,
        0x1D400..=0x1D6A3 => {
            let index = (code - 0x1D400) % 52;
            if index < 26 {
                u32::from(b'a') + index
            } else {
                u32::from(b'a') + index - 26
            }
        }
        0x1D7CE..=0x1D7FF => u32::from(b'0') + (code - 0x1D7CE) % 10,
        _ => return None,
    };
    u8::try_from(ascii).ok().map(|b| b.to_ascii_lowercase())
}

#[cfg(test)]
mod tests;
