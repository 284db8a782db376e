//! Statement deadlines: `statement_timeout`, `lock_timeout` and
//! `idle_in_transaction_timeout` from the pool's settings, the per-call override, the typed
//! errors, and that the connection stays in the pool after a deadline fired.

mod common;

use common::env_settings as settings;

use std::time::{Duration, Instant};

use common::{eventually, TestDb};
use diesel::connection::SimpleConnection;
use diesel::sql_types::{Integer, Text};
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl};
use userbase::models::{NewLocation, NewUser};
use userbase::{
    AnyConnection, Backend, Database, Error, PoolConfig, Repo, Secrets, Session, Settings,
};
use userbase_testing::{Cluster, PgBouncer, PgBouncerOptions, PoolMode};

#[derive(QueryableByName)]
struct Pid {
    #[diesel(sql_type = Integer)]
    pid: i32,
}

#[derive(QueryableByName)]
struct Setting {
    #[diesel(sql_type = Text)]
    setting: String,
}

#[derive(QueryableByName)]
struct One {
    #[diesel(sql_type = Integer)]
    #[allow(dead_code)]
    n: i32,
}

fn pid(repo: &mut Repo<'_>) -> i32 {
    repo.load_sql::<Pid>("SELECT pg_backend_pid() AS pid")
        .unwrap()[0]
        .pid
}

fn setting(repo: &mut Repo<'_>, name: &str) -> String {
    repo.load_sql::<Setting>(&format!("SELECT current_setting('{name}') AS setting"))
        .unwrap()
        .remove(0)
        .setting
}

/// A statement that runs for `seconds`.
fn sleep(repo: &mut Repo<'_>, seconds: f64) -> userbase::Result<()> {
    repo.load_sql::<One>(&format!("SELECT 1 AS n FROM pg_sleep({seconds})"))
        .map(drop)
}

/// One connection at most, so that "the same connection" is checkable by its server pid.
fn one_connection() -> PoolConfig {
    PoolConfig::default().with_pool_size(1).with_max_overflow(0)
}

fn admin_on(test_db: &TestDb) -> PgConnection {
    PgConnection::establish(&test_db.url.render(Secrets::Shown)).unwrap()
}

#[track_caller]
fn assert_statement_timeout<T: std::fmt::Debug>(outcome: userbase::Result<T>) {
    match outcome {
        Err(Error::StatementTimeout { message }) => {
            assert!(message.contains("statement timeout"), "{message}");
        }
        other => panic!("expected Error::StatementTimeout, got {other:?}"),
    }
}

/// How long a call may take to give up with a deadline of 200-300 ms (pgbouncer's queue and a
/// loaded machine included).
const GIVES_UP_WITHIN: Duration = Duration::from_secs(5);

#[track_caller]
fn assert_lock_timeout<T: std::fmt::Debug>(outcome: userbase::Result<T>, started: Instant) {
    match outcome {
        Err(Error::LockTimeout { message }) => {
            assert!(message.contains("lock timeout"), "{message}");
        }
        other => panic!("expected Error::LockTimeout, got {other:?}"),
    }
    assert!(
        started.elapsed() < GIVES_UP_WITHIN,
        "{:?}",
        started.elapsed()
    );
}

/// `holder` (a direct connection to the server) takes a row lock on user `user_id` in a
/// transaction it leaves open. That transaction ends by itself after 20 s
/// (`idle_in_transaction_session_timeout`), so a statement that waits for it with no deadline
/// fails its test instead of hanging it.
fn hold_user_row(mut holder: PgConnection, user_id: i64) -> PgConnection {
    holder
        .batch_execute(&format!(
            "SET idle_in_transaction_session_timeout = '20s'; BEGIN; \
             SELECT 1 FROM users WHERE user_id = {user_id} FOR UPDATE"
        ))
        .unwrap();
    holder
}

/// After a session `SET lock_timeout = 0` on `session`'s connection: the `lock_timeout` a Repo
/// statement outside a transaction sees, and the one a statement inside one sees.
fn lock_timeout_after_a_session_set(session: &mut Session) -> (String, String) {
    session
        .connection()
        .batch_execute("SET lock_timeout = 0")
        .unwrap();
    let outside = setting(&mut session.repo(), "lock_timeout");
    let inside = session
        .transaction(|repo| Ok::<_, Error>(setting(repo, "lock_timeout")))
        .unwrap();
    (outside, inside)
}

/// A private cluster with the schema, and pgbouncer in transaction mode in front of it whose
/// server connections forget session `SET`s whenever a transaction ends (what a client of a
/// transaction pooler must expect): there a deadline holds only when the transaction the
/// statement runs in sets it.
fn behind_pgbouncer() -> (Cluster, PgBouncer) {
    let server = Cluster::start().unwrap();
    Database::new(Settings::new(server.url()))
        .unwrap()
        .run_pending_migrations()
        .unwrap();
    let bouncer = PgBouncer::start_with(
        &server.url(),
        &PgBouncerOptions::new()
            .default_pool_size(2)
            .reset_sessions(true),
    )
    .unwrap();
    (server, bouncer)
}

/// A pool on `bouncer` with `pool`.
fn through(bouncer: &PgBouncer, pool: PoolConfig) -> Database {
    Database::new(Settings::new(bouncer.url("postgres").unwrap()).with_pool(pool)).unwrap()
}

#[test]
fn statement_timeout_cancels_and_the_connection_stays_pooled() {
    let test_db = TestDb::new(Backend::Postgres);
    let db = test_db
        .database_with(one_connection().with_statement_timeout(Some(Duration::from_millis(200))));
    let mut session = db.session().unwrap();
    let first = pid(&mut session.repo());
    let outcome = sleep(&mut session.repo(), 5.0);
    assert_statement_timeout(outcome);
    let error = sleep(&mut session.repo(), 5.0).unwrap_err();
    assert!(
        error.to_string().starts_with("statement_timeout fired: "),
        "{error}"
    );
    // The same session goes on, on the same server connection.
    assert_eq!(pid(&mut session.repo()), first);
    assert!(session.repo().users().unwrap().is_empty());

    // Inside a transaction: the closure sees the typed error, the transaction rolls back.
    let outcome = session.transaction(|repo| {
        repo.insert_user(&userbase::models::NewUser::new(1, "Ann"))?;
        sleep(repo, 5.0)
    });
    assert_statement_timeout(outcome);
    assert!(session.repo().users().unwrap().is_empty());
    drop(session);

    // The pool kept the connection.
    let mut session = db.session().unwrap();
    assert_eq!(pid(&mut session.repo()), first);
    assert_eq!(db.status().open, 1);
}

#[test]
fn lock_timeout_gives_up_and_the_connection_stays_pooled() {
    let test_db = TestDb::new(Backend::Postgres);
    let db =
        test_db.database_with(one_connection().with_lock_timeout(Some(Duration::from_millis(200))));
    let mut session = db.session().unwrap();
    let first = pid(&mut session.repo());

    let mut holder = admin_on(&test_db);
    holder
        .batch_execute("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    match session.repo().users() {
        Err(Error::LockTimeout { message }) => {
            assert!(message.contains("lock timeout"), "{message}")
        }
        other => panic!("expected Error::LockTimeout, got {other:?}"),
    }
    // In a transaction too (SET LOCAL at its BEGIN).
    match session.transaction(|repo| repo.users()) {
        Err(Error::LockTimeout { .. }) => {}
        other => panic!("expected Error::LockTimeout, got {other:?}"),
    }
    holder.batch_execute("COMMIT").unwrap();

    assert!(session.repo().users().unwrap().is_empty());
    assert_eq!(pid(&mut session.repo()), first);
    drop(session);
    assert_eq!(pid(&mut db.session().unwrap().repo()), first);
}

#[test]
fn deadlines_hold_outside_and_inside_transactions_even_after_a_session_set() {
    let test_db = TestDb::new(Backend::Postgres);
    let db = test_db.database_with(
        PoolConfig::default()
            .with_statement_timeout(Some(Duration::from_millis(1500)))
            .with_lock_timeout(Some(Duration::from_millis(700)))
            .with_idle_in_transaction_timeout(Some(Duration::from_secs(61))),
    );
    let mut session = db.session().unwrap();
    let expected = ["1500ms", "700ms", "61s"];
    let names = [
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
    ];
    let read = |repo: &mut Repo<'_>| names.map(|name| setting(repo, name));
    assert_eq!(read(&mut session.repo()), expected);

    // A session SET is what pgbouncer in transaction mode loses (another client's SET may be on
    // the server connection): the transaction's own SET LOCAL still holds.
    session
        .connection()
        .batch_execute(
            "SET statement_timeout = 0; SET lock_timeout = 0; \
             SET idle_in_transaction_session_timeout = 0",
        )
        .unwrap();
    let inside = session
        .transaction(|repo| Ok::<_, Error>(read(repo)))
        .unwrap();
    assert_eq!(inside, expected);
    let inside = db
        .transaction_with_retry(Default::default(), |repo| Ok::<_, Error>(read(repo)))
        .unwrap();
    assert_eq!(inside, expected);
}

#[test]
fn unset_deadlines_leave_the_server_settings() {
    let test_db = TestDb::new(Backend::Postgres);
    let db = test_db.database();
    let mut session = db.session().unwrap();
    assert_eq!(setting(&mut session.repo(), "statement_timeout"), "0");
    let inside = session
        .transaction(|repo| Ok::<_, Error>(setting(repo, "lock_timeout")))
        .unwrap();
    assert_eq!(inside, "0");
}

#[test]
fn with_statement_timeout_lets_one_call_run_longer_then_restores_the_pool_deadline() {
    let test_db = TestDb::new(Backend::Postgres);
    let db = test_db.database_with(
        PoolConfig::default().with_statement_timeout(Some(Duration::from_millis(300))),
    );
    let mut session = db.session().unwrap();
    session
        .repo()
        .with_statement_timeout(Duration::from_secs(30), |repo| sleep(repo, 0.6))
        .unwrap();
    // Back to the pool's deadline.
    assert_statement_timeout(sleep(&mut session.repo(), 5.0));

    // Nested in a transaction: the outer transaction gets the pool's deadline back.
    let outcome = session.transaction(|repo| {
        repo.with_statement_timeout(Duration::ZERO, |repo| sleep(repo, 0.6))?;
        assert_eq!(setting(repo, "statement_timeout"), "300ms");
        sleep(repo, 5.0)
    });
    assert_statement_timeout(outcome);

    // Shorter than the pool's deadline works too.
    let unlimited = test_db.database();
    let outcome = unlimited
        .session()
        .unwrap()
        .repo()
        .with_statement_timeout(Duration::from_millis(100), |repo| sleep(repo, 5.0));
    assert_statement_timeout(outcome);

    // Out of range.
    let outcome = session
        .repo()
        .with_statement_timeout(Duration::from_micros(1500), |_| Ok::<_, Error>(()));
    assert!(matches!(outcome, Err(Error::Config { .. })), "{outcome:?}");
}

#[test]
fn idle_in_transaction_timeout_ends_the_transaction_and_the_pool_recovers() {
    let test_db = TestDb::new(Backend::Postgres);
    let db = test_db.database_with(
        one_connection().with_idle_in_transaction_timeout(Some(Duration::from_millis(300))),
    );
    let mut admin = admin_on(&test_db);
    let outcome = db.transaction(|repo| {
        let pid = pid(repo);
        // The server closes the connection once the transaction has been idle 300 ms.
        let gone = eventually(Duration::from_secs(30), || {
            #[derive(QueryableByName)]
            struct N {
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                n: i64,
            }
            diesel::sql_query(format!(
                "SELECT count(*) AS n FROM pg_stat_activity WHERE pid = {pid}"
            ))
            .get_result::<N>(&mut admin)
            .unwrap()
            .n == 0
        });
        assert!(gone, "the idle transaction's connection was not closed");
        repo.users().map(drop)
    });
    // The server closed the connection: reported as a closed connection (over TLS libpq does
    // not get to read the server's last message).
    match &outcome {
        Err(Error::Query(diesel::result::Error::DatabaseError(kind, info))) => assert!(
            matches!(kind, diesel::result::DatabaseErrorKind::ClosedConnection)
                || info.message().contains("idle-in-transaction"),
            "{outcome:?}"
        ),
        other => panic!("expected the closed connection's error, got {other:?}"),
    }
    // A new connection replaces the closed one.
    assert!(db.session().unwrap().repo().users().unwrap().is_empty());
}

#[test]
fn sqlite_lock_timeout_is_busy_timeout() {
    #[derive(QueryableByName)]
    struct Busy {
        #[diesel(sql_type = Integer)]
        timeout: i32,
    }
    let busy = |db: &Database| {
        let mut session = db.session().unwrap();
        match session.connection() {
            AnyConnection::Sqlite(c) => {
                diesel::sql_query("PRAGMA busy_timeout")
                    .get_result::<Busy>(c)
                    .unwrap()
                    .timeout
            }
            AnyConnection::Pg(_) => unreachable!(),
        }
    };
    let test_db = TestDb::new(Backend::Sqlite);
    assert_eq!(busy(&test_db.database()), 5000);
    let db = test_db
        .database_with(PoolConfig::default().with_lock_timeout(Some(Duration::from_millis(1234))));
    assert_eq!(busy(&db), 1234);
    // statement_timeout has nothing to bound there, and is accepted.
    let db = test_db.database_with(
        PoolConfig::default().with_statement_timeout(Some(Duration::from_millis(100))),
    );
    assert!(db.session().unwrap().repo().users().unwrap().is_empty());
}

#[test]
fn deadlines_from_the_environment_and_their_bounds() {
    let s = settings(&[
        ("DB_STATEMENT_TIMEOUT_MS", "2500"),
        ("DB_LOCK_TIMEOUT_MS", "0"),
        ("DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", "86400000"),
    ])
    .unwrap();
    assert_eq!(s.pool.statement_timeout, Some(Duration::from_millis(2500)));
    assert_eq!(s.pool.lock_timeout, Some(Duration::ZERO));
    assert_eq!(
        s.pool.idle_in_transaction_timeout,
        Some(Duration::from_secs(86_400))
    );
    let s = settings(&[]).unwrap();
    assert_eq!(
        (
            s.pool.statement_timeout,
            s.pool.lock_timeout,
            s.pool.idle_in_transaction_timeout
        ),
        (None, None, None)
    );
    for variable in [
        "DB_STATEMENT_TIMEOUT_MS",
        "DB_LOCK_TIMEOUT_MS",
        "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
    ] {
        for bad in ["-1", "1.5", "86400001", "soon"] {
            match settings(&[(variable, bad)]) {
                Err(Error::Config {
                    variable: Some(v),
                    message,
                }) => {
                    assert_eq!(v, variable);
                    assert!(message.contains("86400000"), "{message}");
                }
                other => panic!("{variable}={bad}: {other:?}"),
            }
        }
    }
    for config in [
        PoolConfig::default().with_statement_timeout(Some(Duration::from_micros(1500))),
        PoolConfig::default().with_lock_timeout(Some(Duration::from_secs(86_401))),
        PoolConfig::default().with_idle_in_transaction_timeout(Some(Duration::from_secs(86_401))),
    ] {
        assert!(
            matches!(config.validate(), Err(Error::Config { .. })),
            "{config:?}"
        );
    }
}

/// Behind pgbouncer in transaction mode with one server connection, shared with a client whose
/// session `SET statement_timeout = 0` sits on that server connection: the pool's deadline
/// still holds in a transaction (its `SET LOCAL`), and does not leak to the other client.
#[test]
#[ignore = "needs pgbouncer: apt-get install pgbouncer"]
fn statement_timeout_survives_pgbouncer_transaction_mode() {
    let test_db = TestDb::new(Backend::Postgres);
    let bouncer = PgBouncer::start_with(
        &common::server_url(),
        &PgBouncerOptions::new().default_pool_size(1),
    )
    .unwrap();
    let through = bouncer.url(test_db.name().unwrap()).unwrap();
    let db = Database::new(
        Settings::new(through.clone()).with_pool(
            one_connection()
                .with_statement_cache(false)
                .with_statement_timeout(Some(Duration::from_millis(300))),
        ),
    )
    .unwrap();
    // The pool's connection is made (its session SET lands on the one server connection) ...
    assert!(db.session().unwrap().repo().users().unwrap().is_empty());
    // ... then another client's session SET replaces it there.
    let mut other = PgConnection::establish(&through.render(Secrets::Shown)).unwrap();
    other.batch_execute("SET statement_timeout = 0").unwrap();

    let outcome = db.transaction(|repo| sleep(repo, 5.0));
    assert_statement_timeout(outcome);
    // Outside a transaction too: the pool found the pooler and runs the statement in a
    // transaction of its own.
    assert_statement_timeout(sleep(&mut db.session().unwrap().repo(), 5.0));
    let outcome = db
        .session()
        .unwrap()
        .repo()
        .with_statement_timeout(Duration::from_millis(100), |repo| sleep(repo, 5.0));
    assert_statement_timeout(outcome);

    // The SET LOCAL ended with its transaction: the other client's setting is untouched.
    let row: Setting = diesel::sql_query("SELECT current_setting('statement_timeout') AS setting")
        .get_result(&mut other)
        .unwrap();
    assert_eq!(row.setting, "0");
    // And the pool's session still works.
    assert!(db.session().unwrap().repo().users().unwrap().is_empty());
}

/// On a direct connection a statement outside a transaction runs as it is (no `BEGIN; SET
/// LOCAL …` round trip: after a session `SET` it sees that one), and the deadlines bound the
/// same autocommit calls the pgbouncer tests below make.
#[test]
fn autocommit_statements_run_as_they_are_without_a_pooler() {
    let test_db = TestDb::new(Backend::Postgres);
    let db = test_db.database_with(
        one_connection()
            .with_lock_timeout(Some(Duration::from_millis(200)))
            .with_statement_timeout(Some(Duration::from_millis(300))),
    );
    let mut session = db.session().unwrap();
    session.repo().insert_user(&NewUser::new(1, "Ann")).unwrap();
    let home = session
        .repo()
        .insert_location(&NewLocation::new("Home", "1 Main St"))
        .unwrap();

    let mut holder = hold_user_row(admin_on(&test_db), 1);
    let started = Instant::now();
    assert_lock_timeout(session.repo().deactivate_user(1), started);
    let started = Instant::now();
    assert_lock_timeout(session.repo().link(1, home.location_id), started);
    holder.batch_execute("COMMIT").unwrap();
    assert_statement_timeout(sleep(&mut session.repo(), 5.0));
    assert!(!session.repo().deactivate_user(1).unwrap().active);
    assert!(session.repo().link(1, home.location_id).unwrap());

    // Not wrapped: a session SET is what the next autocommit statement sees.
    assert_eq!(
        lock_timeout_after_a_session_set(&mut session),
        ("0".to_owned(), "200ms".to_owned())
    );
}

/// Behind pgbouncer in transaction mode, where no session `SET` survives a transaction, an
/// autocommit Repo write waiting for a row lock another session holds gives up with
/// `Error::LockTimeout`, and the session goes on.
#[test]
#[ignore = "needs pgbouncer: apt-get install pgbouncer, then cargo test --test deadlines -- --include-ignored"]
fn lock_timeout_bounds_autocommit_writes_behind_pgbouncer_transaction_mode() {
    let (server, bouncer) = behind_pgbouncer();
    let db = through(
        &bouncer,
        PoolConfig::default().with_lock_timeout(Some(Duration::from_millis(200))),
    );
    let mut session = db.session().unwrap();
    assert_eq!(setting(&mut session.repo(), "lock_timeout"), "200ms");
    session.repo().insert_user(&NewUser::new(1, "Ann")).unwrap();
    let home = session
        .repo()
        .insert_location(&NewLocation::new("Home", "1 Main St"))
        .unwrap();

    let mut holder = hold_user_row(server.connect().unwrap(), 1);
    let started = Instant::now();
    assert_lock_timeout(session.repo().deactivate_user(1), started);
    // The link's foreign key check waits for the same row.
    let started = Instant::now();
    assert_lock_timeout(session.repo().link(1, home.location_id), started);
    holder.batch_execute("COMMIT").unwrap();

    // The session goes on; nothing of the failed writes was stored.
    assert!(session.repo().user_locations().unwrap().is_empty());
    assert!(!session.repo().deactivate_user(1).unwrap().active);
    assert!(session.repo().link(1, home.location_id).unwrap());
    assert_eq!(session.repo().user_locations().unwrap().len(), 1);
    drop(session);
    // The SET LOCALs ended with their transactions: another client sees the server's setting.
    let mut other =
        PgConnection::establish(&bouncer.url("postgres").unwrap().render(Secrets::Shown)).unwrap();
    let row: Setting = diesel::sql_query("SELECT current_setting('lock_timeout') AS setting")
        .get_result(&mut other)
        .unwrap();
    assert_eq!(row.setting, "0");
}

/// Behind pgbouncer in transaction mode, an autocommit read running too long, or waiting for
/// a lock under `statement_timeout` alone, gives `Error::StatementTimeout`; `users_iter` reads
/// in bounded pages there; the per-call override holds, longer and shorter.
#[test]
#[ignore = "needs pgbouncer: apt-get install pgbouncer, then cargo test --test deadlines -- --include-ignored"]
fn statement_timeout_bounds_autocommit_reads_behind_pgbouncer_transaction_mode() {
    let (server, bouncer) = behind_pgbouncer();
    let db = through(
        &bouncer,
        PoolConfig::default().with_statement_timeout(Some(Duration::from_millis(300))),
    );
    let mut session = db.session().unwrap();
    assert_eq!(setting(&mut session.repo(), "statement_timeout"), "300ms");
    let started = Instant::now();
    assert_statement_timeout(sleep(&mut session.repo(), 5.0));
    assert!(
        started.elapsed() < GIVES_UP_WITHIN,
        "{:?}",
        started.elapsed()
    );

    let mut holder = server.connect().unwrap();
    holder
        .batch_execute(
            "SET idle_in_transaction_session_timeout = '20s'; BEGIN; \
             LOCK TABLE users IN ACCESS EXCLUSIVE MODE",
        )
        .unwrap();
    let started = Instant::now();
    assert_statement_timeout(session.repo().users());
    assert!(
        started.elapsed() < GIVES_UP_WITHIN,
        "{:?}",
        started.elapsed()
    );
    {
        let mut repo = session.repo();
        let mut rows = repo.users_iter().unwrap();
        assert_statement_timeout(rows.next().unwrap());
        assert!(rows.next().is_none(), "a failed page ends the rows");
    }
    holder.batch_execute("COMMIT").unwrap();

    // One call may run longer than the pool's deadline ...
    session
        .repo()
        .with_statement_timeout(Duration::from_secs(30), |repo| sleep(repo, 0.6))
        .unwrap();
    assert_statement_timeout(sleep(&mut session.repo(), 5.0));
    // ... or give up sooner, on a pool without deadlines (whose autocommit statements run as
    // they are: the server's own setting, no limit).
    let unlimited = through(&bouncer, PoolConfig::default());
    let mut free = unlimited.session().unwrap();
    sleep(&mut free.repo(), 0.6).unwrap();
    assert_eq!(setting(&mut free.repo(), "statement_timeout"), "0");
    let outcome = free
        .repo()
        .with_statement_timeout(Duration::from_millis(100), |repo| sleep(repo, 5.0));
    assert_statement_timeout(outcome);

    // The session goes on, and users_iter returns every user in order across its pages.
    let users: Vec<NewUser<'_>> = (1..=2_500).map(|id| NewUser::new(id, "User")).collect();
    assert_eq!(session.repo().import_users(&users).unwrap(), 2_500);
    let ids: Vec<i64> = session
        .repo()
        .users_iter()
        .unwrap()
        .map(|user| user.unwrap().user_id)
        .collect();
    assert_eq!(ids, (1..=2_500).collect::<Vec<i64>>());
}

/// The verdict that a pool is behind a transaction pooler comes from a probe in the
/// background; checkouts wait for it, so even the first statements of a fresh pool, from
/// several threads at once, run with the deadlines. 12 fresh pools (statement cache on and off)
/// of 4 threads each.
#[test]
#[ignore = "needs pgbouncer: apt-get install pgbouncer, then cargo test --test deadlines -- --include-ignored"]
fn deadlines_hold_from_the_first_statement_of_a_pool_behind_pgbouncer() {
    let (_server, bouncer) = behind_pgbouncer();
    for round in 0..12_u64 {
        let (lock, statement) = (201 + round, 3_001 + round);
        let db = through(
            &bouncer,
            PoolConfig::default()
                .with_statement_cache(round % 2 == 0)
                .with_lock_timeout(Some(Duration::from_millis(lock)))
                .with_statement_timeout(Some(Duration::from_millis(statement))),
        );
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let db = db.clone();
                std::thread::spawn(move || {
                    let mut session = db.session().unwrap();
                    let mut repo = session.repo();
                    (
                        setting(&mut repo, "lock_timeout"),
                        setting(&mut repo, "statement_timeout"),
                    )
                })
            })
            .collect();
        for thread in threads {
            assert_eq!(
                thread.join().unwrap(),
                (format!("{lock}ms"), format!("{statement}ms")),
                "round {round}"
            );
        }
    }
}

/// A session pooler gives each client its own server connection, where the session `SET`s
/// hold: the pool runs its autocommit statements as they are there (after a session `SET` of
/// its own, a statement sees that one), as on a direct connection.
#[test]
#[ignore = "needs pgbouncer: apt-get install pgbouncer, then cargo test --test deadlines -- --include-ignored"]
fn a_session_pooler_runs_autocommit_statements_as_they_are() {
    let server = Cluster::start().unwrap();
    let bouncer = PgBouncer::start_with(
        &server.url(),
        &PgBouncerOptions::new().pool_mode(PoolMode::Session),
    )
    .unwrap();
    let db = through(
        &bouncer,
        one_connection().with_lock_timeout(Some(Duration::from_millis(200))),
    );
    let mut session = db.session().unwrap();
    assert_eq!(setting(&mut session.repo(), "lock_timeout"), "200ms");
    assert_eq!(
        lock_timeout_after_a_session_set(&mut session),
        ("0".to_owned(), "200ms".to_owned())
    );
}
