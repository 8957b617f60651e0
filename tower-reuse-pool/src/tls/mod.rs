//! TLS for the pool's connections (feature `tls`).
//!
//! The library never picks a crypto provider: the application builds the
//! `rustls::ClientConfig` with the provider it wants, and this module adds
//! what a pool needs on top. [`SessionCache`] keeps TLS session tickets per
//! partition and server, bounded and sized for reconnect bursts, so that a
//! pool reopening many connections at once resumes them instead of paying a
//! full handshake each.

mod session_cache;

pub use session_cache::{SessionCache, SessionCacheConfig, SessionCacheStats};
