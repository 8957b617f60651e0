//! Support for the connection budget's tests: servers on several loopback
//! addresses counted as one, and the pool's count checked against its
//! targets'.

use std::sync::Arc;

use tower_reuse_pool::{Connect, Pool, Target};

use crate::server::{ServerOptions, ServerStats, TestServer};

/// Servers on 127.0.0.2 .. 127.0.0.(n + 1), counting as one (the kernel's
/// count at each accept: see [`ServerStats::kernel_counted`]).
pub async fn servers(n: u8, options: ServerOptions) -> (Vec<TestServer>, Arc<ServerStats>) {
    let stats = ServerStats::kernel_counted();
    let mut servers = Vec::new();
    for i in 0..n {
        let addr = format!("127.0.0.{}:0", i + 2);
        servers.push(TestServer::start_counting(&addr, options.clone(), stats.clone()).await);
    }
    (servers, stats)
}

/// The target a server's URLs name.
pub fn target(server: &TestServer) -> Target {
    Target::from_uri(&server.url("/").parse().expect("a valid URL"), None).expect("a target")
}

/// The connections the pool's budget counts, and those its targets count
/// (idle, active, connecting, dedicated and closing).
pub fn counts<C: Connect>(client: &Pool<C>) -> (usize, usize) {
    let snapshot = client.control().snapshot();
    let open = snapshot
        .total(|t| (t.idle() + t.active() + t.connecting() + t.dedicated() + t.closing()) as u64);
    (
        snapshot.budget.connections,
        usize::try_from(open).expect("fits"),
    )
}

/// The connections the pool counts, checked against its targets' counts
/// (for a pool at rest: a snapshot is not taken all at once).
pub fn counted<C: Connect>(client: &Pool<C>) -> usize {
    let (budget, targets) = counts(client);
    assert_eq!(budget, targets, "{:?}", client.control().snapshot());
    budget
}
