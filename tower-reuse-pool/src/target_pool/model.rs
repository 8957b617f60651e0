//! The model check: one target's checkout, waiter and check-in logic run
//! under a concurrency model checker, for lost wake-ups, double checkouts
//! and leaked reservations.
//!
//! # Checker
//!
//! [shuttle], not loom. Both need the code's synchronization to be theirs;
//! the pool's is one `Mutex` per target (through [`crate::sync`], shuttle's
//! inside a model execution, `std`'s everywhere else) and tokio's `oneshot`
//! for grants. loom models atomics and memory orderings exhaustively, but
//! only for code built with `--cfg loom` throughout (tokio's oneshot
//! included), which plain `cargo test` cannot do, and its exhaustive search
//! does not scale past a couple of tasks with this many lock acquisitions.
//! shuttle schedules whole tasks at its own primitives, runs async tasks
//! (`shuttle::future`) with wakers that tokio's oneshot wakes like any
//! other, reports a deadlock when every task is blocked, and samples
//! schedules randomly and with PCT (few preemptions, which is where most
//! bugs are), each execution replayable from the schedule it prints.
//!
//! # What runs
//!
//! The real code: [`Checkout::acquire`] (the queue, the wait, the guard
//! that gives back a grant whose waiter left), `TargetPool`'s checkout,
//! grant, dispatch, plan, release, kill-switch and connect reports, and
//! [`land`](crate::connect::land), which the real dialer calls too. None of
//! it needs a tokio runtime: connects start through the [`Dial`] trait and
//! the clock is only read. Only the connector is fake: a connect is a task
//! that yields, then fails or makes a hyper sender (HTTP/1.1, or HTTP/2
//! with a fixed stream limit already known) over an in-memory pipe that is
//! never read; its connection half is kept unpolled, so the sender stays
//! open. Requests hold their connection across a scheduling point, then
//! give it back as done or abandoned (which closes an HTTP/1.1 one), or
//! as refused (HTTP/2: the connection learns a lower limit and the request
//! goes back to the queue, as the request path does), or give up waiting at
//! a point the checker picks. While requests wait, a reaper task runs the
//! expiry pass a second ahead, which steps learned limits back up and
//! serves the queue.
//!
//! Checked in every execution: no HTTP/1.1 connection has two holders and
//! no HTTP/2 one more than its limit; at every observation (each checkout
//! and an observer task) the counts stay within
//! `max_connections_per_target` and `max_connecting_per_target`, an idle
//! connection is idle in its lifecycle and held by nobody, and a live
//! waiter always has something that will wake it (a connect in flight or a
//! checked-out connection that will come back) and never waits beside a
//! free connection unless a connect is coming; every request ends with a
//! grant or an error, never hanging (shuttle's deadlock check); at the end
//! nothing waits, nothing is reserved for a connect, no stream slot is
//! taken, every open connection is in the pool, every opened one is open
//! or counted closed, and no more were opened than there were requests.
//!
//! Not covered: HTTP/2 settling, stream-limit changes, GOAWAY and
//! draining, `ENHANCE_YOUR_CALM`; expiry and the reaper's timing, rotation, pre-warming, configuration
//! changes at run time, pool shutdown, checkout and connect timeouts
//! (tokio time), and the request path past checkout (hyper). shuttle
//! interleaves at lock acquisitions, at the one
//! [`preemption_point`](crate::sync::preemption_point) in `dispatch` (so a
//! waiter may leave between its check and its grant) and at the tasks' own
//! yields; tokio's oneshot operations are single steps, and memory
//! orderings are not modelled.
//!
//! # Running longer
//!
//! Each scenario runs a fixed number of executions under each scheduler
//! (see [`DEFAULT_ITERATIONS`]); `TOWER_REUSE_MODEL_ITERATIONS` sets
//! another number:
//!
//! ```text
//! TOWER_REUSE_MODEL_ITERATIONS=20000 cargo test -p tower-reuse-pool --lib model
//! ```
//!
//! A failure prints the schedule; `shuttle::replay(scenario, "<schedule>")`
//! runs that one execution again.
//!
//! [shuttle]: https://docs.rs/shuttle

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex as StdMutex, MutexGuard as StdMutexGuard};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use shuttle::future::{JoinHandle, block_on, spawn, yield_now};
use shuttle::rand::{Rng, thread_rng};
use shuttle::scheduler::{PctScheduler, RandomScheduler};
use shuttle::{MaxSteps, Runner};

use super::{Common, Dial, Grant, Http2Parts, Outcome, State, TargetPool};
use crate::config::PoolConfig;
use crate::conn::{ConnId, Protocol, State as Life};
use crate::connect::{Opened, StreamLimit, TransportFacts, land};
use crate::error::Error;
use crate::events::ConnectReason;
use crate::future::Checkout;
use crate::target::Target;

/// Executions per scenario and scheduler, unless
/// `TOWER_REUSE_MODEL_ITERATIONS` says otherwise.
const DEFAULT_ITERATIONS: usize = 1000;

/// Preemptions per PCT execution.
const PCT_DEPTH: usize = 3;

type Body = Empty<Bytes>;

fn iterations() -> usize {
    std::env::var("TOWER_REUSE_MODEL_ITERATIONS")
        .ok()
        .map(|n| n.parse().expect("TOWER_REUSE_MODEL_ITERATIONS is a number"))
        .unwrap_or(DEFAULT_ITERATIONS)
}

/// Run `scenario` under the random and the PCT scheduler.
fn check(scenario: impl Fn() + Send + Sync + 'static) {
    let scenario = Arc::new(scenario);
    let mut config = shuttle::Config::new();
    // Debug builds of hyper's handshake and the pool want more than the default.
    config.stack_size = 0x40000;
    config.max_steps = MaxSteps::FailAfter(100_000);
    let n = iterations();
    let run = scenario.clone();
    Runner::new(RandomScheduler::new(n), config.clone()).run(move || run());
    Runner::new(PctScheduler::new(PCT_DEPTH, n), config).run(move || scenario());
}

/// How the fake connector's connects end.
#[derive(Clone, Copy, Debug)]
enum Connects {
    Succeed,
    Fail,
    /// Each one either way, as the checker chooses.
    Either,
    /// The first succeeds, every later one fails.
    FirstOnly,
}

/// Whether a request may give up while it waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leave {
    Stay,
    /// After a few polls (0 to 3 more), as the checker chooses.
    MayLeave,
}

/// How a request gives its connection back.
#[derive(Clone, Copy, Debug)]
enum GiveBack {
    Done,
    /// Done or abandoned (which closes the connection), as the checker chooses.
    DoneOrAbandoned,
    /// HTTP/2: the server refused the stream; the request goes back to the
    /// queue (as the request path does) and is then done.
    RefusedThenDone,
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    Served(ConnId),
    /// Failed with a connect error.
    ConnectError,
    /// Gave up waiting.
    Left,
}

/// What the fake connections leave behind, kept for as long as the pool
/// lives: the unpolled connection halves (so the pool's senders stay open)
/// and the server ends of the pipes.
type Kept = Arc<StdMutex<Vec<Box<dyn Send>>>>;

/// What the fake server speaks.
#[derive(Clone, Copy, Debug)]
enum Speaks {
    Http1,
    /// HTTP/2, its SETTINGS already read, with this stream limit.
    Http2 {
        streams: usize,
    },
}

/// The fake connector: every connect is a task that yields, then lands.
struct FakeDial {
    connects: Connects,
    speaks: Speaks,
    started: StdMutex<usize>,
    kept: Kept,
    in_flight: StdMutex<Vec<JoinHandle<()>>>,
}

impl Dial<Body> for FakeDial {
    fn dial(
        &self,
        pool: Arc<TargetPool<Body>>,
        reason: ConnectReason,
        direct: Option<Grant<Body>>,
    ) {
        let nth = {
            let mut started = lock(&self.started);
            *started += 1;
            *started
        };
        let fails = match self.connects {
            Connects::Succeed => false,
            Connects::Fail => true,
            Connects::Either => thread_rng().gen_bool(0.5),
            Connects::FirstOnly => nth > 1,
        };
        let (speaks, kept) = (self.speaks, self.kept.clone());
        let task = spawn(async move {
            // Connecting takes a while: anything may happen meanwhile.
            yield_now().await;
            let opened = if fails {
                Err(Error::connect(&pool.target, "connection refused"))
            } else {
                let facts = TransportFacts {
                    tls: None,
                    tls_time: None,
                    max_age: None,
                };
                let opened = fake_connection(speaks, &kept).await;
                Ok((pool.common.next_id(), opened, facts))
            };
            let config = pool.config();
            land(&pool, reason, direct, &config, opened, Duration::ZERO);
        });
        lock(&self.in_flight).push(task);
    }
}

/// A sender over a pipe nothing is ever read from: the handshakes only
/// write (HTTP/2's preface), and the connection halves are never polled.
async fn fake_connection(speaks: Speaks, kept: &Kept) -> Opened<Body> {
    let (client, server) = tokio::io::duplex(1024);
    lock(kept).push(Box::new(server));
    match speaks {
        Speaks::Http1 => {
            let (tx, conn) = http1::handshake(TokioIo::new(client))
                .await
                .expect("an HTTP/1.1 handshake does no I/O");
            lock(kept).push(Box::new(conn));
            Opened::Http1(tx)
        }
        Speaks::Http2 { streams } => {
            let (tx, conn, senders_gone) =
                crate::h2_client::handshake(client, &PoolConfig::default())
                    .await
                    .expect("an HTTP/2 handshake only writes its preface");
            lock(kept).push(Box::new((conn, senders_gone)));
            let parts = Http2Parts {
                limit: Arc::new(FixedLimit(streams)),
                settled: Arc::new(AtomicBool::new(true)),
            };
            Opened::Http2(tx, parts)
        }
    }
}

/// A server's `SETTINGS_MAX_CONCURRENT_STREAMS` that never changes.
#[derive(Debug)]
struct FixedLimit(usize);

impl StreamLimit for FixedLimit {
    fn current(&self) -> usize {
        self.0
    }
}

fn lock<T>(mutex: &StdMutex<T>) -> StdMutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// One target's pool, its fake connector, and who holds what.
struct Model {
    pool: Arc<TargetPool<Body>>,
    dial: Arc<FakeDial>,
    max_connections: usize,
    max_connecting: usize,
    /// Requests holding each connection right now.
    holders: StdMutex<HashMap<ConnId, usize>>,
}

impl Model {
    fn new(uri: &str, config: PoolConfig, speaks: Speaks, connects: Connects) -> Arc<Self> {
        let config = config
            .checkout_timeout(None)
            .http2_prior_knowledge(matches!(speaks, Speaks::Http2 { .. }))
            .validate()
            .expect("a valid config");
        let max_connections = config.per_target_limit();
        let max_connecting = config.max_connecting();
        let dial = Arc::new(FakeDial {
            connects,
            speaks,
            started: StdMutex::new(0),
            kept: Arc::default(),
            in_flight: StdMutex::new(Vec::new()),
        });
        let target = Target::from_uri(&uri.parse().expect("a URI"), None).expect("a target");
        let common = Arc::new(Common::new(config, Arc::new(())));
        let pool = TargetPool::new(target, common, dial.clone());
        Arc::new(Model {
            pool,
            dial,
            max_connections,
            max_connecting,
            holders: StdMutex::new(HashMap::new()),
        })
    }

    /// Requests one connection may carry at once.
    fn per_connection(&self, protocol: Protocol) -> usize {
        match (protocol, self.dial.speaks) {
            (Protocol::Http2, Speaks::Http2 { streams }) => streams,
            _ => 1,
        }
    }

    /// One request: check out (maybe giving up while waiting), hold the
    /// connection for a turn, give it back.
    async fn request(
        self: Arc<Self>,
        avoid: Option<ConnId>,
        leave: Leave,
        give_back: GiveBack,
    ) -> Ended {
        let patience = match leave {
            Leave::Stay => None,
            Leave::MayLeave => Some(thread_rng().gen_range(0..4)),
        };
        let mut refusals = 0;
        loop {
            let mut checkout = match within(Checkout::acquire(&self.pool, avoid), patience).await {
                None => return Ended::Left,
                Some(Err(error)) => {
                    assert!(error.is_connect(), "unexpected error: {error}");
                    return Ended::ConnectError;
                }
                Some(Ok(checkout)) => checkout,
            };
            let id = checkout.id();
            self.hold(id, checkout.protocol);
            // The request runs: others race for the pool meanwhile.
            yield_now().await;
            self.unhold(id);
            let outcome = match give_back {
                GiveBack::DoneOrAbandoned if thread_rng().gen_bool(0.5) => Outcome::Abandoned,
                GiveBack::RefusedThenDone if refusals == 0 => {
                    refusals += 1;
                    Outcome::Refused {
                        refused_stream: true,
                        refusals,
                    }
                }
                _ => Outcome::Done,
            };
            checkout.finish(outcome);
            if outcome == Outcome::Done || outcome == Outcome::Abandoned {
                return Ended::Served(id);
            }
        }
    }

    fn hold(&self, id: ConnId, protocol: Protocol) {
        let holders = {
            let mut holders = lock(&self.holders);
            let count = holders.entry(id).or_default();
            *count += 1;
            *count
        };
        let most = self.per_connection(protocol);
        assert!(holders <= most, "{id} checked out {holders} times at once");
        self.observe();
    }

    fn unhold(&self, id: ConnId) {
        let mut holders = lock(&self.holders);
        if let Some(count) = holders.get_mut(&id) {
            *count -= 1;
            if *count == 0 {
                holders.remove(&id);
            }
        }
    }

    /// Check the invariants that hold whenever the target's lock is free.
    fn observe(&self) {
        let state = self.pool.lock();
        self.check_state(&state);
    }

    fn check_state(&self, state: &State<Body>) {
        let counts = format!(
            "open {} dedicated {} connecting {} idle {} http2 {} waiters {}",
            state.open,
            state.dedicated_open,
            state.connecting,
            state.idle.len(),
            state.h2.len(),
            state.waiters.len()
        );
        assert!(
            state.open + state.dedicated_open + state.connecting <= self.max_connections,
            "over max_connections_per_target: {counts}"
        );
        assert!(
            state.connecting <= self.max_connecting,
            "over max_connecting_per_target: {counts}"
        );
        assert!(state.idle.len() + state.h2.len() <= state.open, "{counts}");
        let holders = lock(&self.holders);
        for conn in &state.idle {
            assert_eq!(conn.life.state(), Life::Idle, "{}", conn.life.id);
            assert!(
                !holders.contains_key(&conn.life.id),
                "{} is idle and checked out",
                conn.life.id
            );
        }
        for conn in &state.h2 {
            let id = conn.life.id;
            let held = holders.get(&id).copied().unwrap_or(0);
            // Granted streams not yet taken up count too.
            assert!(
                held <= conn.streams,
                "{id}: {held} holders, {} streams",
                conn.streams
            );
            assert!(
                conn.streams <= conn.capacity(state.h2_learned),
                "{id} over its limit"
            );
        }
        // No lost wake-up: a waiter still waiting has a connect coming or a
        // checked-out connection that comes back (and is dispatched then).
        if state.waiters.iter().any(|w| !w.tx.is_closed()) {
            let h1_out = state.open > state.idle.len() + state.h2.len();
            let h2_out = state.h2.iter().any(|c| c.streams > 0);
            // A limit learned from a refusal steps up when the reaper
            // probes (the model's reaper task below).
            let now = tokio::time::Instant::now();
            let probing = state.h2.iter().any(|c| c.learned.next_event(now).is_some());
            assert!(
                state.connecting > 0 || h1_out || h2_out || probing,
                "a waiter nothing will wake: {counts}"
            );
            // Only a retry avoiding the one free connection waits beside
            // it, and only while a connect is coming.
            let free = !state.idle.is_empty()
                || state.h2.iter().any(|c| c.has_room(state.h2_learned, now));
            assert!(
                !free || state.connecting > 0,
                "a waiter waits while a connection is free: {counts}"
            );
        }
    }

    /// Let every connect land, then check that everything came back.
    async fn settle(&self) {
        loop {
            let next = lock(&self.dial.in_flight).pop();
            match next {
                Some(task) => task.await.expect("a connect task"),
                None => break,
            }
        }
        let state = self.pool.lock();
        self.check_state(&state);
        assert!(lock(&self.holders).is_empty());
        assert_eq!(state.connecting, 0, "a connect reservation leaked");
        assert_eq!(state.prewarming, 0);
        assert!(state.waiters.is_empty(), "a waiter left behind");
        assert!(
            state.dedicated_waiters.is_empty(),
            "a dedicated waiter left behind"
        );
        assert_eq!(state.dedicated_open, 0, "a dedicated connection leaked");
        assert!(
            state.h2.iter().all(|c| c.streams == 0),
            "an HTTP/2 stream slot leaked"
        );
        assert_eq!(
            state.open,
            state.idle.len() + state.h2.len(),
            "an open connection is neither free nor closed"
        );
        let closed: u64 = state.counters.closed.iter().sum();
        assert_eq!(
            state.counters.opened,
            state.open as u64 + closed,
            "opened connections unaccounted for"
        );
    }

    /// Start `requests`, observing the state until they are done; return how each ended.
    async fn run(self: &Arc<Self>, requests: &[(Leave, GiveBack)]) -> Vec<Ended> {
        let tasks: Vec<_> = requests
            .iter()
            .map(|&(leave, give_back)| spawn(self.clone().request(None, leave, give_back)))
            .collect();
        let observer = spawn(self.clone().watch());
        let reaper = spawn(self.clone().reap());
        let mut ended = Vec::new();
        for task in tasks {
            ended.push(task.await.expect("a request task"));
        }
        observer.abort();
        reaper.abort();
        self.settle().await;
        // A connect serves the queue: never more connections than requests.
        let opened = self.pool.lock().counters.opened;
        assert!(opened as usize <= requests.len(), "{opened} opened");
        ended
    }

    /// The reaper's part in serving waiters: while any wait, run an expiry
    /// pass a second ahead (past every probe interval, short of any
    /// expiry), which steps learned stream limits up and serves the queue.
    async fn reap(self: Arc<Self>) {
        loop {
            let waiting = !self.pool.lock().waiters.is_empty();
            if waiting {
                self.pool
                    .reap(tokio::time::Instant::now() + Duration::from_secs(1));
            }
            yield_now().await;
        }
    }

    /// Check the invariants between other tasks' steps, a few times.
    async fn watch(self: Arc<Self>) {
        for _ in 0..4 {
            self.observe();
            yield_now().await;
        }
    }
}

/// Poll `future` until it is done or, with a `patience`, until it has been
/// polled that many more times; then drop it unpolled (a caller that gave
/// up, maybe with a grant sent since its last poll).
async fn within<F: Future>(future: F, patience: Option<usize>) -> Option<F::Output> {
    let mut future = pin!(future);
    let mut polls = 0;
    poll_fn(|cx| {
        if patience.is_some_and(|patience| polls > patience) {
            return Poll::Ready(None);
        }
        polls += 1;
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        if patience.is_some() {
            // Stay runnable: the scheduler decides when the next turn is.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    })
    .await
}

const HTTP: &str = "http://model.test";
const STAY_DONE: (Leave, GiveBack) = (Leave::Stay, GiveBack::Done);
const LEAVE_DONE: (Leave, GiveBack) = (Leave::MayLeave, GiveBack::Done);
const STAY_EITHER: (Leave, GiveBack) = (Leave::Stay, GiveBack::DoneOrAbandoned);
const LEAVE_EITHER: (Leave, GiveBack) = (Leave::MayLeave, GiveBack::DoneOrAbandoned);

/// Check `requests` racing on a fresh `model`, then `expect` of how they
/// ended and of the settled state.
fn check_requests(
    model: impl Fn() -> Arc<Model> + Send + Sync + 'static,
    requests: &'static [(Leave, GiveBack)],
    expect: impl Fn(&[Ended], &State<Body>) + Send + Sync + 'static,
) {
    check(move || {
        let model = model();
        let ended = block_on(model.run(requests));
        expect(&ended, &model.pool.lock());
    });
}

fn all_served(ended: &[Ended]) -> bool {
    ended.iter().all(|e| matches!(e, Ended::Served(_)))
}

#[test]
fn checkouts_racing_a_checkin_never_share_a_connection() {
    let config = PoolConfig::default().max_connections_per_target(Some(1));
    let model = move || Model::new(HTTP, config.clone(), Speaks::Http1, Connects::Succeed);
    check_requests(model, &[STAY_DONE; 3], |ended, state| {
        assert!(all_served(ended), "{ended:?}");
        assert_eq!(state.counters.opened, 1);
    });
}

#[test]
fn a_waiter_that_leaves_gives_its_grant_back() {
    let config = PoolConfig::default().max_connections_per_target(Some(1));
    let model = move || Model::new(HTTP, config.clone(), Speaks::Http1, Connects::Succeed);
    check_requests(
        model,
        &[STAY_DONE, LEAVE_DONE, LEAVE_DONE],
        |ended, state| {
            assert!(matches!(ended[0], Ended::Served(_)), "{ended:?}");
            // The one connection is back, whoever left with it granted.
            assert_eq!((state.counters.opened, state.idle.len()), (1, 1));
        },
    );
}

#[test]
fn a_connect_landing_as_its_waiter_leaves_is_kept() {
    let config = PoolConfig::default().max_connecting_per_target(Some(2));
    let model = move || Model::new(HTTP, config.clone(), Speaks::Http1, Connects::Succeed);
    check_requests(
        model,
        &[LEAVE_DONE, LEAVE_DONE, STAY_DONE],
        |ended, state| {
            assert!(matches!(ended[2], Ended::Served(_)), "{ended:?}");
            // Connects outlive their waiters: what they opened is pooled.
            assert_eq!(state.counters.opened as usize, state.idle.len());
        },
    );
}

#[test]
fn a_connect_error_reaches_every_waiter() {
    // Over plain HTTP/1.1, and over TLS before ALPN has told the protocol.
    for uri in [HTTP, "https://model.test"] {
        let config = PoolConfig::default().max_connecting_per_target(Some(1));
        let model = move || Model::new(uri, config.clone(), Speaks::Http1, Connects::Fail);
        check_requests(model, &[STAY_DONE; 3], |ended, _| {
            assert!(ended.iter().all(|e| *e == Ended::ConnectError), "{ended:?}");
        });
    }
}

#[test]
fn one_connection_serves_checkouts_one_at_a_time_through_failures() {
    let config = PoolConfig::default()
        .max_connections_per_target(Some(1))
        .max_connecting_per_target(Some(1));
    let model = move || Model::new(HTTP, config.clone(), Speaks::Http1, Connects::Either);
    check_requests(
        model,
        &[STAY_EITHER, STAY_EITHER, LEAVE_EITHER],
        |ended, _| {
            assert!(ended[..2].iter().all(|e| *e != Ended::Left), "{ended:?}");
        },
    );
}

#[test]
fn kill_switch_connections_stay_within_limits() {
    let config = PoolConfig::default()
        .reuse(false)
        .max_connections_per_target(Some(1));
    let model = move || Model::new(HTTP, config.clone(), Speaks::Http1, Connects::Either);
    check_requests(
        model,
        &[STAY_DONE, STAY_DONE, LEAVE_DONE],
        |ended, state| {
            assert!(ended[..2].iter().all(|e| *e != Ended::Left), "{ended:?}");
            // Each request had its own connection, closed after it.
            assert_eq!(state.open, 0);
        },
    );
}

#[test]
fn http2_streams_share_a_connection_within_the_servers_limit() {
    let config = PoolConfig::default().max_connections_per_target(Some(1));
    let http2 = Speaks::Http2 { streams: 2 };
    let model = move || Model::new(HTTP, config.clone(), http2, Connects::Succeed);
    check_requests(
        model,
        &[STAY_EITHER, STAY_EITHER, LEAVE_EITHER],
        |ended, state| {
            assert!(all_served(&ended[..2]), "{ended:?}");
            assert_eq!(state.counters.opened, 1);
        },
    );
}

/// A refused stream lowers its connection's limit to the streams still in
/// flight and goes back to the queue: it is served by a stream that ends
/// there or by a new connection within the cap, never lost (every request
/// served, no waiter left, no slot leaked, no more connections than
/// requests).
#[test]
fn a_refused_stream_goes_back_to_the_queue_and_is_served() {
    let config = PoolConfig::default().max_connections_per_target(Some(2));
    let http2 = Speaks::Http2 { streams: 2 };
    let model = move || Model::new(HTTP, config.clone(), http2, Connects::Succeed);
    const REFUSED: (Leave, GiveBack) = (Leave::Stay, GiveBack::RefusedThenDone);
    check_requests(
        model,
        &[REFUSED, STAY_DONE, REFUSED, LEAVE_DONE],
        |ended, _| {
            assert!(all_served(&ended[..3]), "{ended:?}");
        },
    );
}

/// A retry's connection (here an HTTP/2 one that refused its stream) is
/// avoided while another connection is coming; when that connect fails,
/// nothing else is coming and the retry goes back to it. The connect
/// error used to be handed out before the queue was served again, so the
/// retry (and the request queued behind it) failed although the
/// connection had room.
#[test]
fn a_retry_falls_back_to_the_connection_it_avoids() {
    check(|| {
        block_on(async {
            let config = PoolConfig::default().max_connections_per_target(Some(2));
            let http2 = Speaks::Http2 { streams: 4 };
            let model = Model::new(HTTP, config, http2, Connects::FirstOnly);
            // A first request opens the connection.
            let Ended::Served(first) = model
                .clone()
                .request(None, Leave::Stay, GiveBack::Done)
                .await
            else {
                panic!("the first connect succeeds");
            };
            model.settle().await;
            // Its retry avoids it and waits for a connect, which fails.
            let retry = spawn(
                model
                    .clone()
                    .request(Some(first), Leave::Stay, GiveBack::Done),
            );
            let other = spawn(model.clone().request(None, Leave::Stay, GiveBack::Done));
            let retry = retry.await.expect("a request task");
            let other = other.await.expect("a request task");
            model.settle().await;
            assert_eq!((retry, other), (Ended::Served(first), Ended::Served(first)));
        })
    });
}
