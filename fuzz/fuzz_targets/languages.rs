//! The text languages: the span selector, trace assertion files, consistency rules, the
//! token file and the sampling policy (TOML and Jaeger JSON). The first byte picks which.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match which % 6 {
        0 => drop(faultline_rules::Selector::parse(&text)),
        1 => drop(faultline_rules::AssertionFile::parse(&text)),
        2 => drop(faultline_checks::rule::parse_rules(&text)),
        3 => drop(faultline_auth::tokens::TokenSet::parse(&text)),
        4 => drop(faultline_sampling::Policy::parse(
            &text,
            false,
            "policy.toml",
        )),
        _ => drop(faultline_sampling::Policy::parse(
            &text,
            true,
            "policy.json",
        )),
    }
});
