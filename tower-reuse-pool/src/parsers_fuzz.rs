//! Fuzzing, on the stable toolchain, of every parser that reads what a peer
//! or a user sends: the `Keep-Alive` and `Connection` response headers and
//! whole response heads, the target of a request's URI, and durations in
//! configuration (whole policy files are driven through a pool in
//! `policy_fuzz`). proptest generates the inputs, both
//! arbitrary text and text shaped like each grammar, and the properties are
//! "never panics" plus what each parser promises.
//!
//! CI runs proptest's default case count per property. A longer, still
//! bounded run:
//!
//! ```text
//! PROPTEST_CASES=200000 cargo test -p tower-reuse-pool --all-features --lib parsers_fuzz
//! ```

use std::time::Duration;

use http::header::{CONNECTION, HeaderName, HeaderValue};
use http::{Response, StatusCode, Uri, Version};
use proptest::prelude::*;

use crate::config::parse_duration;
use crate::error::{ErrorKind, Phase};
use crate::hints::{ServerHints, keep_alive_timeout};
use crate::target::Target;

/// Pieces of header grammar: names, numbers, separators, quotes, noise.
fn header_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("timeout".to_owned()),
        Just("TimeOut".to_owned()),
        Just("max".to_owned()),
        Just("close".to_owned()),
        Just("Close".to_owned()),
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

/// A duration's pieces: a number (maybe blank, maybe malformed) and a
/// unit (maybe unknown).
fn duration_parts() -> impl Strategy<Value = (String, &'static str)> {
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
}

/// Text shaped like a duration: a number, maybe a unit, maybe noise.
pub(crate) fn duration_like() -> impl Strategy<Value = String> {
    duration_parts().prop_map(|(number, unit)| format!("{number}{unit}"))
}

/// What a duration's pieces mean, worked out apart from the parser:
/// `None` for text it must reject, `Some(None)` for "off", else seconds.
fn meaning(number: &str, unit: &str) -> Option<Option<f64>> {
    let number = number.trim();
    if number.is_empty() && unit == "off" {
        return Some(None);
    }
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    let seconds = number.parse::<f64>().ok()? * scale;
    Duration::try_from_secs_f64(seconds).ok()?;
    Some(Some(seconds))
}

/// Text shaped like a URI: schemes, user info, hosts (names, IPv4, IPv6,
/// empty), ports (in range or not), paths, and noise.
fn uri_like() -> impl Strategy<Value = String> {
    let scheme = prop_oneof![
        Just("http://"),
        Just("https://"),
        Just("HTTP://"),
        Just("HttpS://"),
        Just("ftp://"),
        Just("h2c://"),
        Just("//"),
        Just(""),
    ];
    let user = prop_oneof![Just(""), Just("user@"), Just("u:p@"), Just("@")];
    let host = prop_oneof![
        "[a-zA-Z0-9-]{1,10}(\\.[a-zA-Z0-9-]{1,10}){0,2}",
        "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}",
        Just("[::1]".to_owned()),
        Just("[fe80::1%25eth0]".to_owned()),
        Just("".to_owned()),
        "\\PC{0,4}",
    ];
    let port = prop_oneof![Just("".to_owned()), Just(":".to_owned()), ":[0-9]{1,6}"];
    let rest = prop_oneof![
        Just("".to_owned()),
        Just("/".to_owned()),
        "/[a-z/]{0,8}(\\?[a-z=&]{0,8})?",
        "[?#][a-z]{0,4}",
    ];
    (scheme, user, host, port, rest)
        .prop_map(|(scheme, user, host, port, rest)| format!("{scheme}{user}{host}{port}{rest}"))
}

/// A response head: a version, a status (101 among them) and headers whose
/// names include those the pool reads, with values shaped like their grammar
/// or arbitrary bytes.
fn response_like() -> impl Strategy<Value = Response<()>> {
    let version = prop_oneof![
        Just(Version::HTTP_10),
        Just(Version::HTTP_11),
        Just(Version::HTTP_2),
    ];
    let status = prop_oneof![Just(101u16), Just(200), 100u16..600];
    let name = prop_oneof![
        Just("connection".to_owned()),
        Just("keep-alive".to_owned()),
        Just("upgrade".to_owned()),
        Just("content-length".to_owned()),
        "[a-z-]{1,12}",
    ];
    let value = prop_oneof![
        header_like().prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..16),
    ];
    let headers = proptest::collection::vec((name, value), 0..8);
    (version, status, headers).prop_map(|(version, status, headers)| {
        let mut response = Response::new(());
        *response.version_mut() = version;
        *response.status_mut() = StatusCode::from_u16(status).expect("100 to 599");
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes()).expect("a valid name");
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                response.headers_mut().append(name, value);
            }
        }
        response
    })
}

/// Whether a `Connection` header of `response` lists `token`, read apart
/// from the pool's parser: comma-separated, blanks around, any case.
fn lists_token(response: &Response<()>, token: &str) -> bool {
    response.headers().get_all(CONNECTION).iter().any(|value| {
        String::from_utf8_lossy(value.as_bytes())
            .split(',')
            .any(|t| t.trim_matches([' ', '\t']).eq_ignore_ascii_case(token))
    })
}

pub(crate) fn config() -> ProptestConfig {
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
        let mut response = Response::new(());
        for value in &values {
            if let Ok(value) = HeaderValue::from_str(value) {
                response.headers_mut().append(CONNECTION, value);
            }
        }
        let _ = ServerHints::of(&response);
        response
            .headers_mut()
            .append(CONNECTION, HeaderValue::from_static(" Close "));
        prop_assert!(ServerHints::of(&response).close);
    }

    #[test]
    fn parse_duration_never_panics(text in any::<String>()) {
        let _ = parse_duration(&text);
    }

    #[test]
    fn parse_duration_reads_the_value_its_pieces_give((number, unit) in duration_parts()) {
        let text = format!("{number}{unit}");
        match (parse_duration(&text), meaning(&number, unit)) {
            (Err(_), None) | (Ok(None), Some(None)) => {}
            (Ok(Some(parsed)), Some(Some(seconds))) => {
                let error = (parsed.as_secs_f64() - seconds).abs();
                prop_assert!(error <= seconds * 1e-12 + 1e-9, "{text:?} read as {parsed:?}");
            }
            (parsed, meant) => prop_assert!(false, "{text:?}: read {parsed:?}, means {meant:?}"),
        }
    }

    #[test]
    fn target_from_uri_never_panics_and_keeps_scheme_and_authority(
        text in prop_oneof![uri_like(), any::<String>()],
    ) {
        let Ok(uri) = text.parse::<Uri>() else {
            return Ok(());
        };
        match Target::from_uri(&uri, None) {
            Err(error) => {
                prop_assert_eq!(
                    (error.kind(), error.phase()),
                    (ErrorKind::InvalidRequest, Phase::Request),
                    "{}: {}", uri, error
                );
                // User info never reaches an error.
                for shown in [error.to_string(), format!("{error:?}")] {
                    prop_assert!(!shown.contains("u:p@") && !shown.contains("user@"), "{}", shown);
                }
            }
            Ok(target) => {
                prop_assert_eq!(Some(target.scheme()), uri.scheme());
                // Host and port only: any user info is dropped.
                let authority = uri.authority().expect("a target's URI has an authority");
                prop_assert_eq!(target.authority().host(), authority.host());
                prop_assert_eq!(target.authority().port_u16(), authority.port_u16());
                prop_assert!(!target.authority().as_str().contains('@'));
                prop_assert!(!target.to_string().contains('@'));
                prop_assert!(!target.authority().host().is_empty());
                prop_assert!(target.is_https() || target.scheme() == &http::uri::Scheme::HTTP);
                // Printed and parsed again, or as the URI handed to the
                // connector, it is the same target.
                let printed: Uri = target.to_string().parse().expect("a target prints as a URI");
                prop_assert_eq!(&Target::from_uri(&printed, None).expect("valid"), &target);
                let dialed = Target::from_uri(&target.connect_uri(), None).expect("valid");
                prop_assert_eq!(&dialed, &target);
                let _ = target.transport();
            }
        }
    }

    #[test]
    fn server_hints_never_panic_and_see_every_close_token(response in response_like()) {
        let hints = ServerHints::of(&response);
        if lists_token(&response, "close") {
            prop_assert!(hints.close, "{:?}", response.headers());
        }
        let http10_without_keep_alive =
            response.version() == Version::HTTP_10 && !lists_token(&response, "keep-alive");
        if hints.close {
            prop_assert!(
                lists_token(&response, "close")
                    || http10_without_keep_alive
                    || response.status() == StatusCode::SWITCHING_PROTOCOLS,
                "closed for no reason: {:?}", response
            );
        }
        if let Some(limit) = hints.idle_limit {
            prop_assert!(limit <= Duration::from_secs(86_400));
        }
    }

    #[test]
    fn parse_duration_reads_whole_milliseconds(ms in 0u64..1_000_000_000) {
        let parsed = parse_duration(&format!("{ms}ms")).unwrap().unwrap();
        let diff = parsed.abs_diff(Duration::from_millis(ms));
        prop_assert!(diff < Duration::from_micros(1), "{ms}ms read as {parsed:?}");
    }
}
