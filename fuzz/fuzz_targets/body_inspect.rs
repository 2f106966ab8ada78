//! Command and statement body inspection (src/classify/body.rs).
//!
//! Input: a request body; both inspections read it. The properties tie the three readings
//! (the command text rule, the JSON reading, the form reading) together, beyond not panicking:
//! - command text that `command_uses_fs` flags is denied however it is sent: as the JSON
//!   `command`, behind a harmless duplicate key in another case, or as a form field;
//! - a `disposition` is denied exactly when it is not INLINE, alone or behind an INLINE
//!   duplicate in another case.
#![no_main]

use gatehouse::classify::body::{
    command_uses_fs, inspect, is_inline_disposition, BodyVerdict, COMMAND_FS, SQL_EXTERNAL_LINKS,
};
use gatehouse::classify::BodyCheck;
use libfuzzer_sys::fuzz_target;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn denied(verdict: BodyVerdict, action: gatehouse::classify::Action) -> bool {
    matches!(verdict, BodyVerdict::Denied { action: a, .. } if a == action)
}

fuzz_target!(|data: &[u8]| {
    let statement = inspect(BodyCheck::SqlStatement, data);
    let command = inspect(BodyCheck::Command, data);
    assert_eq!(inspect(BodyCheck::None, data), BodyVerdict::Clean);
    if let BodyVerdict::Denied { action, .. } = statement {
        assert_eq!(action, SQL_EXTERNAL_LINKS);
    }
    if let BodyVerdict::Denied { action, .. } = command {
        assert_eq!(action, COMMAND_FS);
    }

    let Some(text) = gatehouse_fuzz::text(data) else {
        return;
    };
    let quoted = json_string(text);

    if command_uses_fs(text) {
        let bodies = [
            format!(r#"{{"language":"python","command":{quoted}}}"#),
            format!(r#"{{"command":"print(1)","Command":{quoted}}}"#),
            format!(
                "language=python&command={}",
                utf8_percent_encode(text, NON_ALPHANUMERIC)
            ),
        ];
        for body in bodies {
            assert!(
                denied(inspect(BodyCheck::Command, body.as_bytes()), COMMAND_FS),
                "{text:?} uses dbutils.fs but {body:?} is not denied"
            );
        }
    }

    let expected = !is_inline_disposition(text);
    for body in [
        format!(r#"{{"statement":"SELECT 1","disposition":{quoted}}}"#),
        format!(r#"{{"disposition":"INLINE","DISPOSITION":{quoted}}}"#),
        format!(r#"{{"Disposition":{quoted},"disposition":"INLINE"}}"#),
    ] {
        let verdict = inspect(BodyCheck::SqlStatement, body.as_bytes());
        assert_eq!(
            denied(verdict, SQL_EXTERNAL_LINKS),
            expected,
            "disposition {text:?}: {body:?} gave {verdict:?}"
        );
    }
});
