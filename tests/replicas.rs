//! Reads on replicas and pools behind pgbouncer, on private servers (started and removed by each
//! test, never the shared one): a transaction that wrote nothing leaves reads on the replica, a
//! replica back from an outage serves reads again within about two check intervals, and a pool
//! behind a transaction pooler switches its statement cache off by itself.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::sql_types::Integer;
use diesel::RunQueryDsl;
use diesel::{Connection, IntoSql, PgConnection};
use userbase::config::ReplicaConfig;
use userbase::{Database, Error, PoolConfig, Repo, Secrets, Settings};
use userbase_testing::{
    fixtures, Cluster, PgBouncer, PgBouncerOptions, PoolMode, PrimaryStandby, StandbyOptions,
    StopMode,
};

use common::{eventually, Captured, Flag};

/// `pg_is_in_recovery()` where the read runs: true on the standby, false on the primary.
fn on_standby(repo: &mut Repo<'_>) -> userbase::Result<bool> {
    let rows = repo.load_sql::<Flag>("SELECT pg_is_in_recovery() AS flag")?;
    Ok(rows.first().is_some_and(|row| row.flag))
}

/// A primary and its streaming standby, migrated and replayed, with a `Database` reading from
/// the standby under `replicas`.
fn replicated(replicas: ReplicaConfig) -> (PrimaryStandby, Database) {
    let pair = PrimaryStandby::start_with(&StandbyOptions::new()).unwrap();
    let pool = PoolConfig::default()
        .with_pool_size(2)
        .with_max_overflow(8)
        .with_pool_timeout(Duration::from_secs(10))
        .with_echo_pool(true);
    let settings = Settings::new(pair.primary().url())
        .with_pool(pool)
        .with_replicas(replicas.with_url(pair.standby().url()));
    let db = Database::new(settings).unwrap();
    db.run_pending_migrations().unwrap();
    pair.wait_for_replay(Duration::from_secs(30)).unwrap();
    (pair, db)
}

#[test]
fn a_transaction_that_wrote_nothing_leaves_reads_on_the_replica() {
    let (pair, db) = replicated(ReplicaConfig::default().with_wait(Duration::from_millis(500)));
    db.transaction(|repo| fixtures::user(1).insert(repo).map(drop))
        .unwrap();
    let written = db.last_write().expect("a write records its position");
    pair.wait_for_replay(Duration::from_secs(30)).unwrap();
    assert!(db.read(on_standby).unwrap(), "the replica serves reads");

    // An idle primary just after a WAL segment switch: its insert position lies past the new
    // segment's header, which no standby reaches until someone writes again.
    let mut primary = pair.primary().connect().unwrap();
    diesel::sql_query("SELECT pg_switch_wal()")
        .execute(&mut primary)
        .unwrap();
    let found = db.transaction(|repo| repo.find_user(1)).unwrap();
    assert_eq!(found.map(|user| user.user_id), Some(1));
    let counted = db
        .transaction_with_retry(userbase::RetryPolicy::default(), |repo| {
            repo.count_user_locations(1)
        })
        .unwrap();
    assert_eq!(counted, 0);
    assert_eq!(
        db.last_write(),
        Some(written),
        "transactions that wrote nothing record no position"
    );
    for read in 0..5 {
        assert!(
            db.read(on_standby).unwrap(),
            "read {read} after the read-only transactions ran on the primary: {:?}",
            db.replicas()
        );
    }

    // A transaction that writes still records its position, and the read after it sees it.
    db.transaction(|repo| fixtures::user(2).insert(repo).map(drop))
        .unwrap();
    assert!(db.last_write() > Some(written), "{:?}", db.last_write());
    let name = db.read(|repo| Ok(repo.find_user(2)?.map(|user| user.user_id)));
    assert_eq!(name.unwrap(), Some(2));
}

#[test]
fn a_position_recorded_just_after_a_wal_switch_is_one_the_replica_reaches() {
    let (pair, db) = replicated(ReplicaConfig::default().with_wait(Duration::from_millis(500)));
    // A write on a session (outside `transaction`), then a segment switch before the caller
    // records the position: the insert position now lies past the new segment's header.
    fixtures::user(3)
        .insert(&mut db.session().unwrap().repo())
        .unwrap();
    let mut primary = pair.primary().connect().unwrap();
    diesel::sql_query("SELECT pg_switch_wal()")
        .execute(&mut primary)
        .unwrap();
    let recorded = db
        .record_write()
        .unwrap()
        .expect("a position on PostgreSQL");
    assert_eq!(db.last_write(), Some(recorded));
    assert_eq!(
        recorded.as_u64() % (16 << 20),
        0,
        "{recorded}: the new segment's start, not past its header"
    );
    let mut standby = pair.standby().connect().unwrap();
    let sql = format!("SELECT pg_last_wal_replay_lsn() >= '{recorded}' AS flag");
    let replayed = eventually(Duration::from_secs(30), || {
        diesel::sql_query(&sql)
            .get_result::<Flag>(&mut standby)
            .unwrap()
            .flag
    });
    assert!(replayed, "the standby never reached {recorded}");
    for read in 0..5 {
        let (here, user) = db
            .read(|repo| Ok((on_standby(repo)?, repo.find_user(3)?.map(|u| u.user_id))))
            .unwrap();
        assert_eq!(user, Some(3), "read {read} sees the write");
        assert!(here, "read {read} ran on the primary: {:?}", db.replicas());
    }
}

/// What the reading threads of [`a_replica_back_from_an_outage_serves_reads_again_at_once`]
/// saw.
#[derive(Default)]
struct Reads {
    on_standby: AtomicUsize,
    on_primary: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

#[test]
fn a_replica_back_from_an_outage_serves_reads_again_at_once() {
    let interval = Duration::from_millis(250);
    // The first backoff step is the check interval; the margin covers a loaded machine (the
    // standby's WAL receiver has to reconnect too). Counting each read caught by the stop as a
    // failure of its own took the backoff to 30 s.
    let bound = interval + interval + Duration::from_secs(5);
    let (mut pair, db) = replicated(ReplicaConfig::default().with_check_interval(interval));
    db.transaction(|repo| fixtures::user(1).insert(repo).map(drop))
        .unwrap();
    pair.wait_for_replay(Duration::from_secs(30)).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(Reads::default());
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let (db, stop, reads) = (db.clone(), stop.clone(), reads.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match db.read(on_standby) {
                        Ok(true) => reads.on_standby.fetch_add(1, Ordering::Relaxed),
                        Ok(false) => reads.on_primary.fetch_add(1, Ordering::Relaxed),
                        Err(error) => {
                            reads.failures.lock().unwrap().push(format!("{error:?}"));
                            0
                        }
                    };
                }
            })
        })
        .collect();
    let warm = eventually(Duration::from_secs(30), || {
        reads.on_standby.load(Ordering::Relaxed) >= 200
    });
    assert!(warm, "reads did not reach the standby: {:?}", db.replicas());

    pair.standby_mut().stop_with(StopMode::Immediate).unwrap();
    assert!(
        eventually(Duration::from_secs(20), || db.replicas()[0].down),
        "{:?}",
        db.replicas()
    );
    let on_primary = reads.on_primary.load(Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(20), || {
            reads.on_primary.load(Ordering::Relaxed) >= on_primary + 100
        }),
        "reads did not go to the primary while the standby was down"
    );
    pair.standby_mut().start_again().unwrap();
    let back = Instant::now();
    let on_standby = reads.on_standby.load(Ordering::Relaxed);
    let returned = eventually(Duration::from_secs(60), || {
        reads.on_standby.load(Ordering::Relaxed) > on_standby
    });
    let took = back.elapsed();
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.join().unwrap();
    }
    println!("reads returned to the standby {took:?} after it was started again");
    assert!(returned, "reads never returned: {:?}", db.replicas());
    assert!(
        took <= bound,
        "reads returned to the standby {took:?} after it was back (bound {bound:?})"
    );
    assert_eq!(*reads.failures.lock().unwrap(), Vec::<String>::new());
}

/// 16 threads, 40 cycles each (a write, then two reads on fresh sessions) through `bouncer`
/// with the statement cache on; returns the errors and what was logged at WARN.
fn cycles_with_the_cache_on(bouncer: &PgBouncer) -> (Vec<String>, String) {
    let mut errors = Vec::new();
    let log = Captured::run_watching(tracing::Level::WARN, |captured| {
        let db = Database::new(
            Settings::new(bouncer.url("postgres").unwrap())
                .with_pool(PoolConfig::default().with_pool_size(16)),
        )
        .unwrap();
        assert!(db.config().statement_cache);
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let threads: Vec<_> = (0..16_i64)
            .map(|t| {
                let (db, dispatch) = (db.clone(), dispatch.clone());
                std::thread::spawn(move || {
                    tracing::dispatcher::with_default(&dispatch, || {
                        let mut errors = Vec::new();
                        for i in 0..40_i64 {
                            let id = t * 1000 + i;
                            let outcome = db
                                .transaction(|repo| fixtures::user(id).insert(repo).map(drop))
                                .and_then(|()| db.session()?.repo().find_user(id))
                                .and_then(|found| found.ok_or(Error::NotFound).map(drop))
                                .and_then(|()| {
                                    db.session()?.repo().count_user_locations(id).map(drop)
                                });
                            if let Err(e) = outcome {
                                errors.push(userbase_testing::report(&e));
                            }
                        }
                        errors
                    })
                })
            })
            .collect();
        errors = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        // The pool decides on a thread of its own (the checkouts meanwhile run with the cache
        // off): wait for its verdict's warning.
        assert!(
            common::eventually(Duration::from_secs(60), || captured
                .text()
                .contains("DB_STATEMENT_CACHE")),
            "no warning: {}",
            captured.text()
        );
    });
    (errors, log)
}

#[test]
#[ignore = "needs pgbouncer: the README's set-up does not install it (.ci/run does); run with `cargo test --test replicas -- --include-ignored`"]
fn behind_a_transaction_pooler_the_statement_cache_switches_itself_off() {
    let server = Cluster::start().unwrap();
    let direct = Database::new(Settings::new(server.url())).unwrap();
    assert!(!direct.run_pending_migrations().unwrap().is_empty());

    let bouncer =
        PgBouncer::start_with(&server.url(), &PgBouncerOptions::new().default_pool_size(4))
            .unwrap();
    // Deciding leaves nothing behind on the shared server connections: a client with its own
    // statement cache (names from `__diesel_stmt_1` on) meets no name of ours there.
    let first = Database::new(Settings::new(bouncer.url("postgres").unwrap())).unwrap();
    Captured::run_watching(tracing::Level::WARN, |captured| {
        drop(first.session().unwrap());
        // The pool decides on a thread of its own: wait for its verdict.
        assert!(common::eventually(Duration::from_secs(60), || captured
            .text()
            .contains("DB_STATEMENT_CACHE")));
    });
    let mut raw =
        PgConnection::establish(&bouncer.url("postgres").unwrap().render(Secrets::Shown)).unwrap();
    for _ in 0..5 {
        let one = diesel::select(1_i32.into_sql::<Integer>()).get_result::<i32>(&mut raw);
        assert_eq!(one.map_err(|e| e.to_string()), Ok(1));
    }
    drop((raw, first));
    let (errors, log) = cycles_with_the_cache_on(&bouncer);
    assert_eq!(errors, Vec::<String>::new(), "log: {log}");
    assert_eq!(
        log.matches("DB_STATEMENT_CACHE").count(),
        1,
        "one warning per pool: {log}"
    );
    assert!(log.contains("statement cache is switched off"), "{log}");
    assert_eq!(
        direct.session().unwrap().repo().users_raw().unwrap().len(),
        640
    );

    // A session pooler gives each client its own server connection: the cache stays on and
    // nothing is logged. Neither is anything logged for a direct connection.
    let session_mode = PgBouncer::start_with(
        &server.url(),
        &PgBouncerOptions::new().pool_mode(PoolMode::Session),
    )
    .unwrap();
    let log = Captured::run(tracing::Level::WARN, || {
        for url in [session_mode.url("postgres").unwrap(), server.url()] {
            let db = Database::new(Settings::new(url)).unwrap();
            let mut sessions: Vec<_> = (0..3).map(|_| db.session().unwrap()).collect();
            for session in &mut sessions {
                assert_eq!(session.repo().users_raw().unwrap().len(), 640);
            }
        }
    });
    assert_eq!(log, "");
}
