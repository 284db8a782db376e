//! Checkouts whose connect is slower than `pool_timeout`: the whole checkout is bounded by
//! `pool_timeout` (a server that never answers is an `Error::ConnectTimeout` naming the host at
//! the deadline, not after libpq's `connect_timeout`), the connect goes on and serves the next
//! checkout, and a connect that fails before the deadline is an `Error::Connect` at once.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{eventually, TestDb};
use userbase::{Backend, Database, DbUrl, Error, PoolConfig, Settings};

/// A loopback listener that serves at most `accepts` clients, each after `delay`: forwarding to
/// `upstream` when it is `Some`, else holding the socket open without a word until `delay` ends.
/// Returns the port and a count of the clients accepted so far.
fn slow_listener(
    delay: Duration,
    upstream: Option<u16>,
    accepts: usize,
) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    thread::spawn(move || {
        for client in listener.incoming().take(accepts) {
            let Ok(client) = client else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            thread::spawn(move || {
                thread::sleep(delay);
                let Some(upstream) = upstream else {
                    let _ = client.shutdown(Shutdown::Both);
                    return;
                };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    return;
                };
                pipe(client, server);
            });
        }
    });
    (port, accepted)
}

/// Copies bytes both ways until either side closes.
fn pipe(client: TcpStream, server: TcpStream) {
    fn copy(mut from: TcpStream, mut to: TcpStream) {
        let mut buf = [0_u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    }
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    thread::spawn(move || copy(c2, s2));
    copy(server, client);
}

fn pool(timeout: Duration) -> PoolConfig {
    PoolConfig::default()
        .with_pool_size(1)
        .with_max_overflow(0)
        .with_pool_timeout(timeout)
        .with_pre_ping(false)
        // No pooler probe through the forwarders: the accepted connects are the pool's own.
        .with_statement_cache(false)
}

#[test]
fn a_connect_slower_than_pool_timeout_gives_up_at_the_deadline_and_serves_the_next_checkout() {
    let test = TestDb::new(Backend::Postgres);
    let server_port = test.url.port().unwrap_or(5432);
    for _ in 0..3 {
        let (port, accepted) = slow_listener(Duration::from_millis(700), Some(server_port), 2);
        let url: DbUrl = test
            .url
            .clone()
            .with_host("127.0.0.1")
            .unwrap()
            .with_port(port)
            .unwrap()
            .with_query_param("sslmode", "disable")
            .unwrap();
        let db =
            Database::new(Settings::new(url).with_pool(pool(Duration::from_millis(200)))).unwrap();
        let started = Instant::now();
        match db.session() {
            Err(Error::ConnectTimeout { url, timeout }) => {
                assert!(url.contains(&format!("127.0.0.1:{port}")), "{url}");
                assert_eq!(timeout, Duration::from_millis(200));
            }
            other => panic!("expected ConnectTimeout, got {other:?}"),
        }
        // Before the forwarder's 700 ms delay: the checkout did not wait for the connect.
        assert!(started.elapsed() < Duration::from_millis(700));
        // The connect went on; once it lands it serves the next checkout without a new one.
        assert!(eventually(Duration::from_secs(30), || db.status().idle == 1));
        let mut session = db.session().unwrap();
        assert_eq!(session.repo().users().unwrap(), vec![]);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }
}

#[test]
fn a_server_that_never_answers_is_a_connect_timeout_at_pool_timeout_naming_the_host() {
    let (port, _) = slow_listener(Duration::from_secs(60), None, 4);
    let url = common::loopback_url(port);
    let db = Database::new(Settings::new(url).with_pool(pool(Duration::from_secs(1)))).unwrap();
    for _ in 0..2 {
        let started = Instant::now();
        let err = db.session().unwrap_err();
        let waited = started.elapsed();
        match &err {
            Error::ConnectTimeout { url, timeout } => {
                assert!(url.contains(&format!("127.0.0.1:{port}")), "{url}");
                assert_eq!(*timeout, Duration::from_secs(1));
            }
            other => panic!("expected ConnectTimeout, got {other:?}"),
        }
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
        // pool_timeout (1 s), not libpq's connect_timeout (10 s): a loose upper bound that
        // a loaded machine still meets, and the old behaviour did not.
        assert!(waited >= Duration::from_secs(1), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    }
}

#[test]
fn a_connect_that_fails_before_the_deadline_is_a_connect_error_at_once() {
    // Accepts and closes at once: the connect fails long before the 30 s pool_timeout.
    let (port, _) = slow_listener(Duration::ZERO, None, 4);
    let url = common::loopback_url(port)
        .with_query_param("sslmode", "disable")
        .unwrap();
    let db = Database::new(Settings::new(url).with_pool(pool(Duration::from_secs(30)))).unwrap();
    let started = Instant::now();
    match db.session() {
        Err(Error::Connect { .. }) => {}
        other => panic!("expected a Connect error, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(15));
}
