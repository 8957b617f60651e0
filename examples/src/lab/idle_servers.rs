//! `scale-targets`' idle targets, served by a child process so that the
//! client's resident memory per idle target is measured without the
//! server's share of each connection.
//!
//! The child is this same binary run as `reuse-lab --serve-idle N`: it binds
//! `N` loopback addresses after `127.0.0.1`, prints one URL per line, then
//! `ready`, and serves until its standard input closes (so it never
//! outlives the lab, even if the lab is killed).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};

use crate::server::{Server, ServerConfig};

/// The hidden command-line flag that runs a process as idle servers.
pub const SERVE_IDLE_FLAG: &str = "--serve-idle";

/// Idle targets in a child process; killed on drop.
#[derive(Debug)]
pub(super) struct IdleServers {
    child: Child,
    urls: Vec<String>,
}

impl IdleServers {
    /// Starts `n` idle-target servers in a child process.
    pub(super) fn spawn(n: usize) -> io::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg(SERVE_IDLE_FLAG)
            .arg(n.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("idle servers: no stdout"))?;
        let mut urls = Vec::with_capacity(n);
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            if line == "ready" {
                return Ok(Self { child, urls });
            }
            urls.push(line);
        }
        let _ = child.kill();
        Err(io::Error::other(
            "idle servers: the child process exited before it was ready",
        ))
    }

    /// The servers' base URLs.
    pub(super) fn urls(&self) -> &[String] {
        &self.urls
    }
}

impl Drop for IdleServers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child's side: serve `n` idle targets until standard input closes.
pub fn serve(n: usize) -> io::Result<()> {
    let server = Server::start(ServerConfig::default().addresses(n).first_address(1))?;
    let mut out = io::stdout().lock();
    for i in 0..server.addrs().len() {
        writeln!(out, "{}", server.url(i))?;
    }
    writeln!(out, "ready")?;
    out.flush()?;
    drop(out);
    // Blocks until the lab closes our stdin (or exits).
    let _ = io::stdin().read_to_end(&mut Vec::new());
    Ok(())
}
