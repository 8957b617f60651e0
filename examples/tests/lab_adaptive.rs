//! The adaptive controller's scenarios in their quick form, tiny: the
//! rows carry their figures, and the `reuse` stacks fail no request.

use std::time::Duration;

use tower_reuse_examples::lab::{self, LabConfig};
use tower_reuse_examples::results::{Results, RunResult};
use tower_reuse_examples::scenarios::{self, Scenario, Sizes};
use tower_reuse_examples::stacks::StackKind;
use tower_reuse_pool::PoolConfig;

/// Runs `scenario` on `stacks`, as `reuse-lab --quick` would.
async fn run(scenario: Scenario, stacks: Vec<StackKind>) -> Results {
    run_with(scenario, stacks, None).await
}

/// [`run`] with the `reuse` stacks' pool set by `policy`.
async fn run_with(
    scenario: Scenario,
    stacks: Vec<StackKind>,
    policy: Option<PoolConfig>,
) -> Results {
    let out_dir = std::env::temp_dir().join(format!(
        "reuse-lab-adaptive-{}-{}",
        std::process::id(),
        scenario.name
    ));
    let mut config =
        LabConfig::embedded(vec![scenario], stacks, out_dir.clone(), "lab_adaptive test");
    config.policy = policy;
    config.environment.quick = true;
    let results = lab::run(config).await.unwrap();
    let _ = std::fs::remove_dir_all(&out_dir);
    assert!(results.failures().is_empty(), "{:?}", results.failures());
    results
}

/// `--quick` sizes, with `concurrency` workers (or burst size) and
/// runs of `duration`.
fn quick(concurrency: usize, duration: Option<Duration>) -> Sizes {
    Sizes {
        quick: true,
        concurrency: Some(concurrency),
        duration,
        ..Sizes::default()
    }
}

/// The stacks the adaptive scenarios compare.
fn compared() -> Vec<StackKind> {
    vec![
        StackKind::Reuse,
        StackKind::ReuseStatic,
        StackKind::HyperUtil,
    ]
}

fn row(results: &Results, stack: StackKind) -> &RunResult {
    results
        .runs
        .iter()
        .find(|r| r.stack == stack.name())
        .unwrap_or_else(|| panic!("no {stack} row"))
}

/// The row as results.json holds it.
fn json(row: &RunResult) -> serde_json::Value {
    serde_json::to_value(row).unwrap()
}

/// `cyclic`: the `reuse` stacks answer every request and report their
/// pre-warmed connections; `hyper-util` has no such count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cyclic_reports_prewarmed_connections_of_the_reuse_stacks() {
    let sizes = quick(8, None);
    let scenario = scenarios::build("cyclic", &sizes).unwrap();
    assert!(scenario.tls);
    let results = run(scenario, compared()).await;
    assert_eq!(results.runs.len(), 3);
    for stack in [StackKind::Reuse, StackKind::ReuseStatic] {
        let r = row(&results, stack);
        assert_eq!((r.errors, r.requests), (0, 16), "{stack}");
        let (opened, served) = (r.prewarmed_opened.unwrap(), r.prewarmed_served.unwrap());
        assert!(served <= opened, "{stack}: {served} of {opened}");
        assert!(json(r)["p99_us"].as_f64().unwrap() > 0.0);
    }
    let hyper_util = json(row(&results, StackKind::HyperUtil));
    assert!(hyper_util["prewarmed_opened"].is_null());
    assert!(hyper_util.get("prewarmed_served").is_some());
}

/// With a floor of idle connections, the pool pre-warms: after the
/// server's idle closes between bursts the floor is opened again, and
/// the next burst is served on those connections; the lab counts both
/// from the pool's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cyclic_counts_prewarmed_connections_that_served() {
    let sizes = quick(8, None);
    let scenario = scenarios::build("cyclic", &sizes).unwrap();
    let policy = PoolConfig::default().min_idle_per_target(8);
    let results = run_with(scenario, vec![StackKind::ReuseStatic], Some(policy)).await;
    let r = row(&results, StackKind::ReuseStatic);
    assert_eq!(r.errors, 0, "{:?}", r.first_error);
    let (opened, served) = (r.prewarmed_opened.unwrap(), r.prewarmed_served.unwrap());
    assert!(
        opened >= 1 && served >= 1,
        "{served} of {opened} pre-warmed served"
    );
    assert!(served <= opened, "{served} of {opened}");
}

/// `shift`: every row has its steps, open connections over time, and a
/// settle figure field; `reuse` fails nothing and opens no more than the
/// high step's workers need, give or take the step down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shift_reports_its_steps_and_open_connections() {
    let sizes = quick(16, Some(Duration::from_millis(400)));
    let scenario = scenarios::build("shift", &sizes).unwrap();
    let results = run(scenario, compared()).await;
    for r in &results.runs {
        assert_eq!(r.steps_s, [0.0, 0.4, 0.8], "{}", r.stack);
        assert!(!r.open_connections.is_empty(), "{}", r.stack);
        assert!(r.peak_concurrency == 16);
        let value = json(r);
        for field in ["connections_5s_after_step_down", "step_down_settle_s"] {
            assert!(value.get(field).is_some(), "{field}");
        }
        // The last step is shorter than 5 s.
        assert_eq!(r.connections_5s_after_step_down, None);
    }
    for stack in [StackKind::Reuse, StackKind::ReuseStatic] {
        let r = row(&results, stack);
        assert_eq!(r.errors, 0, "{stack}: {:?}", r.first_error);
        assert!(
            r.connections_opened <= 16,
            "{stack}: {}",
            r.connections_opened
        );
    }
}

/// `keepalive-race` behind its relay, a client per worker: the `reuse`
/// stacks fail nothing and report retries and stale skips over all the
/// workers' clients; each worker's own client opened its own
/// connection, so there are at least as many as workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_race_counts_every_workers_client() {
    let sizes = quick(4, Some(Duration::from_millis(1500)));
    let scenario = scenarios::build("keepalive-race", &sizes).unwrap();
    assert!(scenario.relay.is_some() && scenario.client_per_worker);
    let results = run(scenario, compared()).await;
    for r in &results.runs {
        assert!(
            r.connections_opened >= 4,
            "{}: {}",
            r.stack,
            r.connections_opened
        );
        // Through the relay: a round trip takes at least its 10 ms.
        assert!(r.p50_us >= 10_000.0, "{}: p50 {}", r.stack, r.p50_us);
    }
    for stack in [StackKind::Reuse, StackKind::ReuseStatic] {
        let r = row(&results, stack);
        assert_eq!(r.errors, 0, "{stack}: {:?}", r.first_error);
        assert!(r.retries.is_some() && r.stale_skips.is_some(), "{stack}");
    }
    assert_eq!(row(&results, StackKind::HyperUtil).stale_skips, None);
}
