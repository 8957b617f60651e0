//! `scale-targets`' memory per idle target, measured in a child process per
//! stack: a process that has run other stacks holds their freed memory (the
//! allocator keeps it), so a difference of its resident memory depends on
//! which stacks ran before. A fresh process per stack does not.
//!
//! The child is this same binary run as `reuse-lab --measure-idle-memory
//! STACK`: it reads the idle targets' URLs from its standard input (one per
//! line), builds the stack with its defaults, sends one request to the
//! first target (whatever a stack allocates once, on its first request, is
//! not per target), takes its resident memory, sends one request to each
//! other target, leaving each an idle connection, takes it again, and
//! prints the difference per target in bytes.

use std::io::{self, BufRead, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;

use super::LabError;
use crate::driver::{self, Load, Progress};
use crate::stacks::{Protocol, Stack, StackKind};
use crate::target::Target;
use crate::tls;

/// The hidden command-line flag that runs a process as the measurement.
pub const MEASURE_IDLE_MEMORY_FLAG: &str = "--measure-idle-memory";

/// Runs the measurement for `kind` over `targets` in a child process and
/// returns its figure: resident bytes per idle target.
pub(super) async fn in_child(kind: StackKind, targets: &[Target]) -> Result<f64, LabError> {
    let urls: String = targets.iter().map(|t| format!("{}\n", t.uri)).collect();
    let output = tokio::task::spawn_blocking(move || -> io::Result<std::process::Output> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg(MEASURE_IDLE_MEMORY_FLAG)
            .arg(kind.name())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("no stdin"))?;
        stdin.write_all(urls.as_bytes())?;
        drop(stdin);
        child.wait_with_output()
    })
    .await??;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!("{kind}: memory per idle target: the child process failed").into());
    }
    text.trim()
        .parse()
        .map_err(|_| format!("{kind}: memory per idle target: unexpected answer {text:?}").into())
}

/// The child's side: measure `stack` over the URLs on standard input and
/// print bytes per idle target.
pub fn measure(stack: &str) -> Result<(), LabError> {
    let kind = StackKind::from_name(stack).ok_or_else(|| format!("unknown stack {stack:?}"))?;
    let targets = io::stdin()
        .lock()
        .lines()
        .map(|line| Ok(Target::parse(line?.trim())?))
        .collect::<Result<Vec<_>, LabError>>()?;
    if targets.len() < 2 {
        return Err("at least two idle targets are needed".into());
    }
    // The lab's client runtime: one worker thread.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let per_target = runtime.block_on(measure_in(kind, &targets))?;
    println!("{per_target}");
    Ok(())
}

async fn measure_in(kind: StackKind, targets: &[Target]) -> Result<f64, LabError> {
    let tls = tls::client_config(RootCertStore::empty())?;
    let stack = Stack::build(kind, Protocol::Http1, tls, 1, &targets[0], None, None).await?;
    let one_request = Load::Bursts {
        bursts: 1,
        size: 1,
        gap: Duration::ZERO,
    };
    let request = async |target: &Target| -> Result<(), LabError> {
        let one: Arc<[Target]> = vec![target.clone()].into();
        let outcome = driver::run(&stack, &one, &one_request, &Progress::new(), false, 0).await?;
        if outcome.recorder.ok() != 1 {
            return Err(format!("{kind}: a request to {} failed", target.uri).into());
        }
        Ok(())
    };
    request(&targets[0]).await?;
    let before = rss_bytes().ok_or("no VmRSS in /proc/self/status")?;
    for target in &targets[1..] {
        request(target).await?;
    }
    let after = rss_bytes().ok_or("no VmRSS in /proc/self/status")?;
    Ok(after.saturating_sub(before) as f64 / (targets.len() - 1) as f64)
}

/// Resident memory of this process, from `/proc/self/status`.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
