//! Hot and cold tiers: which keys get a dedicated pool.
//!
//! [`TierConfig`] holds the rules; the controller ([`Tiers`]) applies them
//! to the request rates it measures per key, over sliding windows of
//! fixed-size rings of buckets, and reports every change of tier with the
//! inputs that decided it.

// The layer drives the controller; until it does, only the tests call it.
#[cfg_attr(not(test), allow(dead_code))]
mod change;
mod config;
#[cfg_attr(not(test), allow(dead_code))]
mod controller;
mod table;
#[cfg(test)]
mod tests;
mod window;

pub use change::Tier;
#[cfg_attr(not(test), allow(unused_imports))]
pub(crate) use change::{ChangeKind, DemoteReason, KeySnapshot, TierChange};
pub use config::TierConfig;
#[cfg_attr(not(test), allow(unused_imports))]
pub(crate) use controller::Tiers;
