//! Migrations that cannot take the application down: on PostgreSQL each migration waits for its
//! locks at most `MIGRATION_LOCK_TIMEOUT` at a time, so other sessions' queries never queue
//! behind it for longer, and it is retried until the lock holder is gone (or gives up with a
//! typed error naming it).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, TestDb};
use diesel::connection::SimpleConnection;
use diesel::sql_types::BigInt;
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations};
use userbase::migrate::{run_migrations, MIGRATION_LOCK_ATTEMPTS, MIGRATION_LOCK_TIMEOUT};
use userbase::{Backend, Database, Error, Secrets};

/// One migration: `ALTER TABLE users ADD COLUMN lock_retry_probe integer`.
const PROBE: EmbeddedMigrations = embed_migrations!("tests/migrations/lock_retry");
const PROBE_NAME: &str = "2099-01-01-000001_add_users_probe";
const PROBE_VERSION: &str = "20990101000001";

/// Generous against the 200 ms a reader may wait behind one attempt: a reader queued behind a
/// migration without a lock timeout waits until the long transaction ends (here: never, until
/// the test ends it).
const READ_BOUND: Duration = Duration::from_secs(3);

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn count(conn: &mut PgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql).get_result::<N>(conn).unwrap().n
}

/// A migration of this database is waiting for a lock (seen from the server side).
fn migration_waits_for_a_lock(admin: &mut PgConnection) -> bool {
    count(
        admin,
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() \
         AND wait_event_type = 'Lock' AND query ILIKE '%lock_retry_probe%'",
    ) > 0
}

/// Readers of `users` on `db` while `running`: each read's time, the longest kept.
fn readers(
    db: &Database,
    running: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<(u32, Duration)>> {
    (0..4)
        .map(|_| {
            let db = db.clone();
            let running = running.clone();
            std::thread::spawn(move || {
                let (mut reads, mut longest) = (0, Duration::ZERO);
                while running.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    db.session().unwrap().repo().users().unwrap();
                    longest = longest.max(started.elapsed());
                    reads += 1;
                }
                (reads, longest)
            })
        })
        .collect()
}

fn connect(test_db: &TestDb) -> PgConnection {
    PgConnection::establish(&test_db.url.render(Secrets::Shown)).unwrap()
}

fn has_probe_column(admin: &mut PgConnection) -> bool {
    count(
        admin,
        "SELECT count(*) AS n FROM information_schema.columns \
         WHERE table_name = 'users' AND column_name = 'lock_retry_probe'",
    ) == 1
}

#[test]
fn a_migration_behind_a_long_transaction_retries_while_reads_go_on_then_succeeds() {
    let test_db = TestDb::new(Backend::Postgres);
    let db = test_db.database();
    let mut admin = connect(&test_db);
    let mut holder = connect(&test_db);
    // A long transaction that has read `users`: it holds ACCESS SHARE until it ends.
    holder
        .batch_execute("BEGIN; SELECT count(*) FROM users")
        .unwrap();

    let migrating = {
        let db = db.clone();
        std::thread::spawn(move || {
            let mut session = db.session().unwrap();
            run_migrations(session.connection(), PROBE)
        })
    };
    assert!(
        eventually(Duration::from_secs(30), || migration_waits_for_a_lock(
            &mut admin
        )),
        "the migration never waited for its lock"
    );

    // Reads of `users` go on while the migration keeps trying.
    let running = Arc::new(AtomicBool::new(true));
    let readers = readers(&db, &running);
    // Until the migration has been refused its lock twice more (two more attempts seen waiting).
    let mut attempts_seen = 0;
    let mut was_waiting = true;
    assert!(eventually(Duration::from_secs(30), || {
        let waiting = migration_waits_for_a_lock(&mut admin);
        if waiting && !was_waiting {
            attempts_seen += 1;
        }
        was_waiting = waiting;
        attempts_seen >= 2
    }));
    holder.batch_execute("COMMIT").unwrap();
    let applied = migrating.join().unwrap().unwrap();
    running.store(false, Ordering::Relaxed);
    for reader in readers {
        let (reads, longest) = reader.join().unwrap();
        assert!(reads > 0);
        assert!(longest < READ_BOUND, "a read of users took {longest:?}");
    }
    assert_eq!(applied, [PROBE_VERSION]);
    assert!(has_probe_column(&mut admin));
    // Applied once: a second run finds nothing to do.
    assert!(run_migrations(db.session().unwrap().connection(), PROBE)
        .unwrap()
        .is_empty());
}

#[test]
fn a_migration_whose_lock_never_frees_fails_naming_it_and_leaves_nothing_behind() {
    let test_db = TestDb::new(Backend::Postgres);
    let db = test_db.database_with(
        userbase::PoolConfig::default()
            .with_lock_timeout(Some(Duration::from_secs(7)))
            .with_statement_timeout(Some(Duration::from_secs(9))),
    );
    let mut admin = connect(&test_db);
    let mut holder = connect(&test_db);
    holder
        .batch_execute("BEGIN; SELECT count(*) FROM users")
        .unwrap();

    let mut session = db.session().unwrap();
    match run_migrations(session.connection(), PROBE) {
        Err(Error::MigrationLockTimeout {
            migration,
            attempts,
            lock_timeout,
        }) => {
            assert_eq!(migration, PROBE_NAME);
            assert_eq!(attempts, MIGRATION_LOCK_ATTEMPTS);
            assert_eq!(lock_timeout, MIGRATION_LOCK_TIMEOUT);
        }
        other => panic!("expected Error::MigrationLockTimeout, got {other:?}"),
    }
    assert!(!has_probe_column(&mut admin));
    // The session's own deadlines are back.
    #[derive(QueryableByName)]
    struct Setting {
        #[diesel(sql_type = diesel::sql_types::Text)]
        setting: String,
    }
    let AnyPg(pg) = AnyPg::of(session.connection());
    let read = |pg: &mut PgConnection, name: &str| {
        diesel::sql_query(format!("SELECT current_setting('{name}') AS setting"))
            .get_result::<Setting>(pg)
            .unwrap()
            .setting
    };
    assert_eq!(read(pg, "lock_timeout"), "7s");
    assert_eq!(read(pg, "statement_timeout"), "9s");
    drop(session);

    holder.batch_execute("COMMIT").unwrap();
    let applied = run_migrations(db.session().unwrap().connection(), PROBE).unwrap();
    assert_eq!(applied, [PROBE_VERSION]);
    assert!(has_probe_column(&mut admin));
}

struct AnyPg<'a>(&'a mut PgConnection);

impl<'a> AnyPg<'a> {
    fn of(conn: &'a mut userbase::AnyConnection) -> Self {
        match conn {
            userbase::AnyConnection::Pg(pg) => AnyPg(pg),
            userbase::AnyConnection::Sqlite(_) => panic!("expected PostgreSQL"),
        }
    }
}

#[test]
fn the_crates_own_migrations_still_apply_on_both_backends() {
    for backend in [Backend::Postgres, Backend::Sqlite] {
        let test_db = TestDb::new(backend);
        // Already migrated by TestDb: nothing pending, and no error.
        assert!(test_db
            .database()
            .run_pending_migrations()
            .unwrap()
            .is_empty());
    }
}

#[test]
fn waiting_for_another_migrator_is_not_cut_short_by_the_pool_lock_timeout() {
    let test_db = TestDb::new(Backend::Postgres);
    let db = test_db.database_with(
        userbase::PoolConfig::default().with_lock_timeout(Some(Duration::from_millis(200))),
    );
    let mut admin = connect(&test_db);
    let mut other_migrator = connect(&test_db);
    // The advisory lock `run_pending_migrations` takes ("userbase" in ASCII).
    other_migrator
        .batch_execute("SELECT pg_advisory_lock(8463219666710524773)")
        .unwrap();
    let migrating = {
        let db = db.clone();
        std::thread::spawn(move || db.run_pending_migrations())
    };
    // Still waiting well past the pool's 200 ms lock_timeout.
    assert!(
        eventually(Duration::from_secs(30), || count(
            &mut admin,
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event = 'advisory' AND now() - query_start > interval '1 second'",
        ) == 1),
        "the migration did not wait for the other migrator"
    );
    other_migrator
        .batch_execute("SELECT pg_advisory_unlock(8463219666710524773)")
        .unwrap();
    assert_eq!(migrating.join().unwrap().unwrap(), Vec::<String>::new());
}
