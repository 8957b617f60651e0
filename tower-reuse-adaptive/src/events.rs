//! The `AdaptiveEvents` hook: every decision the controller makes, with
//! its inputs and its reason, so that a dashboard can show why.
//!
//! Every method has a no-op default and `()` implements the trait. Methods
//! are called from the controller's task, outside its locks; they must not
//! block.

use std::time::Duration;

use tower_reuse_pool::Target;

/// Receives the controller's decisions. See the [module docs](self).
///
/// ```
/// use tower_reuse_adaptive::events::{AdaptiveEvents, Decision};
///
/// #[derive(Debug)]
/// struct Log;
///
/// impl AdaptiveEvents for Log {
///     fn on_decision(&self, decision: &Decision) {
///         println!(
///             "{}: {:?} because {:?} (applied: {})",
///             decision.target(),
///             decision.change(),
///             decision.reason(),
///             decision.applied()
///         );
///     }
/// }
/// ```
pub trait AdaptiveEvents: Send + Sync + 'static {
    /// The controller changed (or, observing only, would have changed) one
    /// of a target's settings.
    fn on_decision(&self, _decision: &Decision) {}
}

impl AdaptiveEvents for () {}

/// Two hooks, each told every event, the first first.
impl<A: AdaptiveEvents, B: AdaptiveEvents> AdaptiveEvents for (A, B) {
    fn on_decision(&self, decision: &Decision) {
        self.0.on_decision(decision);
        self.1.on_decision(decision);
    }
}

/// One setting's change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// `idle_timeout` (`None`: none).
    IdleTimeout {
        /// Before.
        from: Option<Duration>,
        /// After.
        to: Option<Duration>,
    },
    /// `min_idle_per_target`.
    MinIdle {
        /// Before.
        from: usize,
        /// After.
        to: usize,
    },
    /// `max_idle_per_target` (`None`: no cap).
    MaxIdle {
        /// Before.
        from: Option<usize>,
        /// After.
        to: Option<usize>,
    },
    /// `max_requests_per_connection` (`None`: no limit).
    MaxRequests {
        /// Before.
        from: Option<u64>,
        /// After.
        to: Option<u64>,
    },
    /// The TLS session cache's tickets per server (feature `tls`), for
    /// every server: the decision names the target with the largest
    /// connect burst.
    TlsTickets {
        /// Before.
        from: usize,
        /// After.
        to: usize,
    },
}

impl Change {
    /// The setting's name, as in `PoolConfig` and `SessionCacheConfig`:
    /// `"idle_timeout"`, `"min_idle_per_target"`, `"max_idle_per_target"`,
    /// `"max_requests_per_connection"` or `"tickets_per_server"`.
    pub fn knob(&self) -> &'static str {
        match self {
            Change::IdleTimeout { .. } => "idle_timeout",
            Change::MinIdle { .. } => "min_idle_per_target",
            Change::MaxIdle { .. } => "max_idle_per_target",
            Change::MaxRequests { .. } => "max_requests_per_connection",
            Change::TlsTickets { .. } => "tickets_per_server",
        }
    }
}

/// Why a setting changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The server closes connections idle this long
    /// ([`Inputs::server_idle_limit`]): the pool closes them first, by
    /// [`Inputs::margin`].
    ServerIdleLimit,
    /// The idle gaps between a connection's requests
    /// ([`Inputs::gap_p99`], and [`Inputs::miss_floor`] for the gaps a
    /// connect paid for): connections are kept as long as the workload's
    /// gaps need, and no longer.
    IdleGaps,
    /// The server closes a connection after this many requests
    /// ([`Inputs::request_limit`]): the pool retires it there and opens
    /// its replacement before its last request.
    RequestLimit,
    /// Bursts come at a steady period ([`Inputs::period`]) with gaps
    /// longer than connections live: connections are kept warm for the
    /// next one ([`Inputs::burst_peak`]).
    PeriodicBurst,
    /// The bursts stopped, or no longer need connections kept warm: the
    /// warm connections are released, at most half of them per decision.
    Released,
    /// The most requests in flight over the window ([`Inputs::peak`]):
    /// idle connections beyond it (with a quarter more, the dead band) are
    /// not kept. Raised at once when the load needs more; lowered at most
    /// by half per decision.
    RecentPeak,
    /// TLS connects come in bursts ([`Inputs::connect_burst`]): the
    /// session cache keeps a ticket for each connection of a burst, so
    /// that all of them resume; released gradually when bursts shrink.
    ConnectBursts,
    /// The controller was switched off, the target's own settings
    /// changed, what it inherits fell below the controller's value (a
    /// tier's demotion), or the target was forgotten (quiet for
    /// `forget_after`): its setting is taken back.
    Restored,
}

impl Reason {
    /// A short snake_case name, for metrics attributes.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ServerIdleLimit => "server_idle_limit",
            Reason::IdleGaps => "idle_gaps",
            Reason::RequestLimit => "request_limit",
            Reason::PeriodicBurst => "periodic_burst",
            Reason::Released => "released",
            Reason::RecentPeak => "recent_peak",
            Reason::ConnectBursts => "connect_bursts",
            Reason::Restored => "restored",
        }
    }
}

/// What the controller saw of a target when it decided, over its window.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Inputs {
    /// Requests per second (checkouts) over the window.
    pub rate: f64,
    /// The most requests in flight at once in the window.
    pub peak: usize,
    /// Connections open to the target at the tick.
    pub open: usize,
    /// The 99th percentile of the idle gaps at which connections were
    /// reused (or would have been, had they not expired).
    pub gap_p99: Option<Duration>,
    /// The server's idle timeout, as learned from its closes.
    pub server_idle_limit: Option<Duration>,
    /// How far below `server_idle_limit` the pool closes.
    pub margin: Option<Duration>,
    /// The server's request limit per connection, as learned.
    pub request_limit: Option<u64>,
    /// The period of the target's bursts, when steady.
    pub period: Option<Duration>,
    /// The most requests in flight in the recent bursts.
    pub burst_peak: Option<usize>,
    /// The most TLS connects to the target in one tenth of the window.
    pub connect_burst: u64,
    /// The idle timeout the recent missed reuses ask for: 1.5 times the
    /// median idle gap of the connections that expired before a request
    /// came that a connect then served (kept for `forget_after`).
    pub miss_floor: Option<Duration>,
}

/// A change of one target's setting. See [`AdaptiveEvents`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Decision {
    pub(crate) target: Target,
    pub(crate) change: Change,
    pub(crate) reason: Reason,
    pub(crate) applied: bool,
    pub(crate) inputs: Inputs,
}

impl Decision {
    /// The target.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The setting and its values.
    pub fn change(&self) -> Change {
        self.change
    }

    /// Why.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// Whether the pool took it: `false` while observing only, or when the
    /// pool refused the setting (it conflicted with the target's other
    /// limits).
    pub fn applied(&self) -> bool {
        self.applied
    }

    /// What the controller saw.
    pub fn inputs(&self) -> &Inputs {
        &self.inputs
    }
}
