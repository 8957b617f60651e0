//! Policy files, fuzzed all the way: every configuration a file can give
//! that `validate` accepts builds a pool that serves requests and runs its
//! expiry on paused time, through a year and more of it, without a panic
//! anywhere (in the request, a connect task or the reaper).
//!
//! A longer, still bounded run:
//!
//! ```text
//! PROPTEST_CASES=20000 cargo test -p tower-reuse-pool --all-features --lib policy_fuzz
//! ```

use std::cell::Cell;
use std::future::Ready;
use std::sync::Once;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use proptest::prelude::*;
use tokio::io::DuplexStream;
use tower::{Layer, Service, ServiceExt};

use crate::parsers_fuzz::{config, duration_like};
use crate::{Connect, ConnectError, Established, PoolConfig, PoolLayer, Target};

const LIMITS: [&str; 10] = [
    "max_connections_per_target",
    "max_idle_per_target",
    "max_connecting_per_target",
    "max_waiters_per_target",
    "max_response_header_bytes",
    "max_requests_per_connection",
    "min_idle_per_target",
    "min_connections_per_target",
    "max_requests_in_flight",
    "max_connections",
];
const DURATIONS: [&str; 7] = [
    "checkout_timeout",
    "connect_timeout",
    "response_timeout",
    "http2_ping_interval",
    "idle_timeout",
    "max_lifetime",
    "revalidate_after_idle",
];
const SWITCHES: [&str; 4] = ["http2_prior_knowledge", "http2_scale_out", "retry", "reuse"];

/// A value of any type: what a knob of another type may be given.
fn any_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("true".to_owned()),
        Just("[1, 2]".to_owned()),
        Just("{ a = 1 }".to_owned()),
        "-?[0-9]{1,20}",
        "-?[0-9]{1,3}\\.[0-9]{1,3}",
        "\"\\PC{0,6}\"",
    ]
}

/// A value for a knob: mostly of the knob's type (small, at the bounds,
/// past them), now and then of any type.
fn value_for(key: &'static str) -> BoxedStrategy<String> {
    let typed = if LIMITS.contains(&key) {
        prop_oneof![
            "[0-9]".boxed(),
            "[0-9]{1,20}".boxed(),
            Just("2305843009213693951".to_owned()).boxed(),
            Just("18446744073709551615".to_owned()).boxed(),
        ]
        .boxed()
    } else if DURATIONS.contains(&key) {
        prop_oneof![
            duration_like().prop_map(|d| format!("{d:?}")).boxed(),
            Just("\"off\"".to_owned()).boxed(),
            Just("\"8760h\"".to_owned()).boxed(),
            Just("\"1ms\"".to_owned()).boxed(),
            "[0-9]{1,4}".boxed(),
            Just("31536001".to_owned()).boxed(),
            Just("9223372036854775807".to_owned()).boxed(),
        ]
        .boxed()
    } else if SWITCHES.contains(&key) {
        prop_oneof![Just("true".to_owned()), Just("false".to_owned())].boxed()
    } else {
        "[01]\\.[0-9]{1,3}".boxed()
    };
    prop_oneof![19 => typed, 1 => any_value()].boxed()
}

/// A policy file: some of the knobs, each once, with values mostly of
/// their types (arbitrary text stands for the rest).
fn policy_like() -> impl Strategy<Value = String> {
    let mut keys: Vec<&'static str> = LIMITS
        .iter()
        .chain(&DURATIONS)
        .chain(&SWITCHES)
        .copied()
        .collect();
    keys.push("lifetime_jitter");
    proptest::sample::subsequence(keys, 0..8)
        .prop_flat_map(|keys| {
            keys.into_iter()
                .map(|key| value_for(key).prop_map(move |value| format!("{key} = {value}\n")))
                .collect::<Vec<_>>()
        })
        .prop_map(|lines| lines.concat())
}

thread_local! {
    /// Panics on this thread: with a current-thread runtime, those of the
    /// pool's tasks too.
    static PANICS: Cell<u64> = const { Cell::new(0) };
}

/// Count every panic on the thread it happens on, then report it as usual.
fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|count| count.set(count.get() + 1));
            report(info);
        }));
    });
}

/// An in-memory connector to a hyper server speaking HTTP/1.1 and h2c.
#[derive(Clone, Debug)]
struct Memory;

impl Connect for Memory {
    type Io = TokioIo<DuplexStream>;
    type Future = Ready<Result<Established<Self::Io>, ConnectError>>;

    fn connect(&self, _target: &Target) -> Self::Future {
        // Small buffers: a policy may pre-warm a thousand connections.
        let (client, server) = tokio::io::duplex(4 * 1024);
        tokio::spawn(async move {
            let hello = service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                    Bytes::from_static(b"hello"),
                )))
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(server), hello)
                .await;
        });
        std::future::ready(Ok(Established::new(TokioIo::new(client))))
    }
}

/// Build a pool from `config`, send requests, let a year and a day of
/// paused time pass in steps (every deadline fires), send again.
async fn drive(config: PoolConfig) {
    let mut pool = PoolLayer::<Full<Bytes>>::new(config)
        .expect("validated")
        .layer(Memory);
    let request = || {
        http::Request::get("http://policy.test/")
            .body(Full::default())
            .expect("a valid request")
    };
    let send = async |pool: &mut crate::Pool<Memory>| {
        let sent = async {
            let response = pool.ready().await?.call(request()).await?;
            response.into_body().collect().await?;
            Ok::<_, crate::Error>(())
        };
        // A typed error is fine (a tiny timeout, say); a panic is not.
        let _ = tokio::time::timeout(Duration::from_secs(120), sent).await;
    };
    for _ in 0..3 {
        send(&mut pool).await;
    }
    let control = pool.control();
    for step in [
        Duration::from_millis(1),
        Duration::from_secs(3),
        Duration::from_secs(3600),
        PoolConfig::MAX_DURATION + Duration::from_secs(86_400),
    ] {
        tokio::time::advance(step).await;
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        let _ = control.snapshot();
    }
    send(&mut pool).await;
    let _ = control.update(|c| c.reuse(false));
    send(&mut pool).await;
    drop(pool);
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn policy_files_never_panic_a_pool(text in prop_oneof![9 => policy_like(), 1 => any::<String>()]) {
        count_panics();
        let Ok(config) = toml::from_str::<PoolConfig>(&text) else {
            return Ok(());
        };
        let Ok(config) = config.validate() else {
            return Ok(());
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a runtime");
        let before = PANICS.with(Cell::get);
        runtime.block_on(drive(config.clone()));
        drop(runtime);
        prop_assert_eq!(PANICS.with(Cell::get), before, "{:?} panicked", config);
    }
}
