//! The proxy's side of an intercepted tunnel's TLS handshake, full against resumed: the
//! tunnel's server config built as `tunnel::intercept` builds it (a cached leaf, the tenant
//! workload's ticket scope), then the server's handshake with a rustls client over memory.
//! Only the server's work is timed (building its config and connection, reading the client's
//! flights, writing its own); the client's is not. Figures are kept in loadtest/README.md.
//! `cargo bench -p tenant-proxy --bench tunnel_handshake`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, HandshakeKind, RootCertStore, ServerConnection};
use tenant_proxy::ids::{TenantId, WorkloadId};
use tenant_proxy::tls::ca::{CaInitOptions, LeafMinter, LocalCa, TunnelCertResolver};
use tenant_proxy::tls::resume::{SessionScope, SessionScopes};

const HOST: &str = "api.openai.com";

/// Feeds `bytes` to `conn`.
fn feed<D>(conn: &mut rustls::ConnectionCommon<D>, bytes: &[u8]) {
    let mut slice = bytes;
    while !slice.is_empty() {
        conn.read_tls(&mut slice).unwrap();
        conn.process_new_packets().unwrap();
    }
}

/// What `conn` has to send.
fn drain<D>(conn: &mut rustls::ConnectionCommon<D>) -> Vec<u8> {
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// One handshake (and the tickets after it); the server's time and the kind the client saw.
fn handshake(
    minter: &Arc<LeafMinter>,
    scope: Option<&SessionScope>,
    client: &Arc<ClientConfig>,
) -> (Duration, HandshakeKind) {
    let mut c = ClientConnection::new(client.clone(), ServerName::try_from(HOST).unwrap()).unwrap();
    let started = Instant::now();
    let resolver = Arc::new(TunnelCertResolver::new(
        &TenantId::new("acme").unwrap(),
        HOST,
        minter.clone(),
    ));
    let tickets = scope.map(|s| s.for_tunnel());
    let config =
        tenant_proxy::tls::server_config(resolver, &[b"h2", b"http/1.1"], tickets.as_ref());
    let mut s = ServerConnection::new(config).unwrap();
    let mut spent = started.elapsed();
    loop {
        let from_client = drain(&mut c);
        let started = Instant::now();
        feed(&mut s, &from_client);
        let from_server = drain(&mut s);
        spent += started.elapsed();
        feed(&mut c, &from_server);
        if from_client.is_empty() && from_server.is_empty() {
            break;
        }
    }
    assert!(!c.is_handshaking() && !s.is_handshaking());
    (spent, c.handshake_kind().unwrap())
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let files = tenant_proxy::tls::init(&CaInitOptions::new(dir.path())).unwrap();
    let ca = LocalCa::load(&files.cert, &files.key).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    let minter = Arc::new(LeafMinter::new(ca, Duration::from_secs(12 * 3600), 16));
    minter
        .certified_key(&TenantId::new("acme").unwrap(), HOST)
        .unwrap();
    let scopes = SessionScopes::new(Duration::from_secs(3600), 16).unwrap();
    let scope = scopes
        .scope(
            1,
            &TenantId::new("acme").unwrap(),
            &WorkloadId::new("bot").unwrap(),
        )
        .unwrap();
    let client = |resume: bool, tls12: bool| {
        let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13]
        };
        let mut config = ClientConfig::builder_with_protocol_versions(versions)
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        if !resume {
            config.resumption = rustls::client::Resumption::disabled();
        }
        Arc::new(config)
    };

    let mut group = c.benchmark_group("tunnel_handshake");
    // What every tunnel pays before its first byte: its own config and connection.
    group.bench_function("config_only", |b| {
        b.iter(|| {
            let resolver = Arc::new(TunnelCertResolver::new(
                &TenantId::new("acme").unwrap(),
                HOST,
                minter.clone(),
            ));
            let tickets = scope.for_tunnel();
            let config =
                tenant_proxy::tls::server_config(resolver, &[b"h2", b"http/1.1"], Some(&tickets));
            ServerConnection::new(config).unwrap()
        })
    });
    for (version, tls12) in [("tls13", false), ("tls12", true)] {
        let fresh = client(false, tls12);
        group.bench_function(format!("{version}_full"), |b| {
            b.iter_custom(|n| {
                let mut total = Duration::ZERO;
                for _ in 0..n {
                    let (spent, kind) = handshake(&minter, Some(&scope), &fresh);
                    assert_eq!(kind, HandshakeKind::Full);
                    total += spent;
                }
                total
            })
        });
        let keeping = client(true, tls12);
        handshake(&minter, Some(&scope), &keeping);
        group.bench_function(format!("{version}_resumed"), |b| {
            b.iter_custom(|n| {
                let mut total = Duration::ZERO;
                for _ in 0..n {
                    let (spent, kind) = handshake(&minter, Some(&scope), &keeping);
                    assert_eq!(kind, HandshakeKind::Resumed);
                    total += spent;
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
