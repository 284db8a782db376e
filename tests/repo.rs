//! The seed's queries, the write helpers, error variants and transactions — each on PostgreSQL
//! and on SQLite, with the same expected rows.

mod common;

use chrono::NaiveDate;
use diesel::connection::SimpleConnection;
use userbase::models::{
    LocationCount, NewLocation, NewUser, User, UserLocation, UserLocationCount,
};
use userbase::{Backend, Error};

use common::TestDb;

/// `(location_id, name)` of the seed's locations on a fresh database.
const RAMIREZ: (i32, &str) = (1, "Ramirez Forge");
const GALLOWAY: (i32, &str) = (2, "Galloway Walk");
const GABRIELLE: (i32, &str) = (3, "Gabrielle Ville");
const BURGESS: (i32, &str) = (4, "Burgess Meadow");

/// `(user_id, full_name, [(location_id, location_name)])`: a row of `users_with_locations`.
type UserRow<'a> = (i64, &'a str, Vec<(i32, &'a str)>);

fn user_ids(users: &[User]) -> Vec<i64> {
    users.iter().map(|u| u.user_id).collect()
}

both_backends! {
    fn users_with_locations_matches_the_seed(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.seeded();
        let rows = db.session().unwrap().repo().users_with_locations().unwrap();
        let got: Vec<UserRow<'_>> = rows
            .iter()
            .map(|r| {
                (
                    r.user.user_id,
                    r.user.full_name.as_str(),
                    r.locations
                        .iter()
                        .map(|l| (l.location_id, l.location_name.as_str()))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (1, "John Doe", vec![]),
                (1169, "Devin Schaefer", vec![RAMIREZ]),
                (1824, "Brian Yang", vec![]),
                (5155, "Judy Baker", vec![RAMIREZ]),
                (6873, "Olivia Moore", vec![GABRIELLE, BURGESS]),
                (9044, "Michele Williams", vec![GALLOWAY]),
                (12356, "John Doe", vec![]),
            ]
        );
    }

    fn users_by_location_one(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.seeded();
        let users = db.session().unwrap().repo().users_by_location(1).unwrap();
        let shown: Vec<String> = users.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["<User 1169 amandasanchez Devin Schaefer>", "<User 5155 dianafoster Judy Baker>"]
        );
        assert!(db.session().unwrap().repo().users_by_location(999).unwrap().is_empty());
    }

    fn user_locations_with_username_rows(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.seeded();
        let rows = db.session().unwrap().repo().user_locations_with_username(6873).unwrap();
        let got: Vec<(String, String, Option<String>)> = rows
            .into_iter()
            .map(|row| (row.location.to_string(), row.location.created_at.to_string(), row.username))
            .collect();
        let shane = Some("shaneramirez".to_owned());
        assert_eq!(
            got,
            vec![
                (
                    "<Location 3 Gabrielle Ville 1503 Gabrielle Ville Apt. 203>".to_owned(),
                    "2024-06-19 03:00:32.755164".to_owned(),
                    shane.clone()
                ),
                (
                    "<Location 4 Burgess Meadow 870 Burgess Meadow>".to_owned(),
                    "2024-06-19 03:00:33.755164".to_owned(),
                    shane
                ),
            ]
        );
    }

    fn count_user_locations_per_user(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.seeded();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        assert_eq!(repo.count_user_locations(6873).unwrap(), 2);
        assert_eq!(repo.count_user_locations(1169).unwrap(), 1);
        assert_eq!(repo.count_user_locations(1).unwrap(), 0);
        assert_eq!(repo.count_user_locations(424242).unwrap(), 0);
    }

    fn location_counts_by_user_rows(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.seeded();
        let rows = db.session().unwrap().repo().location_counts_by_user().unwrap();
        let counted = |quantity, user_id| UserLocationCount { quantity, user_id };
        assert_eq!(rows, vec![counted(1, 1169), counted(1, 5155), counted(2, 6873), counted(1, 9044)]);
    }

    fn failed_link_or_referral_write_rolls_back_only_itself(backend: Backend) {
        // Link writes and referral changes run in a savepoint inside an open transaction: when
        // one fails, the transaction goes on, on both backends.
        let test = TestDb::new(backend);
        let db = test.seeded();
        db.transaction(|repo| {
            let missing = repo.link(1, 999).unwrap_err();
            assert!(matches!(missing, Error::ForeignKeyViolation { .. }), "{missing:?}");
            let taken = repo.insert_user_location(&UserLocation { location_id: 3, user_id: 6873 }).unwrap_err();
            assert!(matches!(taken, Error::UniqueViolation { .. }), "{taken:?}");
            let no_referrer = repo.set_referrer(1, Some(424_242)).unwrap_err();
            assert!(matches!(no_referrer, Error::ForeignKeyViolation { .. }), "{no_referrer:?}");
            assert!(repo.link(1, 1)?);
            repo.set_referrer(1, Some(1824))?;
            Ok::<_, Error>(())
        })
        .unwrap();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        assert_eq!(repo.count_user_locations(1).unwrap(), 1);
        assert_eq!(repo.user(1).unwrap().referrer_id, Some(1824));
    }

    fn location_counts_by_user_named_rows(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.seeded();
        let rows = db.session().unwrap().repo().location_counts_by_user_named().unwrap();
        let named = |quantity, name: &str| LocationCount { quantity, name: name.to_owned() };
        assert_eq!(
            rows,
            vec![
                named(1, "Devin Schaefer"),
                named(1, "Judy Baker"),
                named(2, "Olivia Moore"),
                named(1, "Michele Williams"),
            ]
        );
    }

    fn raw_sql_reads_whole_rows(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.seeded();
        let mut session = db.session().unwrap();
        let raw = session.repo().users_raw().unwrap();
        let typed = session.repo().users().unwrap();
        assert_eq!(raw, typed);
        assert_eq!(user_ids(&raw), [1, 1169, 1824, 5155, 6873, 9044, 12356]);
        let first = &raw[0];
        assert_eq!(
            first,
            &User {
                user_id: 1,
                username: Some("john_doe".into()),
                full_name: "John Doe".into(),
                language: "en".into(),
                active: true,
                logged_as: None,
                referrer_id: None,
                created_at: NaiveDate::from_ymd_opt(2024, 6, 20)
                    .unwrap()
                    .and_hms_micro_opt(6, 38, 14, 853_833)
                    .unwrap(),
            }
        );
        let links: Vec<UserLocation> = session
            .repo()
            .load_sql("SELECT * FROM userlocations ORDER BY user_id, location_id")
            .unwrap();
        assert_eq!(links, session.repo().user_locations().unwrap());
        assert_eq!(links.len(), 5);
    }

    fn demo_load_is_idempotent(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.seeded();
        db.transaction(userbase::demo::load).unwrap();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        assert_eq!(repo.users().unwrap().len(), 7);
        assert_eq!(repo.locations().unwrap().len(), 4);
        assert_eq!(repo.user_locations().unwrap().len(), 5);
    }

    fn insert_user_fills_defaults(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let mut session = db.session().unwrap();
        let before = chrono::Utc::now().naive_utc() - chrono::Duration::seconds(5);
        let user = session.repo().insert_user(&NewUser::new(42, "Ada Lovelace")).unwrap();
        assert_eq!(
            (user.user_id, user.username.as_deref(), user.full_name.as_str()),
            (42, None, "Ada Lovelace")
        );
        assert_eq!((user.language.as_str(), user.active, user.logged_as.as_deref(), user.referrer_id), ("en", true, None, None));
        assert!(user.created_at >= before, "created_at {} is UTC now", user.created_at);
        assert_eq!(session.repo().user(42).unwrap(), user);
    }

    fn insert_location_generates_ids(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        let a = repo.insert_location(&NewLocation::new("A", "1 Road")).unwrap();
        let b = repo.insert_location(&NewLocation { has_solarium: Some(false), ..NewLocation::new("B", "2 Road") }).unwrap();
        assert_eq!((a.location_id, a.has_solarium), (1, true));
        assert_eq!((b.location_id, b.location_name.as_str(), b.has_solarium), (2, "B", false));
        assert_eq!(repo.locations().unwrap(), vec![a, b]);
    }

    fn link_is_idempotent(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.seeded();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        assert!(repo.link(1, 2).unwrap());
        assert!(!repo.link(1, 2).unwrap());
        assert_eq!(repo.count_user_locations(1).unwrap(), 1);
        let err = repo.insert_user_location(&UserLocation { location_id: 2, user_id: 1 }).unwrap_err();
        assert!(matches!(err, Error::UniqueViolation { .. }), "{err:?}");
    }

    fn duplicate_user_is_a_unique_violation(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.seeded();
        let err = db.session().unwrap().repo().insert_user(&NewUser::new(1, "Again")).unwrap_err();
        match &err {
            Error::UniqueViolation { constraint, .. } => {
                let expected = match backend {
                    Backend::Postgres => "users_pkey",
                    Backend::Sqlite => "users.user_id",
                    other => unreachable!("no case for {other:?}"),
                };
                assert_eq!(constraint.as_deref(), Some(expected));
            }
            other => panic!("expected UniqueViolation, got {other:?}"),
        }
        assert_eq!(db.session().unwrap().repo().user(1).unwrap().full_name, "John Doe");
    }

    fn duplicate_location_name_is_a_unique_violation(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.seeded();
        let err = db
            .session()
            .unwrap()
            .repo()
            .insert_location(&NewLocation::new("Ramirez Forge", "elsewhere"))
            .unwrap_err();
        match &err {
            Error::UniqueViolation { constraint, .. } => {
                if backend == Backend::Postgres {
                    assert_eq!(constraint.as_deref(), Some("locations_location_name_key"));
                }
            }
            other => panic!("expected UniqueViolation, got {other:?}"),
        }
    }

    fn link_to_missing_rows_is_a_foreign_key_violation(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.seeded();
        let mut session = db.session().unwrap();
        let err = session.repo().link(424242, 1).unwrap_err();
        assert!(matches!(err, Error::ForeignKeyViolation { .. }), "{err:?}");
        let err = session.repo().link(1, 999).unwrap_err();
        assert!(matches!(err, Error::ForeignKeyViolation { .. }), "{err:?}");
        let err = session.repo().insert_user(&NewUser::new(7, "Orphan").referrer(424242)).unwrap_err();
        assert!(matches!(err, Error::ForeignKeyViolation { .. }), "{err:?}");
    }

    fn deleting_a_linked_user_is_restricted(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.seeded();
        let mut session = db.session().unwrap();
        let err = session.repo().delete_user(6873).unwrap_err();
        match &err {
            Error::ForeignKeyViolation { constraint, message } => {
                if backend == Backend::Postgres {
                    assert_eq!(constraint.as_deref(), Some("userlocations_user_id_fkey"));
                    assert!(message.contains("(user_id)=(6873)"), "{message}");
                }
            }
            other => panic!("expected ForeignKeyViolation, got {other:?}"),
        }
        assert_eq!(session.repo().count_user_locations(6873).unwrap(), 2);
        // A user without links goes.
        session.repo().delete_user(1824).unwrap();
        assert!(matches!(session.repo().user(1824), Err(Error::NotFound)));
        assert!(matches!(session.repo().delete_user(1824), Err(Error::NotFound)));
    }

    fn deleting_a_location_cascades_to_links(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.seeded();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        repo.delete_location(1).unwrap();
        assert_eq!(
            repo.user_locations().unwrap(),
            vec![
                UserLocation { location_id: 3, user_id: 6873 },
                UserLocation { location_id: 4, user_id: 6873 },
                UserLocation { location_id: 2, user_id: 9044 },
            ]
        );
        assert!(matches!(repo.delete_location(1), Err(Error::NotFound)));
    }

    fn deleting_a_referrer_sets_null(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        repo.insert_user(&NewUser::new(1, "Referrer")).unwrap();
        repo.insert_user(&NewUser::new(2, "Referred").referrer(1)).unwrap();
        assert_eq!(repo.user(2).unwrap().referrer_id, Some(1));
        repo.delete_user(1).unwrap();
        assert_eq!(repo.user(2).unwrap().referrer_id, None);
    }

    fn not_found(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.seeded();
        let mut session = db.session().unwrap();
        assert!(matches!(session.repo().user(424242), Err(Error::NotFound)));
        assert!(matches!(session.repo().location(999), Err(Error::NotFound)));
        assert_eq!(session.repo().find_user(424242).unwrap(), None);
        assert_eq!(session.repo().find_location_by_name("Nowhere").unwrap(), None);
    }

    fn not_null_and_check_violations_are_typed(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let mut session = db.session().unwrap();
        let err = Error::from(
            session.connection().batch_execute("INSERT INTO users (user_id) VALUES (5)").unwrap_err(),
        );
        match &err {
            Error::NotNullViolation { column, .. } => {
                let expected = match backend {
                    Backend::Postgres => "full_name",
                    Backend::Sqlite => "users.full_name",
                    other => unreachable!("no case for {other:?}"),
                };
                assert_eq!(column.as_deref(), Some(expected));
            }
            other => panic!("expected NotNullViolation, got {other:?}"),
        }
        session
            .connection()
            .batch_execute("CREATE TEMPORARY TABLE positive (x INTEGER CONSTRAINT x_positive CHECK (x > 0))")
            .unwrap();
        let err = Error::from(
            session.connection().batch_execute("INSERT INTO positive VALUES (-1)").unwrap_err(),
        );
        match &err {
            Error::CheckViolation { constraint, .. } => {
                assert_eq!(constraint.as_deref(), Some("x_positive"));
            }
            other => panic!("expected CheckViolation, got {other:?}"),
        }
    }

    fn transaction_commits_on_ok(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let user = db
            .transaction(|repo| repo.insert_user(&NewUser::new(10, "Kept")))
            .unwrap();
        assert_eq!(db.session().unwrap().repo().user(10).unwrap(), user);
    }

    fn transaction_rolls_back_on_err(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let err = db
            .transaction(|repo| {
                repo.insert_user(&NewUser::new(10, "Lost"))?;
                repo.insert_location(&NewLocation::new("Lost place", "nowhere"))?;
                // Fails: user 11 does not exist, so everything above is rolled back.
                repo.link(11, 1)?;
                Ok::<_, Error>(())
            })
            .unwrap_err();
        assert!(matches!(err, Error::ForeignKeyViolation { .. }), "{err:?}");
        let mut session = db.session().unwrap();
        assert_eq!(session.repo().users().unwrap(), vec![]);
        assert_eq!(session.repo().locations().unwrap(), vec![]);
    }

    fn transaction_rolls_back_on_a_caller_error(backend: Backend) {
        #[derive(Debug, PartialEq)]
        enum AppError {
            Refused,
            Db(String),
        }
        impl From<Error> for AppError {
            fn from(e: Error) -> Self {
                AppError::Db(e.to_string())
            }
        }
        let test = TestDb::new(backend);
        let db = test.database();
        let result: Result<(), AppError> = db.transaction(|repo| {
            repo.insert_user(&NewUser::new(10, "Lost"))?;
            Err(AppError::Refused)
        });
        assert_eq!(result, Err(AppError::Refused));
        assert!(db.session().unwrap().repo().find_user(10).unwrap().is_none());
    }

    fn nested_transaction_rolls_back_only_the_savepoint(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        db.transaction(|repo| {
            repo.insert_user(&NewUser::new(1, "Outer"))?;
            let inner = repo.transaction(|repo| {
                repo.insert_user(&NewUser::new(2, "Inner"))?;
                repo.insert_user(&NewUser::new(1, "Duplicate"))
            });
            assert!(matches!(inner, Err(Error::UniqueViolation { .. })));
            Ok::<_, Error>(())
        })
        .unwrap();
        let users = db.session().unwrap().repo().users().unwrap();
        assert_eq!(user_ids(&users), [1]);
    }
}
