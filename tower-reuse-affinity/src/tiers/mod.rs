//! Hot and cold tiers: which keys get a dedicated pool.
//!
//! [`TierConfig`] holds the rules; the controller ([`Tiers`]) applies them
//! to the request rates it measures per key, over sliding windows of
//! fixed-size rings of buckets, and reports every change of tier with the
//! inputs that decided it.

mod change;
mod config;
mod controller;
mod pools;
mod table;
#[cfg(test)]
mod tests;
mod window;

pub use change::Tier;
pub use config::TierConfig;
pub use pools::{DedicatedSnapshot, KeyTierSnapshot, TiersSnapshot};
pub(crate) use pools::{InFlight, TierPools};
