//! No silent loss, every bad input a typed error — each on PostgreSQL and SQLite with
//! the same expected outcome.

mod common;

use chrono::{NaiveDate, NaiveDateTime};
use diesel::connection::SimpleConnection;
use diesel::Connection;
use userbase::models::{NewLocation, NewUser, User, UserChanges, UserLocation};
use userbase::validate::PAGE_LIMIT_MAX;
use userbase::{AnyConnection, Backend, Error, Repo, Secrets, UpsertOptions};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::TestDb;

fn ids(users: &[User]) -> Vec<i64> {
    users.iter().map(|u| u.user_id).collect()
}

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32, nanos: u32) -> NaiveDateTime {
    NaiveDate::from_ymd_opt(y, mo, d)
        .unwrap()
        .and_hms_nano_opt(h, mi, s, nanos)
        .unwrap()
}

/// The first failure an aborted transaction carries.
fn aborted_by(err: &Error) -> &Error {
    match err {
        Error::TransactionAborted { first } => first,
        other => panic!("expected TransactionAborted, got {other:?}"),
    }
}

/// An application's own instrumentation: counts the statements that ran.
struct CountQueries(Arc<AtomicUsize>);

impl diesel::connection::Instrumentation for CountQueries {
    fn on_connection_event(&mut self, event: diesel::connection::InstrumentationEvent<'_>) {
        if let diesel::connection::InstrumentationEvent::FinishQuery { .. } = event {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[derive(diesel::QueryableByName, Debug)]
#[allow(dead_code)]
struct One {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// Inserts users 1..=n named `User {id}` with raw SQL (fast), and links every 1000th user to
/// locations 1 and 2.
fn bulk_users(db: &userbase::Database, backend: Backend, n: i64) {
    let mut session = db.session().unwrap();
    let sql = match backend {
        Backend::Postgres => format!(
            "INSERT INTO users (user_id, full_name) SELECT i, 'User ' || i FROM generate_series(1, {n}) i"
        ),
        Backend::Sqlite => format!(
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n}) \
             INSERT INTO users (user_id, full_name) SELECT i, 'User ' || i FROM s"
        ),
        other => unreachable!("no case for {other:?}"),
    };
    session.connection().batch_execute(&sql).unwrap();
    session
        .connection()
        .batch_execute(
            "INSERT INTO locations (location_name, address) VALUES ('L1', 'a'), ('L2', 'b'); \
             INSERT INTO userlocations (location_id, user_id) \
               SELECT l.location_id, u.user_id FROM users u, locations l WHERE u.user_id % 1000 = 0",
        )
        .unwrap();
}

both_backends! {
    // ---- 1. a failed statement poisons its transaction -----------------------------------

    fn caught_failure_aborts_the_transaction(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        db.session().unwrap().repo().insert_user(&NewUser::new(1, "Stored")).unwrap();
        let err = db
            .transaction(|repo| {
                repo.insert_user(&NewUser::new(10, "Lost"))?;
                let dup = repo.insert_user(&NewUser::new(1, "Duplicate"));
                assert!(matches!(dup, Err(Error::UniqueViolation { .. })), "{dup:?}");
                // Every later statement is refused alike, carrying the first failure.
                let later = repo.insert_user(&NewUser::new(11, "Later")).unwrap_err();
                assert!(matches!(aborted_by(&later), Error::UniqueViolation { .. }), "{later:?}");
                assert!(matches!(repo.users(), Err(Error::TransactionAborted { .. })));
                // A savepoint is refused too (PostgreSQL would refuse it).
                let nested = repo.transaction(|repo| repo.users());
                assert!(matches!(nested, Err(Error::TransactionAborted { .. })), "{nested:?}");
                Ok::<_, Error>(())
            })
            .unwrap_err();
        assert!(matches!(aborted_by(&err), Error::UniqueViolation { .. }), "{err:?}");
        assert!(err.to_string().starts_with("transaction aborted"), "{err}");
        // Nothing of it was committed; the connection is usable again.
        let mut session = db.session().unwrap();
        assert_eq!(ids(&session.repo().users().unwrap()), [1]);
        session.repo().insert_user(&NewUser::new(12, "After")).unwrap();
        assert_eq!(ids(&session.repo().users().unwrap()), [1, 12]);
    }

    fn caller_connection_keeps_its_instrumentation_and_aborts_alike(backend: Backend) {
        let test = TestDb::new(backend);
        drop(test.database()); // the schema
        let target = match backend {
            Backend::Postgres => test.url().render(Secrets::Shown),
            _ => test.url().database().unwrap().to_owned(),
        };
        let mut conn = AnyConnection::open(backend, &target).unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        conn.set_instrumentation(CountQueries(seen.clone()));
        Repo::new(&mut conn).insert_user(&NewUser::new(1, "Stored")).unwrap();
        let before = seen.load(Ordering::SeqCst);
        assert!(before >= 1, "the application's instrumentation saw the insert");

        let err = Repo::new(&mut conn)
            .transaction(|repo| {
                repo.insert_user(&NewUser::new(10, "Lost"))?;
                let dup = repo.insert_user(&NewUser::new(1, "Duplicate"));
                assert!(matches!(dup, Err(Error::UniqueViolation { .. })), "{dup:?}");
                let later = repo.insert_user(&NewUser::new(11, "Later")).unwrap_err();
                assert!(matches!(aborted_by(&later), Error::UniqueViolation { .. }), "{later:?}");
                let nested = repo.transaction(|repo| repo.users());
                assert!(matches!(nested, Err(Error::TransactionAborted { .. })), "{nested:?}");
                Ok::<_, Error>(())
            })
            .unwrap_err();
        assert!(matches!(aborted_by(&err), Error::UniqueViolation { .. }), "{err:?}");

        // The application's instrumentation is still the connection's, and saw both inserts.
        assert!(conn.instrumentation().downcast_ref::<CountQueries>().is_some());
        assert!(seen.load(Ordering::SeqCst) >= before + 2);
        // Nothing of the transaction was committed; the connection is usable again.
        let mut repo = Repo::new(&mut conn);
        assert_eq!(ids(&repo.users().unwrap()), [1]);
        repo.insert_user(&NewUser::new(12, "After")).unwrap();
        assert_eq!(ids(&repo.users().unwrap()), [1, 12]);
    }

    fn caught_failure_of_a_concurrent_session_aborts(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let mut other = db.session().unwrap();
        let mut session = db.session().unwrap();
        let err = session
            .transaction(|repo| {
                repo.insert_location(&NewLocation::new("Mine", "1 Road"))?;
                // Another session takes the name meanwhile (SQLite: it waits for our lock, so it
                // is written before).
                if backend == Backend::Postgres {
                    other.repo().insert_location(&NewLocation::new("Taken", "2 Road")).unwrap();
                }
                let _ = repo.insert_location(&NewLocation::new(
                    if backend == Backend::Postgres { "Taken" } else { "Mine" },
                    "3 Road",
                ));
                Ok::<_, Error>(())
            })
            .unwrap_err();
        assert!(matches!(aborted_by(&err), Error::UniqueViolation { .. }), "{err:?}");
        let names: Vec<String> = other.repo().locations().unwrap().into_iter().map(|l| l.location_name).collect();
        let expected: &[&str] = if backend == Backend::Postgres { &["Taken"] } else { &[] };
        assert_eq!(names, expected);
    }

    fn raw_sql_failure_counts(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let err = db
            .transaction(|repo| {
                repo.insert_user(&NewUser::new(1, "Lost"))?;
                let bad = repo.load_sql::<One>("SELECT n FROM no_such_table");
                assert!(matches!(bad, Err(Error::Query(_))), "{bad:?}");
                Ok::<_, Error>(())
            })
            .unwrap_err();
        assert!(matches!(aborted_by(&err), Error::Query(_)), "{err:?}");
        assert!(db.session().unwrap().repo().users().unwrap().is_empty());
    }

    fn savepoint_failure_leaves_the_transaction_usable(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        db.transaction(|repo| {
            repo.insert_user(&NewUser::new(1, "Kept"))?;
            // The inner closure swallows its failure: the savepoint is aborted, not the outer.
            let inner = repo.transaction(|repo| {
                repo.insert_user(&NewUser::new(2, "Inner lost"))?;
                let _ = repo.insert_user(&NewUser::new(1, "Dup"));
                Ok::<_, Error>(())
            });
            assert!(matches!(inner.as_ref().map_err(aborted_by), Err(Error::UniqueViolation { .. })), "{inner:?}");
            repo.insert_user(&NewUser::new(3, "Also kept"))?;
            // A nested failure in a Repo method that uses its own savepoint stays local too.
            assert!(matches!(repo.replace_user_locations(1, &[99]), Err(Error::ForeignKeyViolation { .. })));
            repo.insert_user(&NewUser::new(4, "Kept as well"))?;
            Ok::<_, Error>(())
        })
        .unwrap();
        assert_eq!(ids(&db.session().unwrap().repo().users().unwrap()), [1, 3, 4]);
    }

    fn autocommit_failures_poison_nothing(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        repo.insert_user(&NewUser::new(1, "One")).unwrap();
        assert!(matches!(repo.insert_user(&NewUser::new(1, "Dup")), Err(Error::UniqueViolation { .. })));
        repo.insert_user(&NewUser::new(2, "Two")).unwrap();
        repo.transaction(|repo| repo.insert_user(&NewUser::new(3, "Three"))).unwrap();
        assert_eq!(ids(&repo.users().unwrap()), [1, 2, 3]);
    }

    // ---- 4. large reads ------------------------------------------------------------------

    fn users_with_locations_at_any_size(backend: Backend) {
        // Past SQLite's 32 766 and PostgreSQL's 65 535 binds (one per user before).
        let n: i64 = match backend {
            Backend::Sqlite => 260_000,
            Backend::Postgres => 70_000,
            other => unreachable!("no case for {other:?}"),
        };
        let test = TestDb::new(backend);
        let db = test.database();
        bulk_users(&db, backend, n);
        let rows = db.session().unwrap().repo().users_with_locations().unwrap();
        assert_eq!(rows.len() as i64, n);
        let mut linked = 0;
        for (i, row) in rows.iter().enumerate() {
            let id = i as i64 + 1;
            assert_eq!(row.user.user_id, id);
            let locations: Vec<i32> = row.locations.iter().map(|l| l.location_id).collect();
            let expected: &[i32] = if id % 1000 == 0 { &[1, 2] } else { &[] };
            assert_eq!(locations, expected, "user {id}");
            linked += locations.len();
        }
        assert_eq!(linked as i64, n / 1000 * 2);
    }

    fn replace_and_name_references_past_the_bind_limit(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let mut session = db.session().unwrap();
        let sql = match backend {
            Backend::Postgres => "INSERT INTO locations (location_name, address) SELECT 'L' || i, 'x' FROM generate_series(1, 70000) i",
            Backend::Sqlite => "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 70000) \
                 INSERT INTO locations (location_name, address) SELECT 'L' || i, 'x' FROM s",
            other => unreachable!("no case for {other:?}"),
        };
        session.connection().batch_execute(sql).unwrap();
        let mut repo = session.repo();
        repo.insert_user(&NewUser::new(1, "Many")).unwrap();
        let all: Vec<i32> = (1..=70_000).rev().collect();
        repo.replace_user_locations(1, &all).unwrap();
        assert_eq!(repo.count_user_locations(1).unwrap(), 70_000);
        let odd: Vec<i32> = (1..=70_000).filter(|i| i % 2 == 1).collect();
        repo.replace_user_locations(1, &odd).unwrap();
        assert_eq!(repo.count_user_locations(1).unwrap(), 35_000);
        // One missing location among 70 001: named, nothing changes.
        let mut bad = all.clone();
        bad.push(70_001);
        match repo.replace_user_locations(1, &bad) {
            Err(Error::ForeignKeyViolation { constraint, message }) => {
                assert_eq!(constraint.as_deref(), Some("userlocations_location_id_fkey"));
                assert!(message.contains("Key (location_id)=(70001) is not present in table \"locations\""), "{message}");
            }
            other => panic!("expected ForeignKeyViolation, got {other:?}"),
        }
        assert_eq!(repo.count_user_locations(1).unwrap(), 35_000);
    }

    // ---- 5. pagination and limits ----------------------------------------------------------

    fn pages_start_at_the_very_first_row(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let mut session = db.session().unwrap();
        session
            .connection()
            .batch_execute("INSERT INTO locations (location_id, location_name, address) VALUES (-2147483648, 'Min', 'x'), (2147483647, 'Max', 'y')")
            .unwrap();
        let mut repo = session.repo();
        for id in [i64::MAX, 0, i64::MIN, -1] {
            repo.insert_user(&NewUser::new(id, "Edge")).unwrap();
        }
        assert_eq!(ids(&repo.users_page(None, 10).unwrap()), [i64::MIN, -1, 0, i64::MAX]);
        assert_eq!(ids(&repo.users_page(None, 1).unwrap()), [i64::MIN]);
        assert_eq!(ids(&repo.users_page(Some(i64::MIN), 10).unwrap()), [-1, 0, i64::MAX]);
        assert_eq!(ids(&repo.users_page(Some(0), 10).unwrap()), [i64::MAX]);
        assert!(repo.users_page(Some(i64::MAX), 10).unwrap().is_empty());
        let walked: Vec<i64> = repo.users_with_locations_page(None, 2).unwrap().into_iter().map(|r| r.user.user_id).collect();
        assert_eq!(walked, [i64::MIN, -1]);
        let locations: Vec<i32> = repo.locations_page(None, 10).unwrap().into_iter().map(|l| l.location_id).collect();
        assert_eq!(locations, [i32::MIN, i32::MAX]);
        assert!(repo.locations_page(Some(i32::MAX), 10).unwrap().is_empty());
        for limit in [0, -1, i64::MIN, PAGE_LIMIT_MAX + 1, i64::MAX] {
            assert!(matches!(repo.users_page(None, limit), Err(Error::Validation { field: "limit", .. })), "{limit}");
            assert!(matches!(repo.locations_page(None, limit), Err(Error::Validation { field: "limit", .. })), "{limit}");
            assert!(matches!(repo.users_with_locations_page(None, limit), Err(Error::Validation { field: "limit", .. })), "{limit}");
        }
        assert_eq!(repo.users_page(None, PAGE_LIMIT_MAX).unwrap().len(), 4);
    }

    // ---- 6. bulk imports are checked like single writes ----------------------------------------

    fn import_refuses_referral_cycles(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        repo.insert_user(&NewUser::new(1, "Stored")).unwrap();
        let pair = [NewUser::new(10, "A").referrer(11), NewUser::new(11, "B").referrer(10)];
        let names: Vec<String> = (0..1000).map(|i| format!("U{i}")).collect();
        // 100 -> 101 -> ... -> 1099 -> 100, behind a valid chain to the stored user.
        let mut ring: Vec<NewUser> = names.iter().enumerate().map(|(i, n)| NewUser::new(100 + i as i64, n).referrer(100 + ((i as i64 + 1) % 1000))).collect();
        ring.insert(0, NewUser::new(5000, "Tail").referrer(1));
        for copy in [false, true] {
            for batch in [&pair[..], &ring[..]] {
                let result = if copy { repo.copy_users(batch) } else { repo.import_users(batch) };
                assert!(matches!(result, Err(Error::ReferralCycle { .. })), "{result:?}");
            }
            assert_eq!(ids(&repo.users().unwrap()), [1], "nothing written");
        }
        match repo.import_users(&pair) {
            Err(Error::ReferralCycle { user_id, referrer_id }) => assert_eq!((user_id, referrer_id), (11, 10)),
            other => panic!("{other:?}"),
        }
        // Chains inside the batch and to stored rows are fine, in any order.
        let chain = [NewUser::new(22, "C").referrer(21), NewUser::new(21, "B").referrer(20), NewUser::new(20, "A").referrer(1)];
        assert_eq!(repo.import_users(&chain).unwrap(), 3);
        assert_eq!(repo.user(22).unwrap().referrer_id, Some(21));
    }

    // ---- 7. the same stored value on both backends ---------------------------------------------

    fn timestamps_are_stored_as_postgresql_can(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        let nanos = at(2024, 2, 29, 23, 59, 59, 123_456_789);
        let micros = at(2024, 2, 29, 23, 59, 59, 123_456_000);
        assert_eq!(repo.insert_user(&NewUser::new(1, "A").created_at(nanos)).unwrap().created_at, micros);
        assert_eq!(repo.user(1).unwrap().created_at, micros);
        let before_2000 = at(1999, 12, 31, 23, 59, 59, 999_999_999);
        let stored = repo.upsert_user_with(&NewUser::new(1, "A").created_at(before_2000), UpsertOptions::default().with_created_at(true)).unwrap();
        assert_eq!(stored.created_at, at(1999, 12, 31, 23, 59, 59, 999_999_000));
        assert_eq!(repo.user(1).unwrap().created_at, stored.created_at);
        let location = repo.insert_location(&NewLocation { created_at: Some(nanos), ..NewLocation::new("P", "x") }).unwrap();
        assert_eq!(location.created_at, micros);
        repo.import_users(&[NewUser::new(2, "B").created_at(nanos)]).unwrap();
        repo.copy_users(&[NewUser::new(3, "C").created_at(nanos)]).unwrap();
        assert_eq!((repo.user(2).unwrap().created_at, repo.user(3).unwrap().created_at), (micros, micros));
        // The edges both store and sort alike.
        let first = at(1, 1, 1, 0, 0, 0, 0);
        let last = at(9999, 12, 31, 23, 59, 59, 999_999_999);
        assert_eq!(repo.insert_user(&NewUser::new(4, "D").created_at(first)).unwrap().created_at, first);
        assert_eq!(repo.insert_user(&NewUser::new(5, "E").created_at(last)).unwrap().created_at, at(9999, 12, 31, 23, 59, 59, 999_999_000));
        let leap = at(2016, 12, 31, 23, 59, 59, 1_000_000_000);
        for bad in [leap, at(10000, 1, 1, 0, 0, 0, 0), at(0, 12, 31, 23, 59, 59, 0), NaiveDateTime::MIN, NaiveDateTime::MAX] {
            assert!(matches!(repo.insert_user(&NewUser::new(6, "F").created_at(bad)), Err(Error::Validation { field: "created_at", .. })), "{bad}");
            assert!(matches!(repo.upsert_user(&NewUser::new(6, "F").created_at(bad)), Err(Error::Validation { field: "created_at", .. })), "{bad}");
            assert!(matches!(repo.import_users(&[NewUser::new(6, "F").created_at(bad)]), Err(Error::Validation { field: "created_at", .. })), "{bad}");
            assert!(matches!(repo.insert_location(&NewLocation { created_at: Some(bad), ..NewLocation::new("Q", "x") }), Err(Error::Validation { field: "created_at", .. })), "{bad}");
        }
        assert_eq!(ids(&repo.users().unwrap()), [1, 2, 3, 4, 5]);
    }

    // ---- 8. every input validated on every path ------------------------------------------------

    fn every_string_argument_is_validated(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.seeded();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        for bad in ["a\0b", "", " ", "\u{200B}", "\u{200B}\u{200C}\u{200D}\u{2060}\u{FEFF}", "\u{00AD}\u{034F}", &"x".repeat(129)] {
            assert!(matches!(repo.find_location_by_name(bad), Err(Error::Validation { field: "location_name", .. })), "{bad:?}");
            assert!(matches!(repo.rename_location(1, bad), Err(Error::Validation { field: "location_name", .. })), "{bad:?}");
            assert!(matches!(repo.insert_user(&NewUser::new(7, bad)), Err(Error::Validation { field: "full_name", .. })), "{bad:?}");
            assert!(matches!(repo.upsert_user(&NewUser::new(7, "Ok").username(bad)), Err(Error::Validation { field: "username", .. })), "{bad:?}");
            assert!(matches!(repo.insert_location(&NewLocation::new("Ok", bad)), Err(Error::Validation { field: "address", .. })), "{bad:?}");
            assert!(matches!(
                repo.update_user(1, &UserChanges { logged_as: Some(Some(bad)), ..UserChanges::default() }),
                Err(Error::Validation { field: "logged_as", .. })
            ), "{bad:?}");
            assert!(matches!(repo.import_locations(&[NewLocation::new(bad, "x")]), Err(Error::Validation { field: "location_name", .. })), "{bad:?}");
        }
        for bad in ["", "  \n", "SELECT 1 AS n\0"] {
            assert!(matches!(repo.load_sql::<One>(bad), Err(Error::Validation { field: "sql", .. })), "{bad:?}");
        }
        // Visible text around invisible characters is kept verbatim.
        let name = "Zero\u{200B}Width";
        assert_eq!(repo.rename_location(1, name).unwrap().location_name, name);
        assert_eq!(repo.find_location_by_name(name).unwrap().unwrap().location_id, 1);
        assert_eq!(repo.users().unwrap().len(), 7);
    }

    // ---- 9. foreign-key errors name the reference ----------------------------------------------

    fn foreign_key_errors_name_the_missing_parent(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.seeded();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        let fk = |result: Result<(), Error>| match result {
            Err(Error::ForeignKeyViolation { constraint, message }) => (constraint.unwrap_or_default(), message),
            other => panic!("expected ForeignKeyViolation, got {other:?}"),
        };
        let missing_user = "insert or update on table \"userlocations\" violates foreign key constraint \"userlocations_user_id_fkey\" (Key (user_id)=(424242) is not present in table \"users\".)";
        let missing_location = "insert or update on table \"userlocations\" violates foreign key constraint \"userlocations_location_id_fkey\" (Key (location_id)=(999) is not present in table \"locations\".)";
        let missing_referrer = "insert or update on table \"users\" violates foreign key constraint \"users_referrer_id_fkey\" (Key (referrer_id)=(424242) is not present in table \"users\".)";
        let user_key = ("userlocations_user_id_fkey".to_owned(), missing_user.to_owned());
        let location_key = ("userlocations_location_id_fkey".to_owned(), missing_location.to_owned());
        let referrer_key = ("users_referrer_id_fkey".to_owned(), missing_referrer.to_owned());
        assert_eq!(fk(repo.link(424242, 1).map(drop)), user_key);
        assert_eq!(fk(repo.link(1, 999).map(drop)), location_key);
        assert_eq!(fk(repo.insert_user_location(&UserLocation { user_id: 1, location_id: 999 }).map(drop)), location_key);
        assert_eq!(fk(repo.import_links(&[UserLocation { user_id: 1, location_id: 2 }, UserLocation { user_id: 1, location_id: 999 }]).map(drop)), location_key);
        assert_eq!(fk(repo.replace_user_locations(1, &[2, 999])), location_key);
        assert_eq!(fk(repo.replace_user_locations(424242, &[])), user_key);
        assert_eq!(fk(repo.insert_user(&NewUser::new(7, "Orphan").referrer(424242)).map(drop)), referrer_key);
        assert_eq!(fk(repo.upsert_user(&NewUser::new(7, "Orphan").referrer(424242)).map(drop)), referrer_key);
        assert_eq!(fk(repo.set_referrer(1, Some(424242)).map(drop)), referrer_key);
        assert_eq!(fk(repo.import_users(&[NewUser::new(8, "A").referrer(1), NewUser::new(7, "B").referrer(424242)]).map(drop)), referrer_key);
        let (constraint, message) = fk(repo.delete_user(6873));
        assert_eq!(constraint, "userlocations_user_id_fkey");
        assert!(message.starts_with("user 6873 is still linked to locations [3, 4]"), "{message}");
        assert_eq!(repo.user_locations().unwrap().len(), 5, "nothing changed");
    }
}
