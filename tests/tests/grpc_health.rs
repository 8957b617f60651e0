//! tonic-health's client over the pool against a real grpc-core server:
//! Python `grpcio` with `grpcio-health-checking`, started by each test
//! (`tests/grpc/health_server.py`) with `grpc.max_concurrent_streams` and,
//! in half the runs, `grpc.max_connection_age_ms`. grpc-core counts a
//! stream's slot busy a while after the client has seen the stream end and
//! refuses streams over its limit meanwhile; at four times the limit in
//! concurrent calls, no call may fail, and the pool opens at most
//! ceil(concurrency / limit) + 1 connections per generation of connections.
//!
//! Needs `python3` (or the interpreter `PYTHON` names) with `grpcio` and
//! `grpcio-health-checking`. Where the interpreter lacks them, the tests
//! install them once with pip into `target/grpc-python` and use them from
//! there; if that fails, they fail saying what to install. Every run is
//! bounded in calls and in time.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::Instant;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower::Layer;
use tower_reuse_pool::{BufferBodyLayer, BufferedBody, Pool, PoolConfig, PoolLayer};

/// The Python interpreter: `PYTHON`, or `python3`.
fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Whether `python` imports the server's packages, with `path` added to
/// its module path.
fn has_packages(python: &str, path: Option<&Path>) -> bool {
    let mut check = Command::new(python);
    check.args(["-c", "import grpc, grpc_health.v1.health"]);
    if let Some(path) = path {
        check.env("PYTHONPATH", path);
    }
    check.output().is_ok_and(|out| out.status.success())
}

/// The interpreter, and the directory to add to its module path when the
/// packages are not its own: installed there once, on first use.
fn python_with_packages() -> &'static (String, Option<PathBuf>) {
    static PYTHON: OnceLock<(String, Option<PathBuf>)> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let python = python();
        if has_packages(&python, None) {
            return (python, None);
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/grpc-python");
        if !has_packages(&python, Some(&dir)) {
            let installed = Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .arg("--target")
                .arg(&dir)
                .args(["grpcio", "grpcio-health-checking"])
                .status();
            assert!(
                installed.is_ok_and(|status| status.success()) && has_packages(&python, Some(&dir)),
                "these tests need `{python}` with the grpcio and grpcio-health-checking \
                 packages, and installing them into {} failed: run `{python} -m pip install \
                 grpcio grpcio-health-checking`, or set PYTHON to an interpreter that has them",
                dir.display()
            );
        }
        (python, Some(dir))
    })
}

/// A grpc-core health server; killed when dropped.
struct GrpcServer {
    child: Child,
    origin: Uri,
}

impl GrpcServer {
    /// Start the server with a stream limit and, optionally, a maximum
    /// connection age; fails the test with how to install what it needs
    /// if Python or its packages are missing.
    fn start(max_streams: usize, max_age: Option<Duration>) -> GrpcServer {
        let (python, path) = python_with_packages();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("grpc/health_server.py");
        let mut command = Command::new(python);
        if let Some(path) = path {
            command.env("PYTHONPATH", path);
        }
        command
            .arg(script)
            .args(["--max-concurrent-streams", &max_streams.to_string()]);
        if let Some(age) = max_age {
            command.args(["--max-connection-age-ms", &age.as_millis().to_string()]);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the gRPC server");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the server prints its port");
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("not a port: {line:?}"));
        GrpcServer {
            child,
            origin: format!("http://127.0.0.1:{port}").parse().expect("a URI"),
        }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one run of concurrent calls came to.
#[derive(Debug)]
struct Run {
    calls: usize,
    failed: usize,
    first_error: Option<String>,
    elapsed: Duration,
}

/// `concurrency` workers each making `calls_each` `Check` calls through
/// `client`, bounded to a minute in all.
async fn run<T>(client: HealthClient<T>, concurrency: usize, calls_each: usize) -> Run
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::ResponseBody: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as hyper::body::Body>::Error: Into<tower_reuse_pool::BoxError> + Send,
{
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut failed = 0;
                let mut first_error = None;
                for _ in 0..calls_each {
                    let request = HealthCheckRequest {
                        service: String::new(),
                    };
                    match client.check(request).await {
                        Ok(response) if response.get_ref().status() == ServingStatus::Serving => {}
                        Ok(response) => {
                            failed += 1;
                            first_error.get_or_insert(format!("{response:?}"));
                        }
                        Err(status) => {
                            failed += 1;
                            first_error.get_or_insert(status.to_string());
                        }
                    }
                }
                (failed, first_error)
            })
        })
        .collect();
    let mut outcome = Run {
        calls: concurrency * calls_each,
        failed: 0,
        first_error: None,
        elapsed: Duration::ZERO,
    };
    let all = async {
        for worker in workers {
            let (failed, first_error) = worker.await.expect("a worker panicked");
            outcome.failed += failed;
            if outcome.first_error.is_none() {
                outcome.first_error = first_error;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("hung: calls not done within a minute");
    outcome.elapsed = start.elapsed();
    outcome
}

/// The pool under tonic: h2c to the server, bodies made replayable.
type Transport = tower_reuse_pool::BufferBody<Pool<HttpConnector, BufferedBody<tonic::body::Body>>>;

fn pool() -> Pool<HttpConnector, BufferedBody<tonic::body::Body>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    PoolLayer::new(PoolConfig::default().http2_prior_knowledge(true))
        .expect("valid config")
        .layer(connector)
}

/// Calls per run, cut between the workers.
const CALLS: usize = 1600;

/// The stream limits tried, each with four times as many concurrent calls.
const LIMITS: [usize; 3] = [4, 16, 100];

/// `grpc.max_connection_age_ms` in the runs with GOAWAYs.
const MAX_AGE: Duration = Duration::from_millis(300);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Through the pool: no call fails, and connections stay within
/// ceil(concurrency / limit) + 1 per generation.
fn pool_against_grpc_core(max_age: Option<Duration>) {
    for limit in LIMITS {
        let concurrency = 4 * limit;
        let server = GrpcServer::start(limit, max_age);
        let pool = pool();
        let control = pool.control();
        let transport: Transport = BufferBodyLayer::new(64 * 1024).layer(pool);
        let client = HealthClient::with_origin(transport, server.origin.clone());
        let outcome = runtime().block_on(run(client, concurrency, CALLS / concurrency));
        let snapshot = control.snapshot();
        let target = &snapshot.targets[0];
        // A generation of connections lives at least 0.9 of the maximum
        // age (grpc-core's jitter is ±10 %).
        let generations = max_age.map_or(1, |age| {
            (outcome.elapsed.as_secs_f64() / (age.as_secs_f64() * 0.9)).ceil() as u64 + 1
        });
        let per_generation = concurrency.div_ceil(limit) as u64 + 1;
        println!(
            "limit {limit}, {concurrency} concurrent, max age {max_age:?}: {outcome:?}; \
             opened {}, refused {}, queued again {}, retries {}, {generations} generation(s)",
            target.opened(),
            target.refused(),
            target.requeued(),
            target.retries(),
        );
        // No call fails, through GOAWAYs too: a stream sent as the
        // server's graceful GOAWAY arrives is answered (its id is below the
        // GOAWAY's last stream id) or, above the final GOAWAY's, queued
        // again as never processed.
        assert_eq!(
            outcome.failed, 0,
            "limit {limit}: {outcome:?}; pool: {target:?}"
        );
        assert!(
            target.opened() <= per_generation * generations,
            "limit {limit}: {} connections for {generations} generation(s): {target:?}",
            target.opened()
        );
    }
}

#[test]
fn tonic_health_over_the_pool_has_no_failed_call_at_four_times_the_stream_limit() {
    pool_against_grpc_core(None);
}

#[test]
fn tonic_health_over_the_pool_has_no_failed_call_through_max_connection_age_goaways() {
    pool_against_grpc_core(Some(MAX_AGE));
}

/// A measurement, not a test that must pass: tonic's own `Channel` on the
/// same runs, its failures printed. Run with
/// `cargo test -p tower-reuse-tests --test grpc_health -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement of tonic's Channel, printed; run with --ignored"]
fn measure_tonic_channel_on_the_same_runs() {
    for max_age in [None, Some(MAX_AGE)] {
        for limit in LIMITS {
            let concurrency = 4 * limit;
            let server = GrpcServer::start(limit, max_age);
            let outcome = runtime().block_on(async {
                let channel = tonic::transport::Channel::builder(server.origin.clone())
                    .connect()
                    .await
                    .expect("connect");
                run(HealthClient::new(channel), concurrency, CALLS / concurrency).await
            });
            println!(
                "tonic Channel: limit {limit}, {concurrency} concurrent, max age {max_age:?}: \
                 {} of {} calls failed ({:.0} %); first error: {:?}",
                outcome.failed,
                outcome.calls,
                100.0 * outcome.failed as f64 / outcome.calls as f64,
                outcome.first_error
            );
        }
    }
}
