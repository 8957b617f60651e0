//! TLS for the pool, with rustls (feature `tls`).
//!
//! - [`TlsLayer`] / [`TlsConnector`]: rustls over any transport connector,
//!   taking your `Arc<rustls::ClientConfig>` (the library picks no crypto
//!   provider). ALPN feeds the pool's choice of HTTP/1.1 or HTTP/2; the
//!   handshake kind (full, full with retry, resumed) of every connection
//!   reaches the pool; TLS 1.3 key updates on a schedule; a maximum age.
//! - [`SessionCache`]: resumption sized for connect bursts, bounded, with
//!   one scope per [`Partition`](crate::Partition): a session ticket never
//!   crosses tenants.
//! - [`TlsError`]: why a TLS connect failed, as the pool error's source.

mod connector;
mod error;
mod io;
mod session_cache;

pub use connector::{TlsConnector, TlsLayer, TlsStats};
pub use error::{TlsError, TlsErrorKind};
pub use io::TlsIo;
pub use session_cache::{SessionCache, SessionCacheConfig, SessionCacheStats};
