//! The engine under load and faults: bursts of threads, discarded returns, refused
//! ports, raw transactions, a server that stops, leaked sessions. Connections are counted from
//! the server (`pg_stat_activity`, by a per-test `application_name`).

mod common;

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use userbase::models::NewUser;
use userbase::{Backend, Database, Error, PoolConfig, Settings};
use userbase_testing::{Cluster, StopMode};

use common::{admin, eventually, unique_name, Captured, TestDb};

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// What `load_sql` gives back for statements without rows.
#[derive(QueryableByName, Debug)]
struct NoRow {
    #[diesel(sql_type = BigInt)]
    #[allow(dead_code)]
    n: i64,
}

/// Server connections named `app` (optionally only those in `state`).
fn server_count(app: &str, state: Option<&str>) -> i64 {
    diesel::sql_query(
        "SELECT count(*) AS n FROM pg_stat_activity \
         WHERE application_name = $1 AND ($2 = '' OR state = $2)",
    )
    .bind::<Text, _>(app)
    .bind::<Text, _>(state.unwrap_or(""))
    .get_result::<Count>(&mut admin())
    .unwrap()
    .n
}

fn engine(test: &TestDb, pool: PoolConfig) -> (Database, String) {
    let app = unique_name("faults");
    let url = match test.backend {
        Backend::Postgres => test
            .url
            .clone()
            .with_query_param("application_name", &app)
            .unwrap(),
        Backend::Sqlite => test.url.clone(),
        other => unreachable!("no case for {other:?}"),
    };
    (
        Database::new(Settings::new(url).with_pool(pool)).unwrap(),
        app,
    )
}

/// Polls the server's count of `app` connections until stopped; returns the highest seen.
struct Watcher {
    stop: Arc<AtomicBool>,
    highest: Arc<AtomicI64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Watcher {
    fn start(app: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let highest = Arc::new(AtomicI64::new(0));
        let (app, s, h) = (app.to_owned(), stop.clone(), highest.clone());
        let thread = thread::spawn(move || {
            let mut admin = admin();
            while !s.load(Ordering::Relaxed) {
                let n = diesel::sql_query(
                    "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = $1",
                )
                .bind::<Text, _>(&app)
                .get_result::<Count>(&mut admin)
                .unwrap()
                .n;
                h.fetch_max(n, Ordering::Relaxed);
            }
        });
        Watcher {
            stop,
            highest,
            thread: Some(thread),
        }
    }

    fn highest(mut self) -> i64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.highest.load(Ordering::Relaxed)
    }
}

#[test]
fn bursts_of_64_threads_stay_within_the_limit_and_settle_at_pool_size() {
    let test = TestDb::new(Backend::Postgres);
    let (db, app) = engine(
        &test,
        PoolConfig::default().with_overflow_idle_timeout(Duration::from_millis(300)),
    );
    for round in 0..10 {
        let watcher = Watcher::start(&app);
        let start = Arc::new(Barrier::new(64));
        let workers: Vec<_> = (0..64)
            .map(|_| {
                let (db, start) = (db.clone(), start.clone());
                thread::spawn(move || {
                    start.wait();
                    for _ in 0..20 {
                        let mut session = db.session().unwrap();
                        session.repo().count_user_locations(1).unwrap();
                        thread::yield_now();
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        // Let the overflow idle timeout pass while still watching.
        let settled = eventually(Duration::from_secs(30), || {
            server_count(&app, None) == 5 && db.status().open == 5
        });
        let highest = watcher.highest();
        assert!(highest <= 15, "round {round}: {highest} connections seen");
        assert!(
            settled,
            "round {round}: {} connections, {:?}",
            server_count(&app, None),
            db.status()
        );
        let status = db.status();
        assert_eq!((status.idle, status.checked_out), (5, 0), "round {round}");
    }
    // Exactly pool_size stay (no timer closes them).
    thread::sleep(Duration::from_millis(600));
    assert_eq!(server_count(&app, None), 5);
}

both_backends! {
    fn a_discarded_return_wakes_the_waiter_at_once(backend: Backend) {
        let test = TestDb::new(backend);
        let (db, _app) = engine(
            &test,
            PoolConfig::default().with_pool_size(1).with_max_overflow(0).with_pool_timeout(Duration::from_secs(30)),
        );
        for round in 0..15 {
            let held = db.session().unwrap();
            let (asking, asked) = std::sync::mpsc::channel();
            let waiter = {
                let db = db.clone();
                thread::spawn(move || {
                    let asked = Instant::now();
                    asking.send(()).unwrap();
                    let mut session = db.session().unwrap();
                    session.repo().users().unwrap();
                    asked.elapsed()
                })
            };
            // The waiter is asking (however late its thread ran), and has been for 50 ms.
            asked.recv().unwrap();
            thread::sleep(Duration::from_millis(50));
            // The held connection is invalidated: it is closed when it comes back, not kept.
            db.dispose();
            let returned = Instant::now();
            drop(held);
            let waited = waiter.join().unwrap();
            let after_return = returned.elapsed();
            assert!(waited >= Duration::from_millis(40), "round {round}: the waiter waited");
            // Well within pool_timeout: woken by the return, not by the timeout.
            assert!(
                after_return < Duration::from_secs(10),
                "round {round}: served {after_return:?} after the return (pool_timeout 30 s)"
            );
        }
    }

    fn a_raw_begin_is_rolled_back_at_check_in(backend: Backend) {
        let test = TestDb::new(backend);
        let (db, app) = engine(
            &test,
            PoolConfig::default().with_pool_size(1).with_max_overflow(0).with_pool_timeout(Duration::from_secs(10)),
        );
        let begins: &[&str] = match backend {
            Backend::Postgres => &["BEGIN", "START TRANSACTION", "begin; select 1"],
            Backend::Sqlite => &["BEGIN", "BEGIN IMMEDIATE", "begin deferred"],
            other => unreachable!("no case for {other:?}"),
        };
        for (i, begin) in begins.iter().enumerate() {
            let id = i64::try_from(i).unwrap() + 1;
            {
                let mut session = db.session().unwrap();
                if begin.contains(';') {
                    // A batch through the raw connection.
                    use diesel::connection::SimpleConnection;
                    session.connection().batch_execute(begin).unwrap();
                } else {
                    let rows: Vec<NoRow> = session.repo().load_sql(begin).unwrap();
                    assert!(rows.is_empty());
                }
                let mut repo = session.repo();
                repo.insert_user(&NewUser::new(id, "Uncommitted")).unwrap();
            }
            if backend == Backend::Postgres {
                assert_eq!(server_count(&app, Some("idle in transaction")), 0, "{begin}");
            }
            // The same (only) connection: an open transaction would show its own row.
            assert_eq!(db.session().unwrap().repo().users().unwrap(), vec![], "{begin}");
            if backend == Backend::Sqlite {
                // Another writer is not blocked by a lock left behind.
                let other = Database::new(Settings::new(test.url.clone()).with_pool(PoolConfig::default().with_pool_timeout(Duration::from_secs(10))))
                .unwrap();
                let started = Instant::now();
                other.session().unwrap().repo().insert_user(&NewUser::new(100 + id, "Other")).unwrap();
                // Below busy_timeout (5 s): it never waited for a lock.
                assert!(started.elapsed() < Duration::from_secs(4), "{begin}: {:?}", started.elapsed());
                other.session().unwrap().repo().delete_user(100 + id).unwrap();
            }
        }
    }

    fn a_session_held_too_long_is_reported_once_with_its_checkout_site(backend: Backend) {
        let test = TestDb::new(backend);
        let mut line = 0;
        let log = Captured::run_watching(tracing::Level::WARN, |log| {
            let (db, _app) = engine(
                &test,
                PoolConfig::default().with_leak_detection_threshold(Some(Duration::from_millis(150))),
            );
            let quick = db.session().unwrap();
            drop(quick);
            line = line!() + 1;
            let held = db.session().unwrap();
            // Held until reported, then four thresholds more: still reported once.
            assert!(
                eventually(Duration::from_secs(30), || log.text().contains("possible session leak")),
                "no leak reported: {}",
                log.text()
            );
            thread::sleep(Duration::from_millis(600));
            drop(held);
            thread::sleep(Duration::from_millis(50));
        });
        let site = format!("tests/engine_faults.rs:{line}:");
        let warnings: Vec<&str> = log.lines().filter(|l| l.contains("possible session leak")).collect();
        assert_eq!(warnings.len(), 1, "{log}");
        assert!(warnings[0].contains(&site), "{site} not in {log}");
        assert!(warnings[0].contains("WARN"), "{log}");
    }
}

#[test]
fn thirty_two_threads_on_a_refused_port_all_fail_fast_with_connect() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = common::loopback_url(port)
        .with_username("postgres")
        .unwrap();
    let db = Database::new(
        Settings::new(url)
            .with_pool(PoolConfig::default().with_pool_timeout(Duration::from_secs(30))),
    )
    .unwrap();
    let start = Arc::new(Barrier::new(32));
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let (db, start) = (db.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                let mut slowest = Duration::ZERO;
                for _ in 0..5 {
                    let asked = Instant::now();
                    match db.session() {
                        Err(Error::Connect { message, .. }) => {
                            assert!(message.contains("refused"), "{message}")
                        }
                        other => panic!("expected Connect, got {other:?}"),
                    }
                    slowest = slowest.max(asked.elapsed());
                }
                slowest
            })
        })
        .collect();
    for worker in workers {
        let slowest = worker.join().unwrap();
        // Well within pool_timeout: every refusal came back as such, none waited for a slot.
        assert!(
            slowest < Duration::from_secs(10),
            "a checkout took {slowest:?} (pool_timeout 30 s)"
        );
    }
    let status = db.status();
    assert_eq!((status.open, status.checked_out), (0, 0));
}

#[test]
fn pool_timeout_states_what_was_open_checked_out_and_pending() {
    let test = TestDb::new(Backend::Postgres);
    let (db, _app) = engine(
        &test,
        PoolConfig::default()
            .with_pool_size(1)
            .with_max_overflow(1)
            .with_pool_timeout(Duration::from_millis(2500)),
    );
    let held = (db.session().unwrap(), db.session().unwrap());
    let err = db.session().unwrap_err();
    assert!(
        matches!(
            err,
            Error::PoolTimeout {
                open: 2,
                checked_out: 2,
                pending: 0,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("2 open, 2 checked out, 0 being opened"),
        "{err}"
    );
    drop(held);
}

#[test]
fn check_reaches_the_server_every_time() {
    // A private cluster (found like every other one of the suite's), as the test stops it.
    let mut server = Cluster::start().unwrap();
    let db = Database::new(
        Settings::new(server.url())
            .with_pool(PoolConfig::default().with_pool_timeout(Duration::from_secs(30))),
    )
    .unwrap();
    for round in 0..3 {
        db.check().unwrap();
        // Used just now: within the pre-ping bypass window.
        diesel::sql_query("SELECT 1::bigint AS n")
            .get_result::<NoRow>(db.session().unwrap().connection())
            .unwrap();
        server.stop_with(StopMode::Immediate).unwrap();
        let asked = Instant::now();
        let err = db.check().unwrap_err();
        assert!(
            matches!(err, Error::Connect { .. }),
            "round {round}: {err:?}"
        );
        // Well within pool_timeout (30 s): the refusal, not a wait for a slot.
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "round {round}: {:?}",
            asked.elapsed()
        );
        server.start_again().unwrap();
        assert!(
            eventually(Duration::from_secs(30), || db.check().is_ok()),
            "round {round}"
        );
    }
}
