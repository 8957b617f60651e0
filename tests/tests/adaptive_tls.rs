//! The adaptive controller and the pool's TLS session cache, over an
//! in-memory TLS server on paused time: after a burst of connects larger
//! than the cache keeps tickets for, the controller gives each server
//! enough tickets that the next bursts resume every connection.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use tower::Layer;
use tower_reuse_adaptive::{AdaptiveConfig, AdaptiveLayer, Mode};
use tower_reuse_pool::tls::{SessionCache, SessionCacheConfig, TlsLayer};
use tower_reuse_pool::{PoolConfig, PoolLayer, Target};
use tower_reuse_tests::tls_server::{Alpn, TestCa, TlsServer, TlsServerOptions};
use tower_reuse_tests::{concurrently, get, send};

const BURST: u64 = 24;

#[tokio::test(start_paused = true)]
async fn bursts_of_connects_get_a_ticket_each() {
    for mode in [Mode::On, Mode::Off] {
        let ca = TestCa::new("adaptive-tickets-ca");
        let server = TlsServer::in_memory(
            &ca,
            TlsServerOptions {
                alpn: Alpn::Http1Only,
                tickets_per_handshake: Some(2),
                // Every hello of a burst goes out before its first ticket
                // comes back.
                handshake_delay: Some(std::time::Duration::from_secs(1)),
                ..TlsServerOptions::default()
            },
        );
        let cache = SessionCache::new(SessionCacheConfig::default().tickets_per_server(4)).unwrap();
        let adaptive = AdaptiveLayer::new(AdaptiveConfig::default().mode(mode))
            .unwrap()
            .session_cache(cache.clone());
        let tls =
            TlsLayer::new(Arc::new(ca.client_config(None))).session_cache(Some(cache.clone()));
        // A connection per request (the kill switch): every request is a
        // TLS connect.
        let config = PoolConfig::default()
            .reuse(false)
            .max_connecting_per_target(Some(BURST as usize));
        let pool = PoolLayer::<Full<Bytes>>::new(config)
            .unwrap()
            .events(adaptive.pool_events());
        let client = adaptive.layer(pool.layer(tls.layer(server.connector())));
        let control = tower_reuse_pool::PoolHandle::pool_control(&client);
        let url = server.url("/");
        let mut full = Vec::new();
        for round in 0..3 {
            let before = control.snapshot().total(|t| t.tls_full());
            let sent = concurrently(BURST, |i| {
                let mut client = client.clone();
                let url = url.clone();
                async move { send(&mut client, get(&url, round * 100 + i)).await }
            })
            .await;
            assert!(sent.iter().all(Result::is_ok));
            full.push(control.snapshot().total(|t| t.tls_full()) - before);
            adaptive.handle().tick();
        }
        // The server holds each handshake a second: the TLS part of the
        // connect time, measured on its own.
        let target = Target::from_uri(&url.parse().unwrap(), None).unwrap();
        let snapshot = adaptive.handle().snapshot();
        let estimates = snapshot.target(&target).expect("tracked");
        let tls = estimates.tls_handshake_p50.expect("TLS handshakes timed");
        assert!(tls >= std::time::Duration::from_secs(1), "{tls:?}");
        assert!(estimates.connect_p50.is_some_and(|c| c >= tls));
        match mode {
            // The first round's tickets were kept 4 at most; the second
            // round's, one per connection of a burst and a quarter more.
            Mode::On => {
                assert_eq!(full, [BURST, BURST - 4, 0]);
                assert_eq!(cache.tickets_per_server(), 30);
            }
            _ => {
                assert_eq!(full, [BURST, BURST - 4, BURST - 4]);
                assert_eq!(cache.tickets_per_server(), 4);
            }
        }
    }
}
