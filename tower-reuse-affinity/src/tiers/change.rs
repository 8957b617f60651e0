//! What the tier controller reports: a key's tier, its changes with the
//! inputs that decided them, and its state in a snapshot.

use std::time::Duration;

/// Which pool a tier key's requests use.
///
/// ```
/// use tower_reuse_affinity::Tier;
///
/// assert_eq!(Tier::default(), Tier::Cold);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Tier {
    /// The shared pool, whose connections live short. Every key starts
    /// here.
    #[default]
    Cold,
    /// A pool of the key's own, with a reservation out of the connection
    /// budget and a longer idle timeout.
    Dedicated,
}

/// A key's move between tiers, with the inputs that decided it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TierChange {
    /// The tier key, as the layer hashed it.
    pub(crate) key: u64,
    /// Promotion or demotion, and why.
    pub(crate) kind: ChangeKind,
    /// The key's request rate (requests per second) over `rate_window`, the
    /// window its rule reads: the promote window for a promotion and a
    /// displacement, the demote window for a demotion for coldness or
    /// idleness.
    pub(crate) rate: f64,
    /// The window `rate` is measured over.
    pub(crate) rate_window: Duration,
    /// The most requests of the key in flight at once over the promote
    /// window: what a dedicated pool's warm connections should cover.
    pub(crate) peak_concurrency: u32,
    /// How long the key had been dedicated (zero for a promotion).
    pub(crate) dedicated_for: Duration,
}

/// Which way a key moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    /// From the shared pool to a dedicated one: its rate over the promote
    /// window reached `promote_rps` after it had been tracked that long.
    Promoted,
    /// From its dedicated pool back to the shared one.
    Demoted {
        /// Why.
        reason: DemoteReason,
    },
}

/// Why a dedicated key went back to the shared pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DemoteReason {
    /// Its rate over the demote window fell below `demote_rps`, after it
    /// had been dedicated for at least that window.
    Cold,
    /// No request for `idle_retire_after`, and none in flight.
    Idle,
    /// Every dedicated slot was taken and a hotter key needed one: this was
    /// the coldest dedicated key, and the other's rate beat its own by the
    /// displacement margin.
    Displaced {
        /// The key promoted in its place.
        by: u64,
    },
}

/// What one request did to its key's tier, from
/// [`Tiers::record`](super::Tiers::record).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Recorded {
    /// The key's tier now, this request's included.
    pub(crate) tier: Tier,
    /// The coldest dedicated key, retired to make room for this one.
    pub(crate) displaced: Option<TierChange>,
    /// This key's promotion, when this request made it.
    pub(crate) promoted: Option<TierChange>,
}

impl Recorded {
    pub(crate) fn tier(tier: Tier) -> Self {
        Recorded {
            tier,
            displaced: None,
            promoted: None,
        }
    }

    /// The changes in the order to act on them: the displaced key's
    /// retirement (which frees its reservation) before the promotion.
    pub(crate) fn changes(self) -> impl Iterator<Item = TierChange> {
        self.displaced.into_iter().chain(self.promoted)
    }
}

/// One tracked key, from [`Tiers::snapshot`](super::Tiers::snapshot).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct KeySnapshot {
    /// The tier key, as the layer hashed it.
    pub(crate) key: u64,
    /// Its tier.
    pub(crate) tier: Tier,
    /// Requests per second over the promote window.
    pub(crate) rate: f64,
    /// The most requests in flight at once over the promote window.
    pub(crate) peak_concurrency: u32,
    /// Requests in flight now.
    pub(crate) in_flight: u32,
}
