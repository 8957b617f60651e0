//! Fuzzing, on the stable toolchain, of every parser that reads what a peer
//! or a user sends: the `Keep-Alive` and `Connection` response headers, and
//! durations and whole policy files in configuration. proptest generates the
//! inputs, both arbitrary text and text shaped like each grammar, and the
//! properties are "never panics" plus what each parser promises.
//!
//! CI runs proptest's default case count per property. A longer, still
//! bounded run:
//!
//! ```text
//! PROPTEST_CASES=200000 cargo test -p tower-reuse-pool --all-features --lib parsers_fuzz
//! ```

use std::time::Duration;

use http::header::{CONNECTION, HeaderMap, HeaderValue};
use proptest::prelude::*;

use crate::config::parse_duration;
use crate::hints::{ConnectionTokens, keep_alive_timeout};

/// Pieces of header grammar: names, numbers, separators, quotes, noise.
fn header_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("timeout".to_owned()),
        Just("TimeOut".to_owned()),
        Just("max".to_owned()),
        Just("close".to_owned()),
        Just("keep-alive".to_owned()),
        "[0-9]{0,25}",
        "-[0-9]{1,3}",
        Just("=".to_owned()),
        Just(",".to_owned()),
        Just(" ".to_owned()),
        Just("\t".to_owned()),
        Just("\"".to_owned()),
        "\\PC{0,3}",
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
}

/// Text shaped like a duration: a number, maybe a unit, maybe noise.
fn duration_like() -> impl Strategy<Value = String> {
    (
        "[ ]{0,2}[0-9]{0,22}(\\.[0-9]{0,6})?",
        prop_oneof![
            Just(""),
            Just("ms"),
            Just("s"),
            Just("m"),
            Just("h"),
            Just(" s"),
            Just("off"),
            Just("x"),
        ],
    )
        .prop_map(|(number, unit)| format!("{number}{unit}"))
}

/// Lines shaped like a policy file: known keys, values of every type.
fn policy_like() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("idle_timeout"),
        Just("max_idle_per_target"),
        Just("lifetime_jitter"),
        Just("retry"),
        Just("checkout_timeout"),
        Just("max_requests_in_flight"),
        Just("unknown_knob"),
    ];
    let value = prop_oneof![
        duration_like().prop_map(|d| format!("{d:?}")),
        "-?[0-9]{1,20}",
        "-?[0-9]{1,3}\\.[0-9]{1,3}",
        Just("true".to_owned()),
        Just("[1, 2]".to_owned()),
        Just("{ a = 1 }".to_owned()),
        "\\PC{0,6}",
    ];
    proptest::collection::vec((key, value), 0..6).prop_map(|lines| {
        lines
            .into_iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect()
    })
}

fn config() -> ProptestConfig {
    // The case count comes from PROPTEST_CASES when set; nothing is
    // written to disk.
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn keep_alive_timeout_never_panics_and_stays_bounded(
        value in prop_oneof![header_like(), any::<String>()],
    ) {
        if let Some(timeout) = keep_alive_timeout(&value) {
            prop_assert!(timeout <= Duration::from_secs(86_400));
        }
    }

    #[test]
    fn keep_alive_timeout_is_found_among_other_parameters(
        before in proptest::collection::vec("max=[0-9]{1,4}|[a-z]{1,6}", 0..3),
        secs in 0u64..200_000,
        after in proptest::collection::vec("max=[0-9]{1,4}|[a-z]{1,6}", 0..3),
    ) {
        let mut params = before;
        params.push(format!(" TimeOut = {secs} "));
        params.extend(after);
        prop_assert_eq!(
            keep_alive_timeout(&params.join(",")),
            Some(Duration::from_secs(secs.min(86_400)))
        );
    }

    #[test]
    fn connection_tokens_never_panic_and_see_an_added_close(
        values in proptest::collection::vec(prop_oneof![header_like(), any::<String>()], 0..4),
    ) {
        let mut headers = HeaderMap::new();
        for value in &values {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.append(CONNECTION, value);
            }
        }
        let _ = ConnectionTokens::of(&headers);
        headers.append(CONNECTION, HeaderValue::from_static(" Close "));
        prop_assert!(ConnectionTokens::of(&headers).close);
    }

    #[test]
    fn parse_duration_never_panics(text in prop_oneof![duration_like(), any::<String>()]) {
        if let Ok(Some(duration)) = parse_duration(&text) {
            prop_assert!(duration < Duration::MAX);
        }
    }

    #[test]
    fn parse_duration_reads_whole_milliseconds(ms in 0u64..1_000_000_000) {
        let parsed = parse_duration(&format!("{ms}ms")).unwrap().unwrap();
        let diff = parsed.abs_diff(Duration::from_millis(ms));
        prop_assert!(diff < Duration::from_micros(1), "{ms}ms read as {parsed:?}");
    }
}

#[cfg(feature = "serde")]
proptest! {
    #![proptest_config(config())]

    #[test]
    fn policy_files_never_panic(text in prop_oneof![policy_like(), any::<String>()]) {
        if let Ok(config) = toml::from_str::<crate::PoolConfig>(&text) {
            let _ = config.validate();
        }
    }
}
