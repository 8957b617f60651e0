use std::sync::LazyLock;

use rustls::client::Resumption;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::version::{TLS12, TLS13};
use rustls::{
    ClientConfig, ClientConnection, Connection, HandshakeKind, RootCertStore, ServerConfig,
    ServerConnection, SupportedProtocolVersion,
};

use super::*;

/// A server for `localhost` with a self-signed certificate, made once: key
/// generation is the slow part.
struct Pki {
    server: Arc<ServerConfig>,
    roots: RootCertStore,
}

static PKI: LazyLock<Pki> = LazyLock::new(|| {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = certified.cert.der().clone();
    let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], PrivateKeyDer::Pkcs8(key))
        .unwrap();
    // Stateless tickets: resumption never depends on server-side capacity
    // shared by the tests running at once.
    server.ticketer = rustls::crypto::ring::Ticketer::new().unwrap();
    server.send_tls13_tickets = 2;
    let mut roots = RootCertStore::empty();
    roots.add(cert).unwrap();
    Pki {
        server: Arc::new(server),
        roots,
    }
});

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration trusting [`PKI`]. Resumption needs the same
/// verifier, so a test makes one and hands clones of it to [`handshake`].
fn client_config(versions: &[&'static SupportedProtocolVersion]) -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(PKI.roots.clone())
        .with_no_client_auth()
}

fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

/// Starts a connection to [`PKI`]'s server with `store` as its session
/// store. Its hello, built here, has already taken a ticket if any.
fn connect(config: &ClientConfig, store: Arc<dyn ClientSessionStore>) -> Connection {
    let mut config = config.clone();
    config.resumption = Resumption::store(store);
    Connection::from(ClientConnection::new(Arc::new(config), localhost()).unwrap())
}

/// Completes `client`'s handshake in memory, through the tickets the server
/// sends after it, and tells whether it resumed.
fn complete(mut client: Connection) -> HandshakeKind {
    let mut server = Connection::from(ServerConnection::new(PKI.server.clone()).unwrap());
    while pump(&mut client, &mut server) + pump(&mut server, &mut client) > 0 {}
    assert!(!client.is_handshaking() && !server.is_handshaking());
    client.handshake_kind().unwrap()
}

fn handshake(config: &ClientConfig, store: Arc<dyn ClientSessionStore>) -> HandshakeKind {
    complete(connect(config, store))
}

/// Moves every byte `from` has to write into `to`; returns how many.
fn pump(from: &mut Connection, to: &mut Connection) -> usize {
    let mut bytes = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut bytes).unwrap();
    }
    let mut unread = &bytes[..];
    while !unread.is_empty() {
        to.read_tls(&mut unread).unwrap();
        to.process_new_packets().unwrap();
    }
    bytes.len()
}

/// `count` real TLS 1.3 tickets from full handshakes, labelled 0, 1, 2..
/// in their QUIC parameters (which a TCP connection ignores), so a test
/// can tell which one comes back.
fn tickets(count: usize) -> Vec<Tls13ClientSessionValue> {
    let config = client_config(&[&TLS13]);
    let mut tickets = Vec::new();
    while tickets.len() < count {
        let scratch = SessionCache::default();
        handshake(&config, Arc::new(scratch.clone()));
        tickets.extend(std::iter::from_fn(|| {
            scratch.take_tls13_ticket(&localhost())
        }));
    }
    tickets.truncate(count);
    for (label, ticket) in tickets.iter_mut().enumerate() {
        ticket.set_quic_params(&[u8::try_from(label).unwrap()]);
    }
    tickets
}

fn label(ticket: Option<Tls13ClientSessionValue>) -> Option<u8> {
    ticket.map(|ticket| ticket.quic_params()[0])
}

fn name(name: &'static str) -> ServerName<'static> {
    ServerName::try_from(name).unwrap()
}

fn cache(config: SessionCacheConfig) -> SessionCache {
    SessionCache::new(config).unwrap()
}

#[test]
fn keeps_at_most_tickets_per_server_evicting_the_oldest() {
    let cache = cache(SessionCacheConfig::default().tickets_per_server(2));
    let server = name("a.example");
    for ticket in tickets(3) {
        cache.insert_tls13_ticket(server.clone(), ticket);
    }
    let stats = cache.stats();
    assert_eq!((stats.tickets(), stats.tickets_evicted()), (2, 1));
    assert_eq!(
        label(cache.take_tls13_ticket(&server)),
        Some(2),
        "newest first"
    );
    assert_eq!(label(cache.take_tls13_ticket(&server)), Some(1));
    assert_eq!(
        label(cache.take_tls13_ticket(&server)),
        None,
        "0 was evicted"
    );
}

#[test]
fn evicts_the_least_recently_used_server_when_full() {
    let cache = cache(SessionCacheConfig::default().max_servers(2));
    let [t0, t1, t2, t3, t4] = tickets(5).try_into().unwrap();
    let (a, b, c, d) = (
        name("a.example"),
        name("b.example"),
        name("c.example"),
        name("d.example"),
    );
    cache.insert_tls13_ticket(a.clone(), t0);
    cache.insert_tls13_ticket(a.clone(), t1);
    cache.insert_tls13_ticket(b.clone(), t2);
    // Taking a ticket uses `a`: `b` is now the least recently used.
    assert_eq!(label(cache.take_tls13_ticket(&a)), Some(1));
    cache.insert_tls13_ticket(c.clone(), t3);
    assert_eq!(cache.stats().servers(), 2);
    assert_eq!(label(cache.take_tls13_ticket(&b)), None);
    // So is storing a hint: `a` was used last by the take above, `c` now.
    cache.set_kx_hint(c.clone(), NamedGroup::X25519);
    cache.insert_tls13_ticket(d.clone(), t4);
    assert_eq!(label(cache.take_tls13_ticket(&a)), None);
    assert_eq!(cache.kx_hint(&c), Some(NamedGroup::X25519));
    assert_eq!(label(cache.take_tls13_ticket(&c)), Some(3));
    assert_eq!(label(cache.take_tls13_ticket(&d)), Some(4));
    let stats = cache.stats();
    assert_eq!((stats.servers_evicted(), stats.tickets_evicted()), (2, 2));
}

#[tokio::test(start_paused = true)]
async fn drops_tickets_at_max_ticket_age() {
    let max_age = Duration::from_secs(60);
    let cache = cache(SessionCacheConfig::default().max_ticket_age(Some(max_age)));
    let [t0, t1, t2] = tickets(3).try_into().unwrap();
    let (a, b, c) = (name("a.example"), name("b.example"), name("c.example"));
    cache.insert_tls13_ticket(a.clone(), t0);
    cache.insert_tls13_ticket(b.clone(), t1);
    tokio::time::advance(max_age - Duration::from_millis(1)).await;
    cache.insert_tls13_ticket(c, t2);
    assert_eq!(label(cache.take_tls13_ticket(&a)), Some(0));
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(
        label(cache.take_tls13_ticket(&b)),
        None,
        "expired at exactly max age"
    );
    let stats = cache.stats();
    assert_eq!((stats.tickets(), stats.tickets_expired()), (1, 1));
    tokio::time::advance(max_age).await;
    let stats = cache.stats();
    assert_eq!(
        (stats.tickets(), stats.tickets_expired()),
        (0, 2),
        "stats drop them too"
    );
}

#[tokio::test(start_paused = true)]
async fn does_not_resume_with_a_ticket_past_max_ticket_age() {
    let config = client_config(&[&TLS13]);
    let cache = SessionCache::default();
    assert_eq!(
        handshake(&config, Arc::new(cache.clone())),
        HandshakeKind::Full
    );
    tokio::time::advance(Duration::from_secs(60 * 60)).await;
    assert_eq!(
        handshake(&config, Arc::new(cache.clone())),
        HandshakeKind::Full
    );
    assert_eq!(cache.stats().tickets_expired(), 2);
}

#[test]
fn never_hands_an_entry_to_another_partition() {
    let cache = SessionCache::default();
    let (tenant_a, tenant_b) = (Partition::new("a"), Partition::new("b"));
    let a = cache.store_for(Some(&tenant_a));
    let b = cache.store_for(Some(&tenant_b));
    let none = cache.store_for(None);
    let server = name("a.example");
    let [t0] = tickets(1).try_into().unwrap();
    a.insert_tls13_ticket(server.clone(), t0);
    a.set_kx_hint(server.clone(), NamedGroup::X25519);
    for other in [
        &b,
        &none,
        &(Arc::new(cache.clone()) as Arc<dyn ClientSessionStore>),
    ] {
        assert_eq!(label(other.take_tls13_ticket(&server)), None);
        assert_eq!(other.kx_hint(&server), None);
    }
    // A second store of the same partition sees the first one's entries.
    let a_again = cache.store_for(Some(&tenant_a));
    assert_eq!(a_again.kx_hint(&server), Some(NamedGroup::X25519));
    assert_eq!(label(a_again.take_tls13_ticket(&server)), Some(0));
    // The cache itself is the unpartitioned store.
    none.set_kx_hint(server.clone(), NamedGroup::secp256r1);
    assert_eq!(cache.kx_hint(&server), Some(NamedGroup::secp256r1));
    assert_eq!(cache.stats().servers(), 2, "one per partition");
}

#[test]
fn counts_every_ticket_once_across_stores() {
    let cache = cache(
        SessionCacheConfig::default()
            .max_servers(2)
            .tickets_per_server(2),
    );
    let tenant = Partition::new("t");
    let stores = [cache.store_for(Some(&tenant)), cache.store_for(None)];
    let mut fresh = tickets(8).into_iter();
    for store in &stores {
        for ticket in fresh.by_ref().take(3) {
            store.insert_tls13_ticket(name("a.example"), ticket);
        }
    }
    assert_eq!(
        label(stores[0].take_tls13_ticket(&name("a.example"))),
        Some(2)
    );
    assert_eq!(label(stores[0].take_tls13_ticket(&name("b.example"))), None);
    // A third server evicts the least recently used: the unpartitioned `a`.
    for ticket in fresh {
        stores[0].insert_tls13_ticket(name("c.example"), ticket);
    }
    let stats = cache.stats();
    assert_eq!(stats.servers(), 2);
    assert_eq!(stats.tickets(), 3);
    assert_eq!((stats.hits(), stats.misses(), stats.inserts()), (1, 1, 8));
    assert_eq!(stats.servers_evicted(), 1);
    // One per partition at the bound, then the two the evicted server held.
    assert_eq!(stats.tickets_evicted(), 4);
    assert_eq!(stats.tickets_expired(), 0);
    assert_eq!(
        stats.inserts(),
        stats.hits() + stats.tickets_evicted() + stats.tickets_expired() + stats.tickets() as u64
    );
}

#[tokio::test(start_paused = true)]
async fn shrinks_to_new_bounds_at_once() {
    let cache = cache(SessionCacheConfig::default().tickets_per_server(4));
    let servers = [name("a.example"), name("b.example"), name("c.example")];
    let mut fresh = tickets(12).into_iter();
    for server in &servers {
        for ticket in fresh.by_ref().take(4) {
            cache.insert_tls13_ticket(server.clone(), ticket);
        }
    }
    cache.set_tickets_per_server(2).unwrap();
    let stats = cache.stats();
    assert_eq!((stats.tickets(), stats.tickets_evicted()), (6, 6));

    assert_eq!(label(cache.take_tls13_ticket(&servers[0])), Some(3));
    cache.set_max_servers(1).unwrap();
    let stats = cache.stats();
    assert_eq!((stats.servers(), stats.servers_evicted()), (1, 2));
    assert_eq!(label(cache.take_tls13_ticket(&servers[1])), None);
    assert_eq!(
        label(cache.take_tls13_ticket(&servers[0])),
        Some(2),
        "kept the last used"
    );

    let [t] = tickets(1).try_into().unwrap();
    cache.insert_tls13_ticket(servers[0].clone(), t);
    tokio::time::advance(Duration::from_secs(10)).await;
    cache
        .set_max_ticket_age(Some(Duration::from_secs(10)))
        .unwrap();
    let stats = cache.stats();
    assert_eq!((stats.tickets(), stats.tickets_expired()), (0, 1));
}

#[test]
fn rejects_zero_bounds_naming_the_field_and_changing_nothing() {
    let err = SessionCacheConfig::default()
        .tickets_per_server(0)
        .validate()
        .unwrap_err();
    assert_eq!(err.field(), "tickets_per_server");
    let err = SessionCache::new(SessionCacheConfig::default().max_ticket_age(Some(Duration::ZERO)))
        .unwrap_err();
    assert_eq!(err.field(), "max_ticket_age");

    let cache = SessionCache::default();
    cache.insert_tls13_ticket(name("a.example"), tickets(1).remove(0));
    assert_eq!(cache.set_max_servers(0).unwrap_err().field(), "max_servers");
    assert_eq!(
        cache.set_tickets_per_server(0).unwrap_err().field(),
        "tickets_per_server"
    );
    assert!(cache.set_max_ticket_age(Some(Duration::ZERO)).is_err());
    assert_eq!(cache.stats().tickets(), 1);
    assert!(cache.set_max_ticket_age(None).is_ok());
}

#[test]
fn resumes_with_a_ticket_of_the_same_partition() {
    let config = client_config(&[&TLS13]);
    let cache = SessionCache::default();
    let tenant = cache.store_for(Some(&Partition::new("tenant")));
    assert_eq!(handshake(&config, tenant.clone()), HandshakeKind::Full);
    assert_eq!(cache.stats().tickets(), 2);
    assert_eq!(handshake(&config, tenant), HandshakeKind::Resumed);
    let stats = cache.stats();
    assert_eq!((stats.hits(), stats.misses(), stats.inserts()), (1, 1, 4));
}

#[test]
fn never_resumes_across_partitions() {
    let config = client_config(&[&TLS13]);
    let cache = SessionCache::default();
    let a = cache.store_for(Some(&Partition::new("a")));
    let b = cache.store_for(Some(&Partition::new("b")));
    assert_eq!(handshake(&config, a.clone()), HandshakeKind::Full);
    assert_eq!(handshake(&config, b), HandshakeKind::Full);
    assert_eq!(
        handshake(&config, Arc::new(cache.clone())),
        HandshakeKind::Full
    );
    assert_eq!(handshake(&config, a), HandshakeKind::Resumed);
}

#[tokio::test(start_paused = true)]
async fn resumes_tls12_sessions_within_their_partition_and_age_only() {
    let config = client_config(&[&TLS12]);
    let cache = SessionCache::default();
    let a = cache.store_for(Some(&Partition::new("a")));
    assert_eq!(handshake(&config, a.clone()), HandshakeKind::Full);
    assert_eq!(
        handshake(&config, cache.store_for(Some(&Partition::new("b")))),
        HandshakeKind::Full
    );
    assert_eq!(handshake(&config, a.clone()), HandshakeKind::Resumed);
    let stats = cache.stats();
    assert_eq!((stats.tls12_hits(), stats.tls12_misses()), (1, 2));
    tokio::time::advance(Duration::from_secs(60 * 60)).await;
    assert_eq!(handshake(&config, a), HandshakeKind::Full);
    assert_eq!(cache.stats().tls12_misses(), 3);
}

#[test]
fn a_burst_of_32_reconnects_all_resume_with_the_default_bounds() {
    let config = client_config(&[&TLS13]);
    let cache = SessionCache::default();
    // Each handshake brings two tickets and a resumed one spends one.
    for _ in 0..32 {
        handshake(&config, Arc::new(cache.clone()));
    }
    assert!(cache.stats().tickets() >= 32);
    // Every hello of the burst is built (and takes its ticket) before any
    // handshake completes and brings new tickets.
    let burst: Vec<Connection> = (0..32)
        .map(|_| connect(&config, Arc::new(cache.clone())))
        .collect();
    let resumed = burst
        .into_iter()
        .map(complete)
        .filter(|kind| *kind == HandshakeKind::Resumed)
        .count();
    assert_eq!(resumed, 32);
}

#[test]
fn debug_shows_neither_partitions_nor_servers() {
    let cache = SessionCache::default();
    let store = cache.store_for(Some(&Partition::new("tenant-secret")));
    store.set_kx_hint(name("secret.example"), NamedGroup::X25519);
    for printed in [format!("{cache:?}"), format!("{store:?}")] {
        assert!(!printed.contains("tenant-secret"), "{printed}");
        assert!(!printed.contains("secret.example"), "{printed}");
        assert!(printed.contains("servers: 1"), "{printed}");
    }
}
