//! The engine: laziness, pool limits, typed timeout and connect errors, migrations, pragmas, echo.

mod common;

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use userbase::{Backend, Database, DbUrl, Error, PoolConfig, Settings};

use common::{admin, server_connections, unique_name, Captured, TestDb};

/// A pool that times out soon, though not before any connect of a loaded machine returns.
fn short_pool(pool_size: u32, max_overflow: u32) -> PoolConfig {
    PoolConfig::default()
        .with_pool_size(pool_size)
        .with_max_overflow(max_overflow)
        .with_pool_timeout(Duration::from_millis(2500))
}

#[test]
fn creating_a_database_opens_no_connection() {
    let test = TestDb::new(Backend::Postgres);
    let app = unique_name("lazy");
    let url = test
        .url
        .clone()
        .with_query_param("application_name", &app)
        .unwrap();
    let db = Database::new(Settings::new(url)).unwrap();
    assert_eq!(server_connections(&app), 0);
    let session = db.session().unwrap();
    assert_eq!(server_connections(&app), 1);
    drop(session);
    let _again = db.session().unwrap();
    assert_eq!(
        server_connections(&app),
        1,
        "the returned connection is reused"
    );
}

#[test]
fn at_most_pool_size_plus_overflow_then_a_typed_timeout() {
    let test = TestDb::new(Backend::Postgres);
    let app = unique_name("limit");
    let db = Database::new(
        Settings::new(
            test.url
                .clone()
                .with_query_param("application_name", &app)
                .unwrap(),
        )
        .with_pool(short_pool(2, 1)),
    )
    .unwrap();
    let held: Vec<_> = (0..3).map(|_| db.session().unwrap()).collect();
    assert_eq!(server_connections(&app), 3);
    let err = db.session().unwrap_err();
    match &err {
        Error::PoolTimeout {
            pool_size: 2,
            max_overflow: 1,
            timeout,
            open: 3,
            checked_out: 3,
            pending: 0,
        } => {
            assert_eq!(*timeout, Duration::from_millis(2500))
        }
        other => panic!("expected PoolTimeout, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "timed out after 2.5 s waiting for a connection (pool size 2, overflow 1: \
         3 open, 3 checked out, 0 being opened)"
    );
    drop(held);
    assert!(db.session().is_ok());
}

#[test]
fn pool_limits_hold_on_sqlite_too() {
    let test = TestDb::new(Backend::Sqlite);
    let db = test.database_with(short_pool(1, 0));
    let held = db.session().unwrap();
    assert!(matches!(
        db.session(),
        Err(Error::PoolTimeout {
            pool_size: 1,
            max_overflow: 0,
            ..
        })
    ));
    drop(held);
    assert!(db.session().is_ok());
}

/// The first checkout's error on an engine for `url` (short timeout: a hang would show as
/// PoolTimeout), with its `Display` and `Debug` side by side.
fn first_checkout_error(url: DbUrl) -> (Error, String) {
    let db = Database::new(Settings::new(url).with_pool(short_pool(1, 0))).unwrap();
    let err = db.session().unwrap_err();
    let shown = format!("{err} | {err:?}");
    (err, shown)
}

#[test]
fn unknown_database_is_a_connect_error_with_the_server_message() {
    // A Connect error with the server's message, not a PoolTimeout: the failure is not disguised.
    match first_checkout_error(common::database_url("userbase_no_such_database")) {
        (
            Error::Connect {
                url,
                message,
                source,
            },
            _,
        ) => {
            assert!(
                message.contains("database \"userbase_no_such_database\" does not exist"),
                "{message}"
            );
            // The driver's error is kept as the cause.
            let cause = source.expect("the driver's error as source");
            assert_eq!(cause.to_string().trim(), message);
            assert!(url.ends_with("/userbase_no_such_database"), "{url}");
        }
        (_, shown) => panic!("expected Connect error, got {shown}"),
    }
}

#[test]
fn refused_connection_is_a_connect_error_that_hides_the_password() {
    let url = common::loopback_url(1)
        .with_username("postgres")
        .unwrap()
        .with_password("hunter2-secret")
        .unwrap();
    let (err, shown) = first_checkout_error(url);
    assert!(matches!(err, Error::Connect { .. }), "{shown}");
    assert!(shown.contains("Connection refused"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(
        shown.contains("postgres://postgres:***@127.0.0.1:1/x"),
        "{shown}"
    );
}

#[test]
fn unopenable_sqlite_file_is_a_connect_error() {
    match first_checkout_error(DbUrl::sqlite("/nonexistent-dir/sub/x.db").unwrap()) {
        (
            Error::Connect {
                url,
                message,
                source: Some(_),
            },
            _,
        ) => {
            assert_eq!(url, "sqlite:///nonexistent-dir/sub/x.db");
            assert!(
                message
                    .to_lowercase()
                    .contains("unable to open the database file"),
                "{message}"
            );
        }
        (_, shown) => panic!("expected Connect error, got {shown}"),
    }
}

#[test]
fn invalid_pool_config_is_rejected() {
    let pool = PoolConfig::default().with_pool_size(0).with_max_overflow(0);
    let err = Database::new(Settings::new(DbUrl::sqlite(":memory:").unwrap()).with_pool(pool))
        .unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
}

both_backends! {
    fn migrations_are_idempotent(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        assert_eq!(db.run_pending_migrations().unwrap(), Vec::<String>::new());
    }

    fn a_conflicting_schema_is_a_migration_error(backend: Backend) {
        // An empty database that already has a `users` table the migrations do not expect.
        let dir = tempfile::tempdir().unwrap();
        let (url, pg_name) = match backend {
            Backend::Postgres => {
                let name = unique_name("userbase_conflict");
                admin().batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
                (common::database_url(&name), Some(name))
            }
            Backend::Sqlite => (DbUrl::sqlite(dir.path().join("c.db").to_str().unwrap()).unwrap(), None),
            other => unreachable!("no case for {other:?}"),
        };
        let db = Database::new(Settings::new(url)).unwrap();
        db.session().unwrap().connection().batch_execute("CREATE TABLE users (x INTEGER)").unwrap();
        let err = db.run_pending_migrations().unwrap_err();
        assert!(matches!(err, Error::Migration(_)), "{err:?}");
        assert!(err.to_string().contains("users"), "{err}");
        drop(db);
        if let Some(name) = pg_name {
            admin().batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)")).unwrap();
        }
    }
}

#[test]
fn sqlite_connections_get_the_pragmas() {
    #[derive(QueryableByName)]
    struct Pragma {
        #[diesel(sql_type = BigInt)]
        foreign_keys: i64,
    }
    #[derive(QueryableByName)]
    struct Journal {
        #[diesel(sql_type = Text)]
        journal_mode: String,
    }
    #[derive(QueryableByName)]
    struct Busy {
        #[diesel(sql_type = BigInt)]
        timeout: i64,
    }
    #[derive(QueryableByName)]
    struct Sync {
        #[diesel(sql_type = BigInt)]
        synchronous: i64,
    }
    let test = TestDb::new(Backend::Sqlite);
    let db = test.database();
    let mut session = db.session().unwrap();
    let conn = session.connection();
    let fk: Pragma = diesel::sql_query("PRAGMA foreign_keys")
        .get_result(conn)
        .unwrap();
    let journal: Journal = diesel::sql_query("PRAGMA journal_mode")
        .get_result(conn)
        .unwrap();
    let busy: Busy = diesel::sql_query("PRAGMA busy_timeout")
        .get_result(conn)
        .unwrap();
    let sync: Sync = diesel::sql_query("PRAGMA synchronous")
        .get_result(conn)
        .unwrap();
    assert_eq!(fk.foreign_keys, 1);
    assert_eq!(journal.journal_mode, "wal");
    assert_eq!(busy.timeout, 5000);
    assert_eq!(sync.synchronous, 1, "NORMAL");
}

#[test]
fn echo_logs_sql_and_duration_but_never_the_password() {
    let test = TestDb::new(Backend::Postgres);
    // The test server trusts every password, so a password in the URL still connects.
    let url = test.url.clone().with_password("echo-secret-pw").unwrap();
    let log = Captured::run(tracing::Level::INFO, || {
        let db = Database::new(Settings::new(url).with_pool(PoolConfig::default().with_echo(true)))
            .unwrap();
        db.session()
            .unwrap()
            .repo()
            .count_user_locations(6873)
            .unwrap();
        let refused = DbUrl::parse("postgres://postgres:echo-secret-pw@127.0.0.1:1/x").unwrap();
        let _ = Database::new(Settings::new(refused).with_pool(short_pool(1, 0)))
            .unwrap()
            .session();
    });
    assert!(log.contains(r#"SELECT count("userlocations"."location_id") FROM "userlocations" WHERE ("userlocations"."user_id" = $1)"#), "{log}");
    assert!(log.contains("binds: [6873]"), "{log}");
    assert!(log.contains("elapsed_us="), "{log}");
    assert!(!log.contains("echo-secret-pw"), "{log}");
}

#[test]
fn sqlite_memory_is_one_database_shared_by_the_pool() {
    use userbase::models::NewUser;
    let db = Database::new(Settings::new(DbUrl::parse("sqlite::memory:").unwrap())).unwrap();
    db.run_pending_migrations().unwrap();
    let mut first = db.session().unwrap();
    let mut second = db.session().unwrap();
    first
        .repo()
        .insert_user(&NewUser::new(1, "Shared"))
        .unwrap();
    assert_eq!(second.repo().user(1).unwrap().full_name, "Shared");
    drop((first, second));
    // With every pooled connection idle or gone, the data is still there.
    assert_eq!(db.session().unwrap().repo().users().unwrap().len(), 1);
    // Another engine on `sqlite::memory:` is another database.
    let other = Database::new(Settings::new(DbUrl::sqlite(":memory:").unwrap())).unwrap();
    other.run_pending_migrations().unwrap();
    assert_eq!(other.session().unwrap().repo().users().unwrap(), vec![]);
}

#[test]
fn concurrent_sqlite_write_transactions_wait_instead_of_failing() {
    use userbase::models::NewUser;
    let test = TestDb::new(Backend::Sqlite);
    let db = test.database();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
    let workers: Vec<_> = (0..4_i64)
        .map(|t| {
            let (db, barrier) = (db.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for i in 0..10 {
                    // Read, then write: with a deferred BEGIN the lock upgrade of all but one
                    // writer fails at once (SQLITE_BUSY), whatever busy_timeout says.
                    db.transaction(|repo| {
                        let seen = repo.users()?.len();
                        std::thread::sleep(Duration::from_millis(2));
                        let name = format!("user {seen}");
                        repo.insert_user(&NewUser::new(t * 100 + i, &name))
                    })?;
                }
                Ok::<_, Error>(())
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap().unwrap();
    }
    assert_eq!(db.session().unwrap().repo().users().unwrap().len(), 40);
}
