//! Checkouts whose connect is slower than `pool_timeout`: the connect opened for a checkout is
//! waited for (bounded by libpq's `connect_timeout`), so `PoolTimeout` only ever means the pool's
//! limit was in use, and a server that never answers is a `Connect` error, not a "pool limit".

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::TestDb;
use userbase::{Backend, Database, DbUrl, Error, PoolConfig, Settings};

/// A loopback listener that serves at most `accepts` clients, each after `delay`: forwarding to
/// `upstream` when it is `Some`, else holding the socket open without a word until `delay` ends.
fn slow_listener(delay: Duration, upstream: Option<u16>, accepts: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for client in listener.incoming().take(accepts) {
            let Ok(client) = client else { continue };
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
    port
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
}

#[test]
fn a_connect_slower_than_pool_timeout_still_serves_its_checkout() {
    let test = TestDb::new(Backend::Postgres);
    let server_port = test.url.port().unwrap_or(5432);
    for _ in 0..3 {
        let port = slow_listener(Duration::from_millis(700), Some(server_port), 1);
        let url: DbUrl = test
            .url
            .clone()
            .with_host("127.0.0.1")
            .with_port(port)
            .with_query_param("sslmode", "disable");
        let db =
            Database::new(Settings::new(url).with_pool(pool(Duration::from_millis(200)))).unwrap();
        let started = Instant::now();
        let mut session = db.session().unwrap();
        assert!(started.elapsed() >= Duration::from_millis(700));
        assert_eq!(session.repo().users().unwrap(), vec![]);
    }
}

#[test]
fn a_server_that_never_answers_is_a_connect_error_not_a_pool_timeout() {
    let port = slow_listener(Duration::from_secs(8), None, 2);
    let url = DbUrl::postgres()
        .with_host("127.0.0.1")
        .with_port(port)
        .with_database("x")
        .with_query_param("connect_timeout", "2");
    let db = Database::new(Settings::new(url).with_pool(pool(Duration::from_millis(300)))).unwrap();
    let started = Instant::now();
    match db.session() {
        Err(Error::Connect { message, .. }) => {
            assert!(message.contains("timeout"), "{message}");
        }
        other => panic!("expected a Connect error, got {other:?}"),
    }
    // libpq's connect_timeout (2 s, its minimum), not the server's 8 s silence.
    assert!(started.elapsed() < Duration::from_secs(7));
}
