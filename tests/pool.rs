//! SQLAlchemy's QueuePool semantics on a real PostgreSQL, connections counted in
//! `pg_stat_activity` by a per-test `application_name`.

mod common;

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use diesel::connection::{Connection, SimpleConnection, TransactionManager};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Text};
use userbase::models::NewUser;
use userbase::{AnyConnection, Backend, Database, DbUrl, Error, PoolConfig, Secrets, Settings};

use common::{admin, eventually, unique_name, Captured, TestDb};

#[derive(QueryableByName)]
struct Pid {
    #[diesel(sql_type = Integer)]
    pid: i32,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Backend PIDs of the server connections named `app`, sorted.
fn server_pids(app: &str) -> Vec<i32> {
    let mut pids: Vec<i32> = diesel::sql_query(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 ORDER BY pid",
    )
    .bind::<Text, _>(app)
    .load::<Pid>(&mut admin())
    .unwrap()
    .into_iter()
    .map(|p| p.pid)
    .collect();
    pids.sort_unstable();
    pids
}

fn backend_pid(db: &Database) -> i32 {
    let mut session = db.session().unwrap();
    diesel::sql_query("SELECT pg_backend_pid() AS pid")
        .get_result::<Pid>(session.connection())
        .unwrap()
        .pid
}

/// An engine on a fresh database whose connections carry a unique `application_name`.
fn engine(test: &TestDb, pool: PoolConfig) -> (Database, String) {
    let app = unique_name("pool");
    let url = test
        .url
        .clone()
        .with_query_param("application_name", &app)
        .unwrap();
    (
        Database::new(Settings::new(url).with_pool(pool)).unwrap(),
        app,
    )
}

#[test]
fn lazy_until_check_then_one_connection() {
    let test = TestDb::new(Backend::Postgres);
    let (db, app) = engine(&test, PoolConfig::default());
    assert_eq!(server_pids(&app).len(), 0);
    assert_eq!(db.status().open, 0);
    db.check().unwrap();
    assert_eq!(server_pids(&app).len(), 1);
    assert_eq!(db.status().idle, 1);
}

/// The overflow idle timeout of `fifteen_holders_then_a_typed_timeout_then_pool_size_idle`.
const OVERFLOW_IDLE: Duration = Duration::from_secs(1);

/// Its pool timeout: no connect of a loaded machine takes as long.
const POOL_TIMEOUT: Duration = Duration::from_secs(5);

#[test]
fn fifteen_holders_then_a_typed_timeout_then_pool_size_idle() {
    let test = TestDb::new(Backend::Postgres);
    let (db, app) = engine(
        &test,
        PoolConfig::default()
            .with_pool_timeout(POOL_TIMEOUT)
            .with_overflow_idle_timeout(OVERFLOW_IDLE),
    );
    let hold = Arc::new(Barrier::new(16));
    let release = Arc::new(Barrier::new(16));
    let workers: Vec<_> = (0..15)
        .map(|_| {
            let (db, hold, release) = (db.clone(), hold.clone(), release.clone());
            thread::spawn(move || {
                // A failure is reported after the barriers, so that it cannot hang the others.
                let held = db.session().and_then(|mut session| {
                    session.repo().count_user_locations(1).map(|_| session)
                });
                hold.wait();
                release.wait();
                held.map(drop)
            })
        })
        .collect();
    hold.wait();
    assert_eq!(server_pids(&app).len(), 15);
    let status = db.status();
    assert_eq!(
        (status.open, status.checked_out, status.overflow),
        (15, 15, 10)
    );
    match db.session() {
        Err(Error::PoolTimeout {
            pool_size: 5,
            max_overflow: 10,
            timeout,
            open: 15,
            checked_out: 15,
            pending: 0,
        }) => {
            assert_eq!(timeout, POOL_TIMEOUT)
        }
        other => panic!("expected PoolTimeout, got {other:?}"),
    }
    // Every session comes back after this instant (the workers return them past the barrier).
    let released = Instant::now();
    release.wait();
    for worker in workers {
        worker.join().unwrap().unwrap();
    }
    // Overflow connections stay until more than pool_size have been idle for the overflow idle
    // timeout, then pool_size stay. Every count taken before the timeout has run out since
    // `released` sees all 15 (a count finished later proves nothing and ends the loop).
    loop {
        let open = server_pids(&app).len();
        if released.elapsed() >= OVERFLOW_IDLE {
            break;
        }
        assert_eq!(open, 15, "no close before the timeout");
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        eventually(Duration::from_secs(30), || server_pids(&app).len() == 5),
        "{} connections after release",
        server_pids(&app).len()
    );
    assert!(released.elapsed() >= OVERFLOW_IDLE);
    // The close's last step (telling the pool) may trail the server's count by a moment.
    assert!(eventually(Duration::from_secs(30), || db.status().open == 5));
    let status = db.status();
    assert_eq!((status.open, status.idle, status.checked_out), (5, 5, 0));
    assert_eq!(
        status.to_string(),
        "Pool size: 5  Connections in pool: 5 Current Overflow: 0 Current Checked out connections: 0"
    );
}

#[test]
fn a_zero_overflow_idle_timeout_closes_overflow_at_once() {
    let test = TestDb::new(Backend::Postgres);
    let (db, app) = engine(
        &test,
        PoolConfig::default().with_overflow_idle_timeout(Duration::ZERO),
    );
    let sessions: Vec<_> = (0..15).map(|_| db.session().unwrap()).collect();
    assert_eq!(server_pids(&app).len(), 15);
    drop(sessions);
    // SQLAlchemy's overflow discard: closed as they come back, pool_size stay; sooner than the
    // default timeout's timer could have closed them.
    let released = Instant::now();
    assert!(
        eventually(Duration::from_secs(30), || server_pids(&app).len() == 5),
        "{} connections after release",
        server_pids(&app).len()
    );
    let closed_after = released.elapsed();
    assert!(
        closed_after < PoolConfig::default().overflow_idle_timeout,
        "closed {closed_after:?} after the return"
    );
    let status = db.status();
    assert_eq!((status.open, status.idle, status.checked_out), (5, 5, 0));
}

#[test]
fn base_connections_are_kept_through_idleness() {
    let test = TestDb::new(Backend::Postgres);
    let (db, app) = engine(&test, PoolConfig::default().with_pool_size(3));
    let sessions: Vec<_> = (0..3).map(|_| db.session().unwrap()).collect();
    drop(sessions);
    let before = server_pids(&app);
    assert_eq!(before.len(), 3);
    thread::sleep(Duration::from_secs(3));
    for _ in 0..3 {
        db.session().unwrap().repo().users().unwrap();
    }
    assert_eq!(server_pids(&app), before, "no churn: the same backends");
}

#[test]
fn recycle_replaces_old_connections_at_checkout() {
    let test = TestDb::new(Backend::Postgres);
    let recycle = Duration::from_secs(3);
    let (db, _app) = engine(
        &test,
        PoolConfig::default().with_pool_recycle(Some(recycle)),
    );
    let first = backend_pid(&db);
    // The connection was made before this instant.
    let connected = Instant::now();
    assert_eq!(backend_pid(&db), first, "young connection reused");
    // Until the connection is surely older than `recycle`.
    thread::sleep((recycle + Duration::from_millis(100)).saturating_sub(connected.elapsed()));
    assert_ne!(backend_pid(&db), first, "old connection replaced");
}

#[test]
fn terminated_backends_are_replaced_without_errors() {
    let test = TestDb::new(Backend::Postgres);
    let (db, app) = engine(&test, PoolConfig::default());
    let sessions: Vec<_> = (0..5).map(|_| db.session().unwrap()).collect();
    drop(sessions);
    let before = server_pids(&app);
    assert_eq!(before.len(), 5);
    admin()
        .batch_execute(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{app}'"
        ))
        .unwrap();
    assert!(eventually(Duration::from_secs(30), || server_pids(&app).is_empty()));
    // Past the pre-ping bypass window every checkout pings; the first failed ping invalidates
    // the other four, which are replaced without a ping.
    thread::sleep(Duration::from_millis(600));
    let mut errors = 0;
    for _ in 0..20 {
        if db.session().and_then(|mut s| s.repo().users()).is_err() {
            errors += 1;
        }
    }
    assert_eq!(errors, 0);
    let after = server_pids(&app);
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|pid| !before.contains(pid)),
        "{before:?} -> {after:?}"
    );
}

#[test]
fn a_query_on_a_dead_connection_invalidates_the_pool() {
    let test = TestDb::new(Backend::Postgres);
    let (db, app) = engine(&test, PoolConfig::default().with_pre_ping(false));
    let sessions: Vec<_> = (0..3).map(|_| db.session().unwrap()).collect();
    drop(sessions);
    admin()
        .batch_execute(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{app}'"
        ))
        .unwrap();
    assert!(eventually(Duration::from_secs(30), || server_pids(&app).is_empty()));
    // Without pre-ping the first query meets the dead connection and fails...
    assert!(db.session().unwrap().repo().users().is_err());
    // ...and invalidates the rest: nothing else fails.
    for _ in 0..10 {
        db.session().unwrap().repo().users().unwrap();
    }
}

#[test]
fn wrong_password_fails_at_once_with_the_server_message() {
    let test = TestDb::new(Backend::Postgres);
    let role = unique_name("userbase_pw");
    let mut admin = admin();
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'right-password'"
        ))
        .unwrap();
    // The local server trusts 127.0.0.1; a password is only checked where pg_hba asks for one.
    // What matters here is that a server-side refusal comes back as Connect, not as a timeout:
    // an unknown role is refused the same way a wrong password is.
    let url = test
        .url
        .clone()
        .with_username("no_such_role_userbase")
        .unwrap()
        .with_password("wrong-pw")
        .unwrap();
    let db = Database::new(Settings::new(url)).unwrap();
    let started = Instant::now();
    let err = db.session().unwrap_err();
    let waited = started.elapsed();
    let shown = format!("{err} | {err:?}");
    assert!(matches!(err, Error::Connect { .. }), "{shown}");
    assert!(
        shown.contains("role \"no_such_role_userbase\" does not exist"),
        "{shown}"
    );
    assert!(!shown.contains("wrong-pw"), "{shown}");
    // pool_timeout is the default 30 s: returning before it proves the error is not a timeout.
    assert!(waited < Duration::from_secs(29), "waited {waited:?}");
}

#[test]
fn a_leaked_transaction_is_rolled_back_and_the_connection_reused() {
    let test = TestDb::new(Backend::Postgres);
    let (db, _app) = engine(&test, PoolConfig::default());
    let pid = backend_pid(&db);
    {
        // Raw SQL: BEGIN, a write, and no COMMIT.
        let mut session = db.session().unwrap();
        session
            .connection()
            .batch_execute("BEGIN; INSERT INTO users (user_id, full_name) VALUES (1, 'Leaked')")
            .unwrap();
    }
    // The same connection comes back; were the transaction still open, it would see its row.
    assert_eq!(backend_pid(&db), pid, "the same connection is reused");
    assert_eq!(db.session().unwrap().repo().users().unwrap(), vec![]);
    {
        // Diesel's transaction manager: begun, never committed.
        let mut session = db.session().unwrap();
        let conn: &mut AnyConnection = session.connection();
        <AnyConnection as Connection>::TransactionManager::begin_transaction(conn).unwrap();
        diesel::sql_query("INSERT INTO users (user_id, full_name) VALUES (2, 'Leaked too')")
            .execute(conn)
            .unwrap();
    }
    assert_eq!(backend_pid(&db), pid, "the same connection is reused");
    assert_eq!(db.session().unwrap().repo().users().unwrap(), vec![]);
    let count: Count = diesel::sql_query("SELECT count(*) AS n FROM users")
        .get_result(&mut admin_for(&test.url))
        .unwrap();
    assert_eq!(count.n, 0, "nothing was committed");
}

fn admin_for(url: &DbUrl) -> diesel::PgConnection {
    diesel::PgConnection::establish(&url.render(Secrets::Shown)).unwrap()
}

#[test]
fn a_panic_inside_a_transaction_rolls_back() {
    let test = TestDb::new(Backend::Postgres);
    let (db, _app) = engine(
        &test,
        PoolConfig::default().with_pool_size(1).with_max_overflow(0),
    );
    let db2 = db.clone();
    let outcome = thread::spawn(move || {
        db2.transaction(|repo| -> Result<(), Error> {
            repo.insert_user(&NewUser::new(1, "Panicked"))?;
            panic!("boom");
        })
    })
    .join();
    assert!(outcome.is_err());
    assert_eq!(db.session().unwrap().repo().users().unwrap(), vec![]);
}

#[test]
fn dispose_closes_idle_connections_and_starts_afresh() {
    let test = TestDb::new(Backend::Postgres);
    let (db, app) = engine(&test, PoolConfig::default());
    let sessions: Vec<_> = (0..3).map(|_| db.session().unwrap()).collect();
    drop(sessions);
    let before = server_pids(&app);
    assert_eq!(before.len(), 3);
    let held = db.session().unwrap();
    db.dispose();
    assert!(eventually(Duration::from_secs(30), || server_pids(&app)
        .len()
        == 1));
    drop(held);
    assert!(eventually(Duration::from_secs(30), || server_pids(&app).is_empty()));
    assert_eq!(db.status().open, 0);
    let pid = backend_pid(&db);
    assert!(!before.contains(&pid));
}

#[test]
fn hide_parameters_keeps_binds_out_of_the_log() {
    let test = TestDb::new(Backend::Postgres);
    let log = Captured::run(tracing::Level::DEBUG, || {
        let (db, _app) = engine(
            &test,
            PoolConfig::default()
                .with_echo(true)
                .with_hide_parameters(true)
                .with_echo_pool(true),
        );
        db.session().unwrap().repo().user(987654).unwrap_err();
    });
    assert!(log.contains(r#"WHERE ("users"."user_id" = $1)"#), "{log}");
    assert!(log.contains("binds: [hidden]"), "{log}");
    assert!(!log.contains("987654"), "{log}");
    assert!(log.contains("userbase::pool"), "{log}");
    assert!(log.contains("checkin"), "{log}");
}

/// Counts the pings (`SELECT 1`) an echoing engine logs while `work` runs.
fn pings_during(test: &TestDb, pool: PoolConfig, work: impl FnOnce(&Database)) -> usize {
    let log = Captured::run(tracing::Level::INFO, || {
        let (db, _app) = engine(test, pool.with_echo(true));
        work(&db);
    });
    log.lines()
        .filter(|l| l.contains("userbase::sql: SELECT 1"))
        .count()
}

#[test]
fn pre_ping_skips_connections_used_within_the_bypass_window() {
    let test = TestDb::new(Backend::Postgres);
    let checkouts = |db: &Database| {
        for _ in 0..10 {
            db.session().unwrap().repo().users().unwrap();
        }
    };
    assert_eq!(
        PoolConfig::default().pre_ping_bypass,
        Duration::from_millis(500)
    );
    // A window no pause between two checkouts of a loaded machine outlasts.
    let bypass = Duration::from_secs(2);
    let window = PoolConfig::default().with_pre_ping_bypass(bypass);
    assert_eq!(pings_during(&test, window.clone(), checkouts), 0);
    let no_window = PoolConfig::default().with_pre_ping_bypass(Duration::ZERO);
    // A zero window pings on every checkout, the first one included.
    assert_eq!(pings_during(&test, no_window, checkouts), 10);
    let idle_then_used = |db: &Database| {
        checkouts(db);
        thread::sleep(bypass + Duration::from_millis(100));
        checkouts(db);
    };
    assert_eq!(pings_during(&test, window, idle_then_used), 1);
    let off = PoolConfig::default()
        .with_pre_ping(false)
        .with_pre_ping_bypass(Duration::ZERO);
    assert_eq!(pings_during(&test, off, idle_then_used), 0);
}
