//! The Databricks path normaliser and classifier (src/classify/normalize.rs, databricks.rs).
//!
//! Input: `METHOD<TAB>target`, as in tests/fixtures/databricks_catalog.tsv and
//! bypass_corpus.tsv (further columns ignored), or a bare target (GET).
//!
//! Properties, beyond not panicking:
//! - normalising the forwarded (encoded) form again yields the same path: what the upstream
//!   receives is what was classified;
//! - the classification of a path equals that of its normalised form;
//! - percent-encoding literal characters (other than `/`, `;`, `%`) changes nothing, neither
//!   the normalised path nor the refusal: one decoding, one reading;
//! - ASCII case in the path never changes the action (route words match without case).
#![no_main]

use gatehouse::classify::{databricks, normalize_path};
use gatehouse_fuzz::{encode_literals, fields, method, split_target, text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(line) = text(data) else {
        return;
    };
    let row = fields(line);
    let (method, target) = match row.as_slice() {
        [target] => (http::Method::GET, *target),
        [m, target, ..] => (method(m), *target),
        [] => return,
    };
    let (path, query) = split_target(target);

    let first = normalize_path(path);
    for stride in [1, 2, 3] {
        let respelled = encode_literals(path, &['/', ';', '%'], stride);
        assert_eq!(
            normalize_path(&respelled),
            first,
            "{path:?} and {respelled:?} normalise differently"
        );
    }
    let Ok(normalized) = first else {
        return;
    };

    let encoded = normalized.encoded();
    let again = normalize_path(&encoded).expect("the forwarded form normalises");
    assert_eq!(
        again, normalized,
        "normalising {path:?} twice differs from once"
    );
    assert_eq!(again.encoded(), encoded);

    let classification = databricks::classify(&method, &normalized, query);
    assert_eq!(
        databricks::classify(&method, &again, query),
        classification,
        "{path:?} classifies differently from its normalised form {encoded:?}"
    );

    for cased in [path.to_ascii_uppercase(), path.to_ascii_lowercase()] {
        let cased_path = normalize_path(&cased).expect("ASCII case never makes a path invalid");
        let other = databricks::classify(&method, &cased_path, query);
        // The action is named by the path alone; a refusal is about the asset parameters,
        // which case does not change.
        assert_eq!(
            other.as_ref().map(|c| c.action).ok(),
            classification.as_ref().map(|c| c.action).ok(),
            "{path:?} and {cased:?} are different actions"
        );
    }
});
