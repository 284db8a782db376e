//! Deadlocks and serialization failures provoked for real with concurrent sessions, the retry
//! loop, referral changes inside retried transactions, concurrent `replace_user_locations`, and
//! migrations run by separate processes — on PostgreSQL and SQLite. (Races of plain `Repo` calls:
//! `tests/races.rs`.)

mod common;

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use userbase::models::{NewLocation, NewUser, UserChanges};
use userbase::{Backend, Database, DbUrl, Error, RetryPolicy, Settings};

use common::TestDb;

/// Threads meet here, but none waits longer than `timeout`: on SQLite a thread holding the
/// write lock must not wait forever for one that waits for the lock.
#[derive(Clone)]
struct Rendezvous(Arc<(Mutex<usize>, Condvar)>, usize);

impl Rendezvous {
    fn new(parties: usize) -> Self {
        Rendezvous(Arc::new((Mutex::new(0), Condvar::new())), parties)
    }

    /// Arrives; returns whether everyone arrived in time.
    fn wait(&self, timeout: Duration) -> bool {
        let (count, ready) = &*self.0;
        let mut arrived = count.lock().unwrap();
        *arrived += 1;
        ready.notify_all();
        let deadline = Instant::now() + timeout;
        while *arrived < self.1 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            arrived = ready.wait_timeout(arrived, left).unwrap().0;
        }
        true
    }
}

/// How long a thread inside a transaction waits at a rendezvous for the other one. PostgreSQL:
/// long, as the other one always arrives (neither blocks the other before the meeting), however
/// slowly a loaded machine runs it. SQLite: short, as the other one cannot arrive (its IMMEDIATE
/// transaction waits for the write lock this one holds) until this one gives up waiting.
fn meeting_limit(backend: Backend) -> Duration {
    match backend {
        Backend::Sqlite => Duration::from_secs(2),
        _ => Duration::from_secs(60),
    }
}

fn rename(full_name: &str) -> UserChanges<'_> {
    UserChanges {
        full_name: Some(full_name),
        ..UserChanges::default()
    }
}

fn two_users(db: &Database) {
    let mut session = db.session().unwrap();
    session.repo().insert_user(&NewUser::new(1, "One")).unwrap();
    session.repo().insert_user(&NewUser::new(2, "Two")).unwrap();
}

/// The full names of users 1 and 2.
fn names(db: &Database) -> (String, String) {
    let mut session = db.session().unwrap();
    let mut repo = session.repo();
    (
        repo.user(1).unwrap().full_name,
        repo.user(2).unwrap().full_name,
    )
}

/// Two threads update users 1 and 2 in opposite orders, meeting after their first update.
fn opposite_order_updates(
    db: &Database,
    run: impl Fn(&Database, &dyn Fn(&mut userbase::Repo<'_>) -> Result<(), Error>) -> Result<(), Error>
        + Sync,
) -> Vec<Result<(), Error>> {
    let meet = Rendezvous::new(2);
    let limit = meeting_limit(db.backend());
    std::thread::scope(|scope| {
        let handles: Vec<_> = [("a", 1, 2), ("b", 2, 1)]
            .into_iter()
            .map(|(tag, first, second)| {
                let meet = meet.clone();
                let run = &run;
                scope.spawn(move || {
                    let body = |repo: &mut userbase::Repo<'_>| {
                        repo.update_user(first, &rename(&format!("{tag}{first}")))?;
                        meet.wait(limit);
                        repo.update_user(second, &rename(&format!("{tag}{second}")))?;
                        Ok(())
                    };
                    run(db, &body)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

both_backends! {
    fn opposite_order_updates_deadlock_typed(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        two_users(&db);
        let results = opposite_order_updates(&db, |db, body| db.transaction(|repo| body(repo)));
        let deadlocks = results.iter().filter(|r| matches!(r, Err(Error::Deadlock { .. }))).count();
        let ok = results.iter().filter(|r| r.is_ok()).count();
        match backend {
            // PostgreSQL aborts one of them with 40P01.
            Backend::Postgres => {
                assert_eq!((deadlocks, ok), (1, 1), "{results:?}");
                let err = results.iter().find_map(|r| r.as_ref().err()).unwrap();
                assert!(err.is_retryable());
                assert!(err.to_string().starts_with("deadlock detected"), "{err}");
            }
            // SQLite's IMMEDIATE transactions run one after the other: no deadlock.
            Backend::Sqlite => assert_eq!(ok, 2, "{results:?}"),
            other => unreachable!("no case for {other:?}"),
        }
        let (one, two) = names(&db);
        assert_eq!(one[..1], two[..1], "one transaction's writes only: {one} {two}");
    }

    fn retry_outlives_deadlocks(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        two_users(&db);
        for _ in 0..3 {
            let policy = RetryPolicy::default().with_max_attempts(10);
            let results = opposite_order_updates(&db, |db, body| db.transaction_with_retry(policy, |repo| body(repo)));
            assert!(results.iter().all(Result::is_ok), "{results:?}");
            let (one, two) = names(&db);
            assert_eq!(one[..1], two[..1], "a serial outcome: {one} {two}");
        }
    }

    fn write_skew_is_a_serialization_failure(backend: Backend) {
        // Each transaction deactivates its user if both are active: serially, one stays active.
        let test = TestDb::new(backend);
        let db = test.database();
        let run = |policy: RetryPolicy| {
            let meet = Rendezvous::new(2);
            std::thread::scope(|scope| {
                let handles: Vec<_> = [1_i64, 2]
                    .into_iter()
                    .map(|me| {
                        let (meet, db) = (meet.clone(), &db);
                        scope.spawn(move || {
                            db.transaction_with_retry(policy, |repo| {
                                let active = repo.users()?.iter().filter(|u| u.active).count();
                                meet.wait(meeting_limit(backend));
                                if active == 2 {
                                    repo.deactivate_user(me)?;
                                }
                                Ok(())
                            })
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
            })
        };
        let active = |db: &Database| db.session().unwrap().repo().users().unwrap().iter().filter(|u| u.active).count();
        two_users(&db);
        let once = run(RetryPolicy::default().with_max_attempts(1));
        let failures = once.iter().filter(|r| matches!(r, Err(Error::SerializationFailure { .. }))).count();
        match backend {
            Backend::Postgres => assert_eq!(failures, 1, "{once:?}"),
            Backend::Sqlite => assert_eq!(failures, 0, "{once:?}"),
            other => unreachable!("no case for {other:?}"),
        }
        assert_eq!(active(&db), 1, "never both deactivated");
        for _ in 0..3 {
            db.session().unwrap().repo().reactivate_user(1).unwrap();
            db.session().unwrap().repo().reactivate_user(2).unwrap();
            let retried = run(RetryPolicy::default().with_max_attempts(10));
            assert!(retried.iter().all(Result::is_ok), "{retried:?}");
            assert_eq!(active(&db), 1);
        }
    }

    fn concurrent_referrals_in_retried_transactions_never_make_a_cycle(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        two_users(&db);
        for round in 0..20 {
            let meet = Rendezvous::new(2);
            let results: Vec<_> = std::thread::scope(|scope| {
                let handles: Vec<_> = [(1_i64, 2_i64), (2, 1)]
                    .into_iter()
                    .map(|(user, referrer)| {
                        let (meet, db) = (meet.clone(), &db);
                        scope.spawn(move || {
                            // Outside any transaction: both always arrive.
                            meet.wait(Duration::from_secs(60));
                            db.transaction_with_retry(RetryPolicy::default().with_max_attempts(10), |repo| {
                                repo.set_referrer(user, Some(referrer)).map(drop)
                            })
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let ok = results.iter().filter(|r| r.is_ok()).count();
            let cycles = results.iter().filter(|r| matches!(r, Err(Error::ReferralCycle { .. }))).count();
            assert_eq!((ok, cycles), (1, 1), "round {round}: {results:?}");
            let mut session = db.session().unwrap();
            let referrers = (session.repo().user(1).unwrap().referrer_id, session.repo().user(2).unwrap().referrer_id);
            assert!(matches!(referrers, (Some(2), None) | (None, Some(1))), "{referrers:?}");
            session.repo().set_referrer(1, None).unwrap();
            session.repo().set_referrer(2, None).unwrap();
        }
    }

    fn eight_threads_replace_one_users_locations(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let names: Vec<String> = (1..=12).map(|i| format!("L{i}")).collect();
        {
            let mut session = db.session().unwrap();
            let mut repo = session.repo();
            let located: Vec<NewLocation> = names.iter().map(|n| NewLocation::new(n, "y")).collect();
            repo.import_locations(&located).unwrap();
            repo.insert_user(&NewUser::new(7, "Busy")).unwrap();
        }
        for run in 0..3_u64 {
            let inputs: Vec<Vec<i32>> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..8_u64)
                    .map(|thread| {
                        let db = &db;
                        scope.spawn(move || {
                            let mut seed = (run * 8 + thread + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                            let mut inputs = Vec::new();
                            for _ in 0..40 {
                                seed ^= seed << 13;
                                seed ^= seed >> 7;
                                seed ^= seed << 17;
                                // A random subset of 1..=12, in a random order.
                                let mut ids: Vec<i32> = (1..=12).filter(|i| seed >> i & 1 == 1).collect();
                                if seed & 1 == 1 {
                                    ids.reverse();
                                }
                                db.session().unwrap().repo().replace_user_locations(7, &ids).unwrap();
                                ids.sort_unstable();
                                inputs.push(ids);
                            }
                            inputs
                        })
                    })
                    .collect();
                handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
            });
            assert_eq!(inputs.len(), 320);
            let stored: Vec<i32> = db
                .session()
                .unwrap()
                .repo()
                .user_locations_with_username(7)
                .unwrap()
                .into_iter()
                .map(|row| row.location.location_id)
                .collect();
            assert!(inputs.contains(&stored), "run {run}: {stored:?} is no call's input");
        }
    }
}

#[test]
fn sqlite_stale_snapshot_is_a_serialization_failure() {
    // Two deferred (raw) transactions read; the first writes and commits; the second's write
    // then needs a newer snapshot: SQLITE_BUSY, SQLite's serialization failure.
    let test = TestDb::new(Backend::Sqlite);
    let db = test.database();
    two_users(&db);
    let mut a = db.session().unwrap();
    let mut b = db.session().unwrap();
    a.connection()
        .batch_execute("BEGIN DEFERRED; SELECT count(*) FROM users;")
        .unwrap();
    b.connection()
        .batch_execute("BEGIN DEFERRED; SELECT count(*) FROM users;")
        .unwrap();
    a.connection()
        .batch_execute("UPDATE users SET full_name = 'A' WHERE user_id = 1; COMMIT;")
        .unwrap();
    let err = Error::from(
        b.connection()
            .batch_execute("UPDATE users SET full_name = 'B' WHERE user_id = 2")
            .unwrap_err(),
    );
    assert!(matches!(err, Error::SerializationFailure { .. }), "{err:?}");
    assert!(err.is_retryable());
    b.connection().batch_execute("ROLLBACK").unwrap();
    assert_eq!(names(&db), ("A".to_owned(), "Two".to_owned()));
}

// ---- migrations from separate processes ------------------------------------------

const CHILD_DB: &str = "USERBASE_TEST_MIGRATE_DB";
const CHILD_AT: &str = "USERBASE_TEST_MIGRATE_AT_MS";

/// Not a test on its own: the body of each child process of
/// `sqlite_migrations_from_four_processes` (does nothing without its environment).
#[test]
fn migration_child() {
    let Ok(path) = std::env::var(CHILD_DB) else {
        return;
    };
    let start: u128 = std::env::var(CHILD_AT).unwrap().parse().unwrap();
    // Start together: sleep until the agreed instant.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    std::thread::sleep(Duration::from_millis(start.saturating_sub(now) as u64));
    let db = Database::new(Settings::new(DbUrl::sqlite(&path).unwrap())).unwrap();
    match db.run_pending_migrations() {
        Ok(applied) => println!("MIGRATED {}", applied.len()),
        Err(e) => println!("MIGRATION FAILED {e}"),
    }
}

#[derive(diesel::QueryableByName)]
struct Version {
    #[diesel(sql_type = diesel::sql_types::Text)]
    version: String,
}

#[test]
fn sqlite_migrations_from_four_processes() {
    let exe = std::env::current_exe().unwrap();
    for round in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fresh.sqlite3");
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            + 700;
        let children: Vec<_> = (0..4)
            .map(|_| {
                std::process::Command::new(&exe)
                    .args([
                        "--exact",
                        "migration_child",
                        "--nocapture",
                        "--test-threads=1",
                    ])
                    .env(CHILD_DB, &path)
                    .env(CHILD_AT, at.to_string())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outputs: Vec<String> = children
            .into_iter()
            .map(|c| String::from_utf8(c.wait_with_output().unwrap().stdout).unwrap())
            .collect();
        let applied: Vec<usize> = outputs
            .iter()
            .map(|out| {
                let line = out
                    .lines()
                    .find_map(|l| l.find("MIGRAT").map(|at| &l[at..]))
                    .unwrap_or_else(|| panic!("round {round}: {out}"));
                line.strip_prefix("MIGRATED ")
                    .unwrap_or_else(|| panic!("round {round}: {line}"))
                    .parse()
                    .unwrap()
            })
            .collect();
        let mut sorted = applied.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            [0, 0, 0, 3],
            "round {round}: one process applies all three"
        );
        let db = Database::new(Settings::new(
            DbUrl::sqlite(path.to_str().unwrap()).unwrap(),
        ))
        .unwrap();
        let mut session = db.session().unwrap();
        let versions: Vec<String> = session
            .repo()
            .load_sql::<Version>("SELECT version FROM __diesel_schema_migrations ORDER BY version")
            .unwrap()
            .into_iter()
            .map(|v| v.version)
            .collect();
        assert_eq!(
            versions,
            ["20240619000001", "20240619000002", "20240619000003"]
        );
        session
            .repo()
            .insert_user(&NewUser::new(1, "Works"))
            .unwrap();
    }
}
