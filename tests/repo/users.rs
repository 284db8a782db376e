//! Reading and writing users, the upsert (`src/repo/users.rs`).

use super::*;

both_backends! {
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

    fn insert_user_twice_is_a_unique_violation(backend: Backend) {
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

    fn user_and_location_not_found(backend: Backend) {
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

    fn upsert_inserts_then_updates_names_only(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        repo.insert_user(&NewUser::new(1, "Referrer")).unwrap();
        let first = repo
            .upsert_user(&NewUser::new(7, "Ann").username("ann").language("uk").referrer(1))
            .unwrap();
        assert_eq!(
            (first.user_id, first.full_name.as_str(), first.username.as_deref(), first.language.as_str(), first.referrer_id),
            (7, "Ann", Some("ann"), "uk", Some(1))
        );
        repo.deactivate_user(7).unwrap();
        // Seen again: new names, no language given, another referrer that must not be applied.
        repo.insert_user(&NewUser::new(2, "Other")).unwrap();
        let again = repo.upsert_user(&NewUser::new(7, "Ann B.").referrer(2)).unwrap();
        assert_eq!(
            (again.full_name.as_str(), again.username.as_deref(), again.language.as_str()),
            ("Ann B.", None, "uk")
        );
        assert_eq!((again.referrer_id, again.created_at, again.active), (Some(1), first.created_at, false));
        assert_eq!(repo.user(7).unwrap(), again);
        // Asked: referrer and created_at are overwritten too.
        let when = chrono::NaiveDate::from_ymd_opt(2020, 1, 2).unwrap().and_hms_opt(3, 4, 5).unwrap();
        let asked = repo
            .upsert_user_with(
                &NewUser::new(7, "Ann C.").referrer(2).created_at(when),
                UpsertOptions::default().with_referrer(true).with_created_at(true),
            )
            .unwrap();
        assert_eq!((asked.referrer_id, asked.created_at, asked.full_name.as_str()), (Some(2), when, "Ann C."));
        assert_eq!(repo.users().unwrap().len(), 3);
    }

    fn update_user_fields_and_errors(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.seeded();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        let changed = repo
            .update_user(1824, &UserChanges { username: Some(None), logged_as: Some(Some("brian")), language: Some("de"), ..UserChanges::default() })
            .unwrap();
        assert_eq!(
            (changed.username, changed.logged_as.as_deref(), changed.language.as_str(), changed.full_name.as_str()),
            (None, Some("brian"), "de", "Brian Yang")
        );
        assert!(matches!(
            repo.update_user(424242, &UserChanges { full_name: Some("X"), ..UserChanges::default() }),
            Err(Error::NotFound)
        ));
        assert!(matches!(
            repo.update_user(1824, &UserChanges::default()),
            Err(Error::Validation { field: "changes", .. })
        ));
        assert!(!repo.deactivate_user(1824).unwrap().active);
        assert!(repo.reactivate_user(1824).unwrap().active);
        assert!(matches!(repo.deactivate_user(424242), Err(Error::NotFound)));
    }

    fn delete_user_restricted_names_the_blocking_rows(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.seeded();
        // Inside a transaction, the refused delete leaves the transaction usable.
        db.transaction(|repo| {
            match repo.delete_user(6873) {
                Err(Error::ForeignKeyViolation { message, .. }) => assert!(
                    message.starts_with("user 6873 is still linked to locations [3, 4] in userlocations"),
                    "{message}"
                ),
                other => panic!("expected ForeignKeyViolation, got {other:?}"),
            }
            assert_eq!(repo.count_user_locations(6873)?, 2);
            repo.replace_user_locations(6873, &[])?;
            repo.delete_user(6873)
        })
        .unwrap();
        assert!(db.session().unwrap().repo().find_user(6873).unwrap().is_none());
    }

    fn delete_user_with_links_is_restricted(backend: Backend) {
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

    fn validation_before_the_database(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        let long = "x".repeat(129);
        let max = "é".repeat(128);
        let cases: Vec<(NewUser, &str)> = vec![
            (NewUser::new(1, &long), "full_name"),
            (NewUser::new(1, ""), "full_name"),
            (NewUser::new(1, "   "), "full_name"),
            (NewUser::new(1, "a\0b"), "full_name"),
            (NewUser::new(1, "Ok").username(&long), "username"),
            (NewUser::new(1, "Ok").username(""), "username"),
            (NewUser::new(1, "Ok").language("english-uk-"), "language"),
        ];
        for (new, field) in cases {
            match repo.insert_user(&new) {
                Err(Error::Validation { field: got, .. }) => assert_eq!(got, field, "{new:?}"),
                other => panic!("{new:?}: expected Validation, got {other:?}"),
            }
            assert!(matches!(repo.upsert_user(&new), Err(Error::Validation { .. })));
        }
        // 128 two-byte characters are 128 characters: allowed.
        assert_eq!(repo.insert_user(&NewUser::new(1, &max)).unwrap().full_name, max);
        assert!(matches!(
            repo.insert_location(&NewLocation::new("Place", &long)),
            Err(Error::Validation { field: "address", .. })
        ));
        assert!(matches!(repo.rename_location(1, ""), Err(Error::Validation { field: "location_name", .. })));
        assert!(matches!(
            repo.update_user(1, &UserChanges { language: Some("abcdefghijk"), ..UserChanges::default() }),
            Err(Error::Validation { field: "language", .. })
        ));
        assert_eq!(repo.users().unwrap().len(), 1);
    }

    fn text_is_stored_verbatim(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        let values = ["O'Brien", "'; DROP TABLE users; --", "Zoë 😀 Łukasz", "back\\slash \"quoted\"", "日本語の名前"];
        for (i, value) in values.iter().enumerate() {
            let id = i as i64 + 1;
            repo.insert_user(&NewUser::new(id, value).username(value)).unwrap();
            repo.insert_location(&NewLocation::new(value, value)).unwrap();
        }
        let users = repo.users().unwrap();
        let stored: Vec<(&str, Option<&str>)> = users.iter().map(|u| (u.full_name.as_str(), u.username.as_deref())).collect();
        let expected: Vec<(&str, Option<&str>)> = values.iter().map(|v| (*v, Some(*v))).collect();
        assert_eq!(stored, expected);
        let locations: Vec<String> = repo.locations().unwrap().into_iter().map(|l| l.location_name).collect();
        assert_eq!(locations, values);
        assert_eq!(repo.find_location_by_name("'; DROP TABLE users; --").unwrap().unwrap().location_id, 2);
    }
}
