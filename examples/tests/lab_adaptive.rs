//! The adaptive controller's scenarios in their quick form, tiny: the
//! rows carry their figures, and the `reuse` stacks fail no request.

use tower_reuse_examples::lab::{self, LabConfig};
use tower_reuse_examples::report::table;
use tower_reuse_examples::results::{Environment, Results, RunResult};
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
    let results = lab::run(LabConfig {
        scenarios: vec![scenario],
        stacks,
        target: None,
        roots: None,
        out_dir: out_dir.clone(),
        server_threads: 1,
        policy,
        otlp: None,
        environment: Environment {
            command: "lab_adaptive test".into(),
            cpus: 1,
            client_threads: 2,
            server_threads: 1,
            quick: true,
            target: None,
            turn_seed: 0,
        },
        on_scenario: table::scenario_table,
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&out_dir);
    assert!(results.failures().is_empty(), "{:?}", results.failures());
    results
}

fn quick() -> Sizes {
    Sizes {
        quick: true,
        ..Sizes::default()
    }
}

fn row<'a>(results: &'a Results, stack: StackKind) -> &'a RunResult {
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
    let mut sizes = quick();
    sizes.concurrency = Some(8);
    let scenario = scenarios::build("cyclic", &sizes).unwrap();
    assert!(scenario.tls);
    let stacks = vec![
        StackKind::Reuse,
        StackKind::ReuseStatic,
        StackKind::HyperUtil,
    ];
    let results = run(scenario, stacks).await;
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
    let mut sizes = quick();
    sizes.concurrency = Some(8);
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
    let mut sizes = quick();
    sizes.concurrency = Some(16);
    sizes.duration = Some(std::time::Duration::from_millis(400));
    let scenario = scenarios::build("shift", &sizes).unwrap();
    let stacks = vec![
        StackKind::Reuse,
        StackKind::ReuseStatic,
        StackKind::HyperUtil,
    ];
    let results = run(scenario, stacks).await;
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
    let mut sizes = quick();
    sizes.concurrency = Some(4);
    sizes.duration = Some(std::time::Duration::from_millis(1500));
    let scenario = scenarios::build("keepalive-race", &sizes).unwrap();
    assert!(scenario.relay.is_some() && scenario.client_per_worker);
    let stacks = vec![
        StackKind::Reuse,
        StackKind::ReuseStatic,
        StackKind::HyperUtil,
    ];
    let results = run(scenario, stacks).await;
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
