//! The adaptive controller over the affinity layer's hot and cold tiers
//! over one pool, on paused time against an in-process server. Affinity
//! picks a service's tier (the hot tier's 30 s idle timeout and warm
//! connections, or the cold tier's 1.5 s), the controller tunes the
//! service's target within it, and the two never fight: one promotion and
//! no demotion under a steady load, a few controller changes at most after
//! warm-up, none from a load inside both dead bands, and a service gone
//! quiet demoted once and left at the cold tier's idle timeout, whatever
//! the controller had set while it was hot.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tower_reuse_adaptive::events::{AdaptiveEvents, Change, Decision};
use tower_reuse_adaptive::{Adaptive, AdaptiveConfig, AdaptiveHandle, AdaptiveLayer};
use tower_reuse_affinity::events::{AffinityEvents, Demoted, Promoted};
use tower_reuse_affinity::{Affinity, AffinityConfig, AffinityLayer, TierConfig};
use tower_reuse_pool::events::{CloseReason, Closed, ConnectStarted, PoolEvents};
use tower_reuse_pool::{Pool, PoolConfig, PoolControl, PoolLayer, Target};
use tower_reuse_tests::duplex::DuplexConnector;
use tower_reuse_tests::server::ServerOptions;
use tower_reuse_tests::{concurrently, get};

const URL: &str = "http://tiers.test/";

/// The tiers' idle timeouts (their defaults).
const HOT: Duration = Duration::from_secs(30);
const COLD: Duration = Duration::from_millis(1500);

/// The controller's tick (its default).
const TICK: Duration = Duration::from_secs(1);

/// Bursts of 10 requests this far apart: 8 requests per second, above the
/// tiers' promote rate (5/s), and idle gaps the controller keeps
/// connections for longer than the cold tier's idle timeout allows.
const GAP: Duration = Duration::from_millis(1200);

/// Promoted after 5 s, tuned within the hot tier by then.
const WARM_UP: Duration = Duration::from_secs(30);

/// The idle timeout in force for the target, and its tier's.
type Timeouts = (Option<Duration>, Option<Duration>);

/// What happened, in order, each at its time.
#[derive(Clone, Debug, PartialEq)]
enum Entry {
    Promoted,
    Demoted,
    /// A controller decision, and the idle timeout the target had then
    /// without the controller (its tier's).
    Decided {
        change: Change,
        tier: Option<Duration>,
    },
    Connect,
    Closed(CloseReason),
    /// The idle timeout in force for the target, and its tier's.
    Sampled {
        effective: Option<Duration>,
        tier: Option<Duration>,
    },
}

/// Every layer's hook, and the samples, in one log.
#[derive(Clone, Debug, Default)]
struct Log {
    entries: Arc<Mutex<Vec<(Instant, Entry)>>>,
    control: Arc<OnceLock<PoolControl>>,
}

impl Log {
    fn push(&self, entry: Entry) {
        let at = Instant::now();
        self.entries.lock().unwrap().push((at, entry));
    }

    /// The entries from `from` on that `pick` keeps.
    fn since<T>(&self, from: Instant, pick: impl Fn(&Entry) -> Option<T>) -> Vec<(Instant, T)> {
        let entries = self.entries.lock().unwrap();
        let from_on = entries.iter().filter(|(at, _)| *at >= from);
        from_on
            .filter_map(|(at, e)| Some((*at, pick(e)?)))
            .collect()
    }

    fn count(&self, from: Instant, entry: &Entry) -> usize {
        self.since(from, |e| (e == entry).then_some(())).len()
    }

    /// Each decision with its change, and the tier's idle timeout then.
    fn decisions(&self, from: Instant) -> Vec<(Instant, (Change, Option<Duration>))> {
        self.since(from, |e| match e {
            Entry::Decided { change, tier } => Some((*change, *tier)),
            _ => None,
        })
    }

    /// Each sample: the effective idle timeout, and the tier's.
    fn samples(&self, from: Instant) -> Vec<(Instant, Timeouts)> {
        self.since(from, |e| match e {
            Entry::Sampled { effective, tier } => Some((*effective, *tier)),
            _ => None,
        })
    }

    fn sample(&self) {
        let (effective, tier) = idle_timeouts(self.control.get().expect("stacked"));
        self.push(Entry::Sampled { effective, tier });
    }
}

/// The idle timeout `target` has without settings of its own: its
/// service's (a dedicated pool's), or the pool's (the cold tier's).
fn tier_idle_timeout(control: &PoolControl, target: &Target) -> Option<Duration> {
    let service = control.service_config(target);
    service
        .and_then(|s| s.get_idle_timeout())
        .unwrap_or(control.config().get_idle_timeout())
}

/// The idle timeout in force for the test's target (its own, set by the
/// controller, over its tier's), and its tier's.
fn idle_timeouts(control: &PoolControl) -> Timeouts {
    let target = target();
    let tier = tier_idle_timeout(control, &target);
    let own = control.target_config(&target);
    let effective = own.and_then(|own| own.get_idle_timeout()).unwrap_or(tier);
    (effective, tier)
}

impl AdaptiveEvents for Log {
    fn on_decision(&self, decision: &Decision) {
        let control = self.control.get().expect("stacked");
        let tier = tier_idle_timeout(control, decision.target());
        let change = decision.change();
        self.push(Entry::Decided { change, tier });
    }
}

impl AffinityEvents for Log {
    fn on_promoted(&self, _: &Promoted<'_>) {
        self.push(Entry::Promoted);
    }

    fn on_demoted(&self, _: &Demoted<'_>) {
        self.push(Entry::Demoted);
    }
}

impl PoolEvents for Log {
    fn on_connect_start(&self, _: &ConnectStarted<'_>) {
        self.push(Entry::Connect);
    }

    fn on_close(&self, event: &Closed<'_>) {
        self.push(Entry::Closed(event.reason()));
    }
}

type Client = Adaptive<Affinity<Pool<DuplexConnector>>>;

struct Rig {
    client: Client,
    log: Log,
    control: PoolControl,
    adaptive: AdaptiveHandle,
}

/// The controller (defaults) over the tiers (defaults) over a pool
/// (defaults), to an in-process server answering in 5 ms; the target's
/// idle timeout sampled every 100 ms.
fn rig() -> Rig {
    let log = Log::default();
    let adaptive = AdaptiveLayer::with_events(AdaptiveConfig::default(), log.clone()).unwrap();
    let options = ServerOptions {
        delay: Some(Duration::from_millis(5)),
        ..ServerOptions::default()
    };
    let pool = PoolLayer::<Full<Bytes>>::new(PoolConfig::default())
        .unwrap()
        .events((log.clone(), adaptive.pool_events()))
        .layer(DuplexConnector::new(options));
    let control = pool.control();
    log.control.set(control.clone()).unwrap();
    let tiers = AffinityConfig::default().tiers(Some(TierConfig::default()));
    let affinity = AffinityLayer::new(tiers).unwrap().events(log.clone());
    let client = adaptive.layer(affinity.layer(pool));
    let sampler = log.clone();
    tokio::spawn(async move {
        // At most 1 000 s of paused time: longer than any test here.
        for _ in 0..10_000 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            sampler.sample();
        }
    });
    Rig {
        client,
        log,
        control,
        adaptive: adaptive.handle(),
    }
}

fn target() -> Target {
    Target::from_uri(&URL.parse().unwrap(), None).unwrap()
}

impl Rig {
    /// Bursts of `size` concurrent requests, the gaps after them taken in
    /// turn from `gaps`, for `lasting` (at most 1 000 bursts).
    async fn bursts(&self, size: u64, gaps: &[Duration], lasting: Duration) {
        let end = Instant::now() + lasting;
        for gap in gaps.iter().cycle().take(1000) {
            if Instant::now() >= end {
                return;
            }
            concurrently(size, |id| {
                let mut client = self.client.clone();
                async move {
                    let response = client.ready().await.unwrap().call(get(URL, id));
                    let body = response.await.unwrap().into_body();
                    body.collect().await.unwrap();
                }
            })
            .await;
            tokio::time::sleep(*gap).await;
        }
    }

    /// The idle timeout in force for the target now.
    fn effective_idle_timeout(&self) -> Option<Duration> {
        idle_timeouts(&self.control).0
    }

    /// The idle timeout the gaps ask of the controller now (1.5 times
    /// their 99th percentile), and the service's rate as the tiers see it.
    fn asked(&self) -> (Duration, f64) {
        let estimates = self.adaptive.snapshot();
        let gap = estimates.target(&target()).and_then(|t| t.gap_p99);
        let tiers = self.client.get_ref().tiers().unwrap();
        (gap.unwrap().mul_f64(1.5), tiers.keys[0].rate)
    }
}

/// Every controller decision kept the idle timeout within the tier the
/// target was in when it was made, and above the controller's floor.
fn assert_within_the_tiers(log: &Log, from: Instant) {
    for (at, (change, tier)) in log.decisions(from) {
        if let Change::IdleTimeout { to, .. } = change {
            let within = to.zip(tier).is_some_and(|(to, tier)| to <= tier);
            assert!(within, "{at:?}: {change:?} beyond the tier's {tier:?}");
            assert!(to >= Some(Duration::from_millis(100)), "{change:?}");
        }
    }
}

/// A steady load makes the service hot once; the controller shortens the
/// hot tier's idle timeout to what the gaps need, inside the tier, and
/// after warm-up it changes at most 3 settings in 60 s (none here): no
/// connection opens or closes, no demotion.
#[tokio::test(start_paused = true)]
async fn a_steady_hot_service_is_promoted_once_and_tuned_within_its_tier() {
    let rig = rig();
    let start = Instant::now();
    rig.bursts(10, &[GAP], WARM_UP).await;
    let warm = Instant::now();
    rig.bursts(10, &[GAP], Duration::from_secs(60)).await;
    let log = &rig.log;
    let promoted = log.since(start, |e| (*e == Entry::Promoted).then_some(()));
    assert_eq!(promoted.len(), 1, "promoted once");
    assert!(promoted[0].0 < warm, "promoted during warm-up");
    assert_eq!(log.count(start, &Entry::Demoted), 0);
    let changes = log.decisions(warm);
    assert!(changes.len() <= 3, "{changes:?}");
    assert_within_the_tiers(log, start);
    // No churn: the connections of the first bursts serve them all.
    assert_eq!(log.count(warm, &Entry::Connect), 0);
    let closes = log.since(warm, |e| matches!(e, Entry::Closed(_)).then_some(()));
    assert!(closes.is_empty());
    for (at, (effective, tier)) in log.samples(start) {
        let under = effective.zip(tier).is_some_and(|(e, t)| e <= t && t <= HOT);
        assert!(under, "{at:?}: {effective:?} over the tier's {tier:?}");
    }
    // The controller did tune it: shorter than the hot tier's.
    let effective = rig.effective_idle_timeout().unwrap();
    assert!(effective < HOT, "{effective:?}");
    assert!(!log.decisions(start).is_empty());
}

/// The load stops: the service is demoted once, and from the controller's
/// next tick on its target has the cold tier's idle timeout or shorter,
/// though the controller had kept connections longer than that while it
/// was hot; over the next 60 s of quiet, no promotion and at most a few
/// changes. Its connections are gone by the end.
#[tokio::test(start_paused = true)]
async fn a_service_gone_quiet_is_demoted_once_and_keeps_the_cold_tiers_idle_timeout() {
    let rig = rig();
    let start = Instant::now();
    rig.bursts(10, &[GAP], WARM_UP).await;
    // The case under test: the controller's own idle timeout is longer
    // than the cold tier's.
    let before = rig.effective_idle_timeout().unwrap();
    assert!(before > COLD && before < HOT, "{before:?}");
    let stopped = Instant::now();
    // Demoted within two minutes of quiet (the tiers' 30 s window).
    let demoted_at = {
        let mut at = None;
        for _ in 0..120 {
            tokio::time::sleep(TICK).await;
            let demoted = rig
                .log
                .since(stopped, |e| (*e == Entry::Demoted).then_some(()));
            if let Some((when, ())) = demoted.first() {
                at = Some(*when);
                break;
            }
        }
        at.expect("demoted once quiet")
    };
    tokio::time::sleep(Duration::from_secs(60)).await;
    let log = &rig.log;
    assert_eq!(log.count(start, &Entry::Promoted), 1, "no second promotion");
    assert_eq!(log.count(start, &Entry::Demoted), 1);
    for (at, (effective, _)) in log.samples(demoted_at + TICK) {
        assert!(
            effective.is_some_and(|e| e <= COLD),
            "{:?} after the demotion: {effective:?} over the cold tier's",
            at - demoted_at
        );
    }
    let changes = log.decisions(demoted_at);
    assert!(changes.len() <= 3, "{changes:?}");
    assert_within_the_tiers(log, start);
    let open = rig
        .control
        .snapshot()
        .target(&target())
        .map_or(0, |t| t.idle() + t.active() + t.connecting());
    assert_eq!(open, 0);
}

/// After warm-up, half the load (between the tiers' demote and promote
/// rates) with gaps that move within the controller's dead band: neither
/// layer changes anything.
#[tokio::test(start_paused = true)]
async fn a_load_inside_both_dead_bands_changes_nothing() {
    let rig = rig();
    let start = Instant::now();
    rig.bursts(10, &[GAP], WARM_UP).await;
    assert!(!rig.log.decisions(start).is_empty(), "tuned in warm-up");
    let warm = Instant::now();
    let (before, _) = rig.asked();
    let gaps = [Duration::from_millis(1000), Duration::from_millis(1400)];
    rig.bursts(5, &gaps, Duration::from_secs(60)).await;
    // The load moved, inside both bands.
    let (asked, rate) = rig.asked();
    let current = rig.effective_idle_timeout().unwrap();
    assert!(asked > before, "{asked:?} against {before:?}");
    assert!(
        asked.abs_diff(current) < current / 4,
        "{asked:?} against {current:?}"
    );
    assert!(rate > 1.0 && rate < 5.0, "{rate}");
    let log = &rig.log;
    assert_eq!(log.decisions(warm), vec![]);
    assert_eq!(log.count(start, &Entry::Promoted), 1);
    assert_eq!(log.count(start, &Entry::Demoted), 0);
}
