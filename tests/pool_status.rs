//! `Database::status()` is exact at every instant: it counts what exists, compared with the
//! server's own view (`pg_stat_activity`), through holds, returns, overflow closes and threads.

mod common;

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use userbase::{Backend, Database, PoolConfig, PoolStatus, Settings};

use common::{eventually, unique_name, TestDb};

/// Server connections whose `application_name` is `app`.
fn server_connections(app: &str) -> u32 {
    u32::try_from(common::server_connections(app)).unwrap()
}

fn figures(status: PoolStatus) -> (u32, u32, u32) {
    (status.open, status.idle, status.checked_out)
}

/// Connections being closed: open, but neither idle nor checked out. At most the two above
/// `pool_size` in these tests.
fn closing(status: &PoolStatus) -> u32 {
    let closing = status.open - status.idle - status.checked_out;
    assert!(closing <= 2, "{status:?}");
    closing
}

fn database(test: &TestDb, app: &str, pool: PoolConfig) -> Database {
    let url = test
        .url
        .clone()
        .with_query_param("application_name", app)
        .unwrap();
    Database::new(Settings::new(url).with_pool(pool)).unwrap()
}

#[test]
fn seven_held_four_returned_then_all_returned_match_the_server() {
    let test = TestDb::new(Backend::Postgres);
    for idle_timeout in [Duration::ZERO, Duration::from_millis(300)] {
        let app = unique_name("status");
        let db = database(
            &test,
            &app,
            PoolConfig::default()
                .with_pre_ping(false)
                .with_overflow_idle_timeout(idle_timeout),
        );
        let mut held: Vec<_> = (0..7).map(|_| db.session().unwrap()).collect();
        assert_eq!(figures(db.status()), (7, 0, 7));
        assert_eq!(server_connections(&app), 7);
        held.truncate(3);
        // Four returned into a pool of 5: all kept, none closed.
        assert_eq!(figures(db.status()), (7, 4, 3));
        assert_eq!(server_connections(&app), 7);
        held.clear();
        let status = db.status();
        assert_eq!(status.checked_out, 0, "{status:?}");
        if idle_timeout.is_zero() {
            // The two above pool_size were closed as they came back, before the drop returned.
            assert_eq!(figures(status), (5, 5, 0));
        } else {
            // Kept until the overflow idle timeout closes them.
            assert_eq!(figures(status), (7, 7, 0));
            // While the keeper closes them, nothing is ever counted as checked out.
            assert!(eventually(Duration::from_secs(30), || {
                let status = db.status();
                assert_eq!(status.checked_out, 0, "{status:?}");
                assert_eq!(
                    status.open,
                    status.idle + status.checked_out + closing(&status)
                );
                status.open == 5
            }));
            assert_eq!(figures(db.status()), (5, 5, 0));
        }
        // The server's backends exit a moment after the client closes: wait for its count.
        assert!(
            eventually(Duration::from_secs(30), || server_connections(&app) == 5),
            "server shows {}",
            server_connections(&app)
        );
        assert_eq!(figures(db.status()), (5, 5, 0));
    }
}

/// Figures seen while 12 threads check out and return at random never break the invariants,
/// and once every thread is done they equal the server's count.
#[test]
fn figures_hold_under_concurrent_checkouts_and_settle_on_the_servers_count() {
    let test = TestDb::new(Backend::Postgres);
    for round in 0..3 {
        let app = unique_name("status_threads");
        let pool = PoolConfig::default()
            .with_pool_size(3)
            .with_max_overflow(4)
            .with_pre_ping(false)
            .with_pool_timeout(Duration::from_secs(60))
            .with_overflow_idle_timeout(if round == 0 {
                Duration::ZERO
            } else {
                Duration::from_millis(50)
            });
        let db = database(&test, &app, pool);
        let start = Arc::new(Barrier::new(13));
        let workers: Vec<_> = (0..12)
            .map(|i| {
                let db = db.clone();
                let start = start.clone();
                thread::spawn(move || {
                    start.wait();
                    for j in 0..20 {
                        let mut session = db.session().unwrap();
                        if (i + j) % 3 == 0 {
                            session.repo().users().unwrap();
                        }
                        drop(session);
                    }
                })
            })
            .collect();
        start.wait();
        let mut seen = 0;
        while workers.iter().any(|w| !w.is_finished()) {
            let status = db.status();
            assert!(status.open <= 7, "{status:?}");
            assert!(
                status.idle + status.checked_out <= status.open,
                "{status:?}"
            );
            seen += 1;
        }
        for worker in workers {
            worker.join().unwrap();
        }
        assert!(seen > 0);
        // Every return was counted before its drop returned.
        let status = db.status();
        assert_eq!(status.checked_out, 0, "{status:?}");
        // Idle connections above pool_size are closed by the keeper (after overflow_idle_timeout;
        // in round 0 at once, when a connect finishing late made one), which may be at work
        // now: what is open and not idle is being closed, and the figures settle on pool_size.
        assert!(status.idle <= status.open, "{status:?}");
        assert!(eventually(Duration::from_secs(30), || {
            let status = db.status();
            assert_eq!(status.checked_out, 0, "{status:?}");
            assert!(status.idle <= status.open, "{status:?}");
            status.open == 3
        }));
        assert_eq!(figures(db.status()), (3, 3, 0));
        assert!(
            eventually(Duration::from_secs(30), || server_connections(&app) == 3),
            "server shows {}, status {:?}",
            server_connections(&app),
            db.status()
        );
    }
}
