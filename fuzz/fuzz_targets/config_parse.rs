//! The configuration parser (src/config.rs): any TOML text becomes a validated `Config` or a
//! list of errors, never a panic. Seeds: config/gatehouse.toml and the README's examples.
#![no_main]

use gatehouse::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(text) = gatehouse_fuzz::text(data) {
        if let Err(errors) = Config::parse(text) {
            // Every refusal names at least one reason.
            assert!(!errors.0.is_empty(), "an empty error list for {text:?}");
        }
    }
});
