//! Scaling on private servers: reads on a streaming replica with exact read-your-writes, lag and
//! health, failover through a libpq multi-host URL, and pgbouncer in transaction mode. Every
//! server here is private (started and removed by the test), never the shared one.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::RunQueryDsl;
use userbase::config::ReplicaConfig;
use userbase::{AnyConnection, Database, DbUrl, Error, PoolConfig, Session, Settings, WalPosition};
use userbase_testing::{
    fixtures, Cluster, PgBouncer, PgBouncerOptions, PrimaryStandby, StandbyOptions, StopMode,
};

use common::{eventually, Flag, Port};

fn pg(session: &mut Session) -> &mut diesel::PgConnection {
    match session.connection() {
        AnyConnection::Pg(pg) => pg,
        AnyConnection::Sqlite(_) => panic!("expected PostgreSQL"),
    }
}

/// `pg_is_in_recovery()` on the session's server: true on the standby.
fn in_recovery(session: &mut Session) -> bool {
    diesel::sql_query("SELECT pg_is_in_recovery() AS flag")
        .get_result::<Flag>(pg(session))
        .unwrap()
        .flag
}

fn server_port(session: &mut Session) -> u16 {
    let port = diesel::sql_query("SELECT inet_server_port() AS port")
        .get_result::<Port>(pg(session))
        .unwrap()
        .port;
    u16::try_from(port).unwrap()
}

fn small_pool() -> PoolConfig {
    PoolConfig::default()
        .with_pool_size(2)
        .with_max_overflow(4)
        .with_pool_timeout(Duration::from_secs(10))
}

/// A primary and its standby, migrated (the standby replays the migrations), with a `Database`
/// reading from the standby.
fn replicated(options: &StandbyOptions, replicas: ReplicaConfig) -> (PrimaryStandby, Database) {
    let pair = PrimaryStandby::start_with(options).unwrap();
    let settings = Settings::new(pair.primary().url())
        .with_pool(small_pool().with_echo_pool(true))
        .with_replicas(replicas.with_url(pair.standby().url()));
    let db = Database::new(settings).unwrap();
    db.run_pending_migrations().unwrap();
    pair.set_apply_delay(Duration::ZERO).unwrap();
    pair.wait_for_replay(Duration::from_secs(30)).unwrap();
    if let Some(delay) = options.apply_delay {
        pair.set_apply_delay(delay).unwrap();
    }
    (pair, db)
}

#[test]
fn reads_go_to_the_replica_and_writes_to_the_primary() {
    let (pair, db) = replicated(&StandbyOptions::new(), ReplicaConfig::default());
    assert!(
        in_recovery(&mut db.read_session().unwrap()),
        "read session on the standby"
    );
    assert!(
        !in_recovery(&mut db.session().unwrap()),
        "session on the primary"
    );
    db.transaction(|repo| fixtures::user(7).username("ada").insert(repo).map(drop))
        .unwrap();
    let token = db.last_write().expect("the commit's position is recorded");
    assert_eq!(token.to_string().parse::<WalPosition>().unwrap(), token);
    let name = db.read(|repo| Ok(repo.user(7)?.username)).unwrap();
    assert_eq!(name.as_deref(), Some("ada"));
    // Writes on a replica are a typed error, not a crash; through `read` on the primary too.
    let err = db
        .read(|repo| fixtures::user(8).insert(repo).map(drop))
        .unwrap_err();
    assert!(matches!(err, Error::ReadOnly { .. }), "{err:?}");
    let mut replica = db.read_session().unwrap();
    assert!(in_recovery(&mut replica));
    let err = replica.repo().delete_user(7).unwrap_err();
    assert!(matches!(err, Error::ReadOnly { .. }), "{err:?}");
    drop(replica);
    // The replica's connections are read-only even on a server that is not in recovery.
    let on_primary = Database::new(
        Settings::new(pair.primary().url())
            .with_replicas(ReplicaConfig::default().with_url(pair.primary().url())),
    )
    .unwrap();
    let err = on_primary
        .read_session()
        .unwrap()
        .repo()
        .delete_user(7)
        .unwrap_err();
    assert!(matches!(err, Error::ReadOnly { .. }), "{err:?}");
    assert_eq!(db.session().unwrap().repo().users_raw().unwrap().len(), 1);
}

#[test]
fn read_is_read_only_without_replicas_on_both_backends() {
    for backend in [userbase::Backend::Postgres, userbase::Backend::Sqlite] {
        let test = userbase_testing::TestDb::new(backend);
        let db = test.seeded();
        assert_eq!(db.read(|repo| Ok(repo.users_raw()?.len())).unwrap(), 7);
        let err = db
            .read(|repo| fixtures::user(42).insert(repo).map(drop))
            .unwrap_err();
        assert!(
            matches!(err, Error::ReadOnly { .. }),
            "{backend:?}: {err:?}"
        );
        // The connection is writable again afterwards.
        db.transaction(|repo| fixtures::user(42).insert(repo).map(drop))
            .unwrap();
        assert_eq!(db.read(|repo| Ok(repo.users_raw()?.len())).unwrap(), 8);
        assert_eq!(db.last_write(), None);
    }
}

#[test]
fn a_read_that_panics_leaves_its_connection_writable() {
    for backend in [userbase::Backend::Postgres, userbase::Backend::Sqlite] {
        let test = userbase_testing::TestDb::new(backend);
        let db = test.database_with(PoolConfig::default().with_pool_size(1).with_max_overflow(0));
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _: Result<(), Error> = db.read(|_| panic!("the read fails"));
        }));
        assert!(panicked.is_err());
        // The pool's one connection takes writes again.
        db.transaction(|repo| fixtures::user(42).insert(repo).map(drop))
            .unwrap();
        assert_eq!(db.read(|repo| Ok(repo.users_raw()?.len())).unwrap(), 1);
    }
}

/// Cycles of write-then-read; `SCALE_CYCLES` overrides the count.
fn cycles() -> i64 {
    std::env::var("SCALE_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

#[test]
fn read_your_writes_with_a_delayed_replica_sees_no_stale_row() {
    // Long enough that the standby is still behind when it is asked, however loaded the machine.
    let delay = Duration::from_secs(3);
    let (pair, db) = replicated(
        &StandbyOptions::new().apply_delay(delay),
        ReplicaConfig::default()
            .with_wait(Duration::from_millis(5))
            .with_check_interval(Duration::from_millis(100)),
    );
    let mut standby = pair.standby().connect().unwrap();
    let (mut stale, mut standby_behind) = (0, 0);
    let n = cycles();
    for id in 1..=n {
        db.transaction(|repo| fixtures::user(id).insert(repo).map(drop))
            .unwrap();
        if db.read(|repo| repo.find_user(id)).unwrap().is_none() {
            stale += 1;
        }
        // The same read straight on the standby: proves it is behind, so the test can fail.
        let seen: Vec<Flag> = diesel::sql_query(format!(
            "SELECT EXISTS (SELECT 1 FROM users WHERE user_id = {id}) AS flag"
        ))
        .load(&mut standby)
        .unwrap();
        if !seen[0].flag {
            standby_behind += 1;
        }
    }
    assert_eq!(stale, 0, "stale reads in {n} cycles");
    assert!(
        standby_behind > n * 9 / 10,
        "the standby lagged in only {standby_behind} of {n} cycles"
    );

    // Another process holding the token: waits for the replica or reads the primary, never stale.
    let token: WalPosition = db.last_write().unwrap().to_string().parse().unwrap();
    let other = Database::new(
        Settings::new(pair.primary().url())
            .with_replicas(ReplicaConfig::default().with_url(pair.standby().url())),
    )
    .unwrap();
    assert_eq!(
        other.read(|repo| repo.find_user(n)).unwrap(),
        None,
        "without the token: stale replica"
    );
    assert!(other
        .read_after(token, |repo| repo.find_user(n))
        .unwrap()
        .is_some());

    // Once the standby has replayed everything, reads without a pending write use it.
    pair.wait_for_replay(Duration::from_secs(30)).unwrap();
    let fresh = Database::new(
        Settings::new(pair.primary().url())
            .with_replicas(ReplicaConfig::default().with_url(pair.standby().url())),
    )
    .unwrap();
    for _ in 0..20 {
        assert!(in_recovery(&mut fresh.read_session().unwrap()));
    }
    assert!(in_recovery(&mut fresh.read_session_after(token).unwrap()));
}

#[test]
fn a_lagging_replica_is_skipped_and_comes_back() {
    let (pair, db) = replicated(
        &StandbyOptions::new(),
        ReplicaConfig::default()
            .with_max_lag(Duration::from_millis(300))
            .with_check_interval(Duration::from_millis(50)),
    );
    assert!(in_recovery(&mut db.read_session().unwrap()));
    // Lifted below; until then the standby stays behind however slowly the checks run.
    pair.set_apply_delay(Duration::from_secs(120)).unwrap();
    // A write by someone else (no token here): the standby now lags.
    let writer = Database::new(Settings::new(pair.primary().url())).unwrap();
    writer
        .transaction(|repo| fixtures::user(1).insert(repo).map(drop))
        .unwrap();
    assert!(
        eventually(Duration::from_secs(30), || !db.replicas()[0].usable),
        "{:?}",
        db.replicas()
    );
    assert!(db.replicas()[0]
        .lag
        .is_none_or(|lag| lag > Duration::from_millis(300)));
    for _ in 0..10 {
        assert!(
            !in_recovery(&mut db.read_session().unwrap()),
            "lagging replica used"
        );
    }
    pair.set_apply_delay(Duration::ZERO).unwrap();
    assert!(
        eventually(Duration::from_secs(30), || db.replicas()[0].usable),
        "{:?}",
        db.replicas()
    );
    assert!(in_recovery(&mut db.read_session().unwrap()));
    assert!(db.read(|repo| repo.find_user(1)).unwrap().is_some());
}

#[test]
fn a_stopped_replica_costs_no_failed_read() {
    let (mut pair, db) = replicated(
        &StandbyOptions::new(),
        ReplicaConfig::default().with_check_interval(Duration::from_millis(50)),
    );
    db.transaction(|repo| fixtures::user(1).insert(repo).map(drop))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (db, stop, reads) = (db.clone(), stop.clone(), reads.clone());
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match db.read(|repo| Ok(repo.users_raw()?.len())) {
                        Ok(1) => {}
                        other => failures.push(format!("{other:?}")),
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
                failures
            })
        })
        .collect();
    // Reads under way, then the standby stops under them.
    assert!(eventually(Duration::from_secs(30), || reads
        .load(Ordering::Relaxed)
        > 20));
    pair.standby_mut().stop_with(StopMode::Immediate).unwrap();
    assert!(
        eventually(Duration::from_secs(30), || db.replicas()[0].down),
        "{:?}",
        db.replicas()
    );
    // Reads go on (on the primary) while the standby is down.
    let when_down = reads.load(Ordering::Relaxed);
    assert!(eventually(Duration::from_secs(30), || {
        reads.load(Ordering::Relaxed) > when_down + 20
    }));
    assert!(db.replicas()[0].down, "{:?}", db.replicas());
    pair.standby_mut().start_again().unwrap();
    assert!(
        eventually(Duration::from_secs(30), || db.replicas()[0].usable),
        "{:?}",
        db.replicas()
    );
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = readers
        .into_iter()
        .flat_map(|r| r.join().unwrap())
        .collect();
    assert_eq!(failures, Vec::<String>::new());
    assert!(in_recovery(&mut db.read_session().unwrap()));
}

/// `postgres://postgres@127.0.0.1:<primary>,127.0.0.1:<standby>/postgres?target_session_attrs=read-write`
fn failover_url(pair: &PrimaryStandby) -> DbUrl {
    pair.primary()
        .url()
        .with_additional_host("127.0.0.1", Some(pair.standby().port()))
        .unwrap()
        .with_query_param("target_session_attrs", "read-write")
        .unwrap()
        .with_query_param("connect_timeout", "2")
        .unwrap()
}

#[test]
fn writes_resume_after_promotion_with_the_old_primary_stopped() {
    let mut pair = PrimaryStandby::start().unwrap();
    let db = Database::new(Settings::new(failover_url(&pair)).with_pool(small_pool())).unwrap();
    db.run_pending_migrations().unwrap();
    db.transaction(|repo| fixtures::user(1).insert(repo).map(drop))
        .unwrap();
    pair.wait_for_replay(Duration::from_secs(30)).unwrap();
    let primary_port = pair.primary().port();
    assert_eq!(server_port(&mut db.session().unwrap()), primary_port);

    let started = Instant::now();
    pair.primary_mut().stop_with(StopMode::Fast).unwrap();
    pair.standby().promote().unwrap();
    let mut failed_attempts = 0;
    while db
        .transaction(|repo| fixtures::user(2).insert(repo).map(drop))
        .is_err()
    {
        failed_attempts += 1;
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "writes did not resume"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let resumed = started.elapsed();
    println!(
        "writes resumed {resumed:?} after stopping the primary ({failed_attempts} failed attempts)"
    );
    assert_eq!(
        server_port(&mut db.session().unwrap()),
        pair.standby().port()
    );
    assert_eq!(db.session().unwrap().repo().users_raw().unwrap().len(), 2);
}

#[test]
fn connections_to_a_demoted_primary_are_evicted() {
    let pair = PrimaryStandby::start().unwrap();
    let db = Database::new(Settings::new(failover_url(&pair)).with_pool(small_pool())).unwrap();
    db.run_pending_migrations().unwrap();
    db.transaction(|repo| fixtures::user(1).insert(repo).map(drop))
        .unwrap();
    pair.wait_for_replay(Duration::from_secs(30)).unwrap();
    // The old primary keeps answering but refuses writes; the standby takes over.
    pair.primary()
        .set("default_transaction_read_only", "on")
        .unwrap();
    pair.standby().promote().unwrap();
    let err = db
        .transaction(|repo| fixtures::user(2).insert(repo).map(drop))
        .unwrap_err();
    assert!(matches!(err, Error::ReadOnly { .. }), "{err:?}");
    db.transaction(|repo| fixtures::user(2).insert(repo).map(drop))
        .unwrap();
    let mut session = db.session().unwrap();
    assert_eq!(server_port(&mut session), pair.standby().port());
    assert_eq!(session.repo().users_raw().unwrap().len(), 2);
}

/// 16 threads through pgbouncer in transaction mode; returns the errors.
fn through_pgbouncer(bouncer: &PgBouncer, statement_cache: bool) -> Vec<String> {
    let db = Database::new(
        Settings::new(bouncer.url("postgres").unwrap()).with_pool(
            PoolConfig::default()
                .with_pool_size(16)
                .with_statement_cache(statement_cache),
        ),
    )
    .unwrap();
    let threads: Vec<_> = (0..16_i64)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                let mut errors = Vec::new();
                for i in 0..40_i64 {
                    let id = 1_000_000 * i64::from(statement_cache) + t * 1000 + i;
                    let outcome = db
                        .transaction(|repo| fixtures::user(id).insert(repo).map(drop))
                        .and_then(|()| db.session()?.repo().find_user(id))
                        .and_then(|found| found.ok_or(Error::NotFound).map(drop))
                        .and_then(|()| db.session()?.repo().count_user_locations(id).map(drop));
                    if let Err(e) = outcome {
                        errors.push(userbase_testing::report(&e));
                    }
                }
                errors
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

#[test]
#[ignore = "needs pgbouncer: apt-get install pgbouncer, then cargo test -- --include-ignored"]
fn pgbouncer_transaction_mode_works_with_the_statement_cache_off() {
    let server = Cluster::start().unwrap();
    let bouncer =
        PgBouncer::start_with(&server.url(), &PgBouncerOptions::new().default_pool_size(4))
            .unwrap();
    // Migrations through the pooler are refused with a clear error; a direct URL works.
    let through = Database::new(Settings::new(bouncer.url("postgres").unwrap())).unwrap();
    match through.run_pending_migrations() {
        Err(Error::Config { variable, message }) => {
            assert_eq!(variable.as_deref(), Some("DATABASE_URL"));
            assert!(message.contains("pooler"), "{message}");
        }
        other => panic!("migrating through pgbouncer: {other:?}"),
    }
    let direct = Database::new(
        Settings::new(bouncer.url("postgres").unwrap()).with_migration_url(server.url()),
    )
    .unwrap();
    assert!(!direct.run_pending_migrations().unwrap().is_empty());
    assert_eq!(
        direct.run_pending_migrations().unwrap(),
        Vec::<String>::new()
    );

    let off = through_pgbouncer(&bouncer, false);
    assert_eq!(off, Vec::<String>::new(), "cache off");
    // With the cache on, the pool sees the transaction pooler at its first checkout and
    // switches the cache off itself (tests/replicas.rs checks its warning).
    let on = through_pgbouncer(&bouncer, true);
    assert_eq!(on, Vec::<String>::new(), "cache on");
}

#[test]
fn replica_and_migration_settings_are_read_from_the_environment() {
    let vars = |pairs: &[(&str, &str)]| {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::from_lookup(|name| map.get(name).cloned())
    };
    let s = vars(&[
        ("DATABASE_URL", "postgres://app@primary/app"),
        (
            "DATABASE_REPLICA_URLS",
            "postgres://app:secret@r1:5432,r2:5433/app?target_session_attrs=standby, postgresql://app@r3/app",
        ),
        ("DB_REPLICA_WAIT_MS", "0"),
        ("DB_MAX_REPLICA_LAG_MS", "1500"),
        ("DB_REPLICA_CHECK_MS", "100"),
        ("DATABASE_MIGRATION_URL", "postgres://owner@primary:5432/app"),
        ("DB_STATEMENT_CACHE", "off"),
    ])
    .unwrap();
    let urls: Vec<String> = s.replicas.urls.iter().map(ToString::to_string).collect();
    assert_eq!(
        urls,
        [
            "postgres://app:***@r1:5432,r2:5433/app?target_session_attrs=standby",
            "postgresql://app@r3/app"
        ]
    );
    assert_eq!(s.replicas.wait, Duration::ZERO);
    assert_eq!(s.replicas.max_lag, Duration::from_millis(1500));
    assert_eq!(s.replicas.check_interval, Duration::from_millis(100));
    assert_eq!(
        s.migration_url.unwrap().to_string(),
        "postgres://owner@primary:5432/app"
    );
    assert!(!s.pool.statement_cache);
    let defaults = vars(&[]).unwrap();
    assert_eq!(defaults.replicas, ReplicaConfig::default());
    assert_eq!(defaults.migration_url, None);
    assert!(defaults.pool.statement_cache);

    for (name, value) in [
        ("DATABASE_REPLICA_URLS", "r1:5432"),
        ("DATABASE_REPLICA_URLS", "postgres://a@h:0/db"),
        ("DB_MAX_REPLICA_LAG_MS", "0"),
        ("DB_REPLICA_WAIT_MS", "-1"),
        ("DB_REPLICA_CHECK_MS", "5"),
        ("DATABASE_MIGRATION_URL", "postgres://a@h:99999/db"),
        ("DB_STATEMENT_CACHE", "maybe"),
    ] {
        match vars(&[(name, value)]) {
            Err(Error::Config { variable, message }) => {
                assert_eq!(variable.as_deref(), Some(name), "{message}");
                assert!(!message.contains("secret"));
            }
            other => panic!("{name}={value}: {other:?}"),
        }
    }
    // In code: SQLite replicas and out-of-range knobs are refused.
    let bad = Settings::new(DbUrl::sqlite(":memory:").unwrap())
        .with_replicas(ReplicaConfig::default().with_url(DbUrl::sqlite("r.db").unwrap()));
    assert!(matches!(Database::new(bad), Err(Error::Config { .. })));
    let bad = Settings::new(DbUrl::sqlite(":memory:").unwrap())
        .with_replicas(ReplicaConfig::default().with_max_lag(Duration::ZERO));
    assert!(matches!(Database::new(bad), Err(Error::Config { .. })));
}
