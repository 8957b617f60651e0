//! `reuse-lab`: the tower-reuse benchmark and demo.
//!
//! With no arguments it starts an embedded server and runs the scenario suite
//! against every client stack, printing a comparison table and writing
//! `target/reuse-lab/results.json` and `target/reuse-lab/report.html`. The
//! fault-injection scenarios (`chaos`, `chaos-h2`) run only when named.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tower_reuse_examples::lab::{self, LabConfig, LabError};
use tower_reuse_examples::otlp::Endpoint;
use tower_reuse_examples::report::{html, table};
use tower_reuse_examples::results::Environment;
use tower_reuse_examples::scenarios::{self, Sizes};
use tower_reuse_examples::stacks::StackKind;
use tower_reuse_examples::target::Target;
use tower_reuse_examples::tls;
use tower_reuse_pool::PoolConfig;

/// Connection-reuse benchmark: client stacks side by side against an
/// embedded hyper server (HTTP/1.1, h2c, TLS) or an external one.
#[derive(Debug, Parser)]
#[command(name = "reuse-lab", version)]
struct Args {
    /// Scenarios to run, comma separated (default: the suite, all but the
    /// opt-in chaos and chaos-h2: 200 000 requests while the embedded
    /// server closes, resets, stalls and GOAWAYs connections; the run fails
    /// if a request is lost or misdelivered).
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<String>,
    /// Stacks to run, comma separated: fresh, hyper-util, hyper-util-tuned,
    /// hyper-util+cache, hyper-util+p2c, reuse, reuse-static, reuse-shared,
    /// reuse+budget, reuse+affinity, reuse+otel, reuse+span, raw (default:
    /// all but reuse+span, the opt-in floor of a sampled span per request;
    /// reuse+otel and reuse+span run in steady-h1 and steady-h1-tls only,
    /// hyper-util+cache in tls-churn only, reuse+affinity in steady-h1
    /// only, reuse-shared in noisy-neighbour only, reuse+budget in
    /// scale-targets only, reuse-static (reuse with the adaptive controller
    /// off) in steady-h1, bursty, keepalive-race, tls-churn, cyclic and
    /// shift only; the affinity scenarios run hyper-util+p2c and reuse,
    /// there the affinity layer over the pool; noisy-neighbour and tiers
    /// run reuse with the affinity layer's tiers; cyclic and shift run
    /// reuse, reuse-static and hyper-util. Without this option, fresh and
    /// hyper-util-tuned are left out where they add no figure, to keep
    /// the suite short: named here, they run).
    #[arg(long, value_delimiter = ',')]
    stack: Vec<String>,
    /// The smoke-test suite: short runs, under a minute in all (the suite
    /// without tiers, unless named).
    #[arg(long)]
    quick: bool,
    /// Stop each run after this many requests.
    #[arg(long)]
    requests: Option<u64>,
    /// Workers (closed loop), burst size, or in-flight bound (open loop).
    #[arg(long)]
    concurrency: Option<usize>,
    /// How long each run sends, e.g. `5s`, `500ms`.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Run the client side against this server instead of the embedded one.
    #[arg(long)]
    target: Option<String>,
    /// PEM file of CA certificates to trust for an `https` `--target`.
    #[arg(long, requires = "target")]
    ca: Option<PathBuf>,
    /// A TOML file of pool settings for the `reuse` stacks instead of their
    /// defaults (keys are `PoolConfig`'s setter names, e.g. `idle_timeout = "20s"`).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Export the reuse+otel stack's spans and metrics (and reuse+span's
    /// spans) over OTLP/HTTP (protobuf) to the collector at this base URL,
    /// e.g. http://127.0.0.1:4318 (/v1/traces and /v1/metrics are appended;
    /// http only), instead of dropping them. The usual OTEL_* variables
    /// apply (OTEL_TRACES_SAMPLER, OTEL_METRIC_EXPORT_INTERVAL ...); what is
    /// left is exported at the end of each such run. Their figures are then
    /// not comparable with a run without it.
    #[arg(long, value_name = "URL")]
    otlp: Option<Endpoint>,
    /// Where results.json, report.html and cert.pem go.
    #[arg(long, default_value = "target/reuse-lab")]
    out: PathBuf,
    /// Worker threads of the client runtime.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Worker threads of the embedded server's runtime.
    #[arg(long, default_value_t = 1)]
    server_threads: usize,
    /// The seed of the stacks' order in each round of the scenarios where
    /// they take turns (default: drawn at random, and printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Internal: measure one stack's memory per idle target for
    /// `scale-targets` (the lab runs itself as a child process per stack
    /// with this flag).
    #[arg(long = &lab::MEASURE_IDLE_MEMORY_FLAG[2..], hide = true, value_name = "STACK")]
    measure_idle_memory: Option<String>,
    /// Internal: serve this many idle targets for `scale-targets` (the lab
    /// runs itself as a child process with this flag).
    #[arg(long = &lab::SERVE_IDLE_FLAG[2..], hide = true)]
    serve_idle: Option<usize>,
}

/// Reads and checks a `--policy` file.
fn load_policy(path: &std::path::Path) -> Result<PoolConfig, LabError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--policy {}: {e}", path.display()))?;
    let config: PoolConfig =
        toml::from_str(&text).map_err(|e| format!("--policy {}: {e}", path.display()))?;
    Ok(config
        .validate()
        .map_err(|e| format!("--policy {}: {e}", path.display()))?)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((text, "s"), |i| text.split_at(i));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 5s or 500ms"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("invalid unit in {text:?}: use ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

fn main() {
    let args = Args::parse();
    if let Some(n) = args.serve_idle {
        if let Err(e) = lab::serve_idle(n) {
            eprintln!("reuse-lab {}: {e}", lab::SERVE_IDLE_FLAG);
            std::process::exit(1);
        }
        return;
    }
    if let Some(stack) = &args.measure_idle_memory {
        if let Err(e) = lab::measure_idle_memory(stack) {
            eprintln!("reuse-lab {}: {e}", lab::MEASURE_IDLE_MEMORY_FLAG);
            std::process::exit(1);
        }
        return;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .thread_name("reuse-lab-client")
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("reuse-lab: cannot start the client runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(args)) {
        eprintln!("reuse-lab: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), LabError> {
    let sizes = Sizes {
        quick: args.quick,
        requests: args.requests,
        concurrency: args.concurrency,
        duration: args.duration,
    };
    let names: Vec<String> = if args.scenario.is_empty() {
        scenarios::ALL
            .iter()
            .filter(|s| !(args.quick && scenarios::NOT_QUICK.contains(s)))
            .map(|s| (*s).to_owned())
            .collect()
    } else {
        args.scenario.clone()
    };
    let mut chosen = Vec::new();
    for name in &names {
        let mut scenario = scenarios::build(name, &sizes).ok_or_else(|| {
            format!(
                "unknown scenario {name:?}; known: {}, and opt-in: {}",
                scenarios::ALL.join(", "),
                scenarios::OPT_IN.join(", ")
            )
        })?;
        if args.target.is_some() {
            if scenario.idle_targets > 0 {
                eprintln!("reuse-lab: {name} needs many embedded targets; skipped with --target");
                continue;
            }
            if scenario.service.is_some() {
                eprintln!(
                    "reuse-lab: {name} needs the embedded server's endpoints; skipped with --target"
                );
                continue;
            }
            if scenario.server.injects_faults() {
                eprintln!(
                    "reuse-lab: {name} injects faults in the embedded server; skipped with --target"
                );
                continue;
            }
            scenario.addresses = 1;
        }
        if args.stack.is_empty() {
            scenario = scenario.by_default();
        }
        chosen.push(scenario);
    }
    let stacks = if args.stack.is_empty() {
        StackKind::default_set()
    } else {
        args.stack
            .iter()
            .map(|s| {
                StackKind::from_name(s).ok_or_else(|| {
                    let known: Vec<_> = StackKind::ALL.iter().map(|k| k.name()).collect();
                    format!("unknown stack {s:?}; known: {}", known.join(", "))
                })
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    if let Some(endpoint) = &args.otlp {
        let exports = |k: &StackKind| matches!(k, StackKind::ReuseOtel | StackKind::ReuseSpan);
        if !stacks.iter().any(exports) {
            eprintln!(
                "reuse-lab: --otlp {endpoint} has no effect: only reuse+otel and reuse+span export"
            );
        } else if !chosen.iter().any(|s| {
            stacks
                .iter()
                .any(|k| exports(k) && s.skip_reason(*k).is_none())
        }) {
            eprintln!(
                "reuse-lab: --otlp {endpoint} has no effect: reuse+otel and reuse+span run in steady-h1 and steady-h1-tls only"
            );
        }
    }
    let target = args.target.as_deref().map(Target::parse).transpose()?;
    if let Some(target) = &target {
        // With --target the scheme decides TLS, whatever the scenario says.
        for scenario in &mut chosen {
            scenario.tls = target.is_tls();
        }
    }
    let roots = args.ca.as_deref().map(tls::load_roots).transpose()?;
    let policy = args.policy.as_deref().map(load_policy).transpose()?;
    let descriptions: Vec<(String, String)> = chosen
        .iter()
        .map(|s| (s.name.to_owned(), s.description.clone()))
        .collect();
    let environment = Environment {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        client_threads: args.client_threads.max(1),
        server_threads: args.server_threads.max(1),
        quick: args.quick,
        target: args.target.clone(),
        turn_seed: args.seed.unwrap_or_else(|| fastrand::u64(..)),
    };
    let results = lab::run(LabConfig {
        scenarios: chosen,
        stacks,
        target,
        roots,
        out_dir: args.out.clone(),
        server_threads: args.server_threads.max(1),
        policy,
        otlp: args.otlp.clone(),
        environment,
        on_scenario: table::scenario_table,
    })
    .await?;
    let json = args.out.join("results.json");
    results.write(&json)?;
    let report = args.out.join("report.html");
    std::fs::write(&report, html::render(&results, &descriptions))?;
    println!(
        "\nwrote {}, {} and {}",
        json.display(),
        report.display(),
        args.out.join("cert.pem").display()
    );
    // CI's smoke test relies on a misdelivered or lost request failing
    // the run.
    let failed = results.failures();
    if !failed.is_empty() {
        return Err(failed.join("; ").into());
    }
    Ok(())
}
