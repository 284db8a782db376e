//! Locations and the links between users and locations (`src/repo/locations.rs`).

use super::*;

both_backends! {
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

    fn insert_location_with_a_taken_name_is_a_unique_violation(backend: Backend) {
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

    fn locations_rename_find_delete(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.seeded();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        let renamed = repo.rename_location(2, "Galloway Walk North").unwrap();
        assert_eq!((renamed.location_id, renamed.location_name.as_str()), (2, "Galloway Walk North"));
        assert_eq!(repo.find_location_by_name("Galloway Walk North").unwrap(), Some(renamed.clone()));
        assert_eq!(repo.location(2).unwrap(), renamed);
        match repo.rename_location(2, "Ramirez Forge") {
            Err(Error::UniqueViolation { constraint, .. }) => {
                let expected = match backend {
                    Backend::Postgres => "locations_location_name_key",
                    Backend::Sqlite => "locations.location_name",
                    other => unreachable!("no case for {other:?}"),
                };
                assert_eq!(constraint.as_deref(), Some(expected));
            }
            other => panic!("expected UniqueViolation, got {other:?}"),
        }
        assert!(matches!(repo.rename_location(99, "New"), Err(Error::NotFound)));
        repo.delete_location(2).unwrap();
        assert_eq!(repo.count_user_locations(9044).unwrap(), 0);
    }

    fn delete_location_cascades_to_links(backend: Backend) {
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

    fn links_link_unlink_replace(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.seeded();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        assert!(repo.link(1, 1).unwrap());
        assert!(!repo.link(1, 1).unwrap());
        assert!(repo.unlink(1, 1).unwrap());
        assert!(!repo.unlink(1, 1).unwrap());
        repo.replace_user_locations(6873, &[1, 4, 2]).unwrap();
        let got: Vec<i32> = repo.user_locations_with_username(6873).unwrap().into_iter().map(|row| row.location.location_id).collect();
        assert_eq!(got, [1, 2, 4]);
        // A missing location: nothing changes.
        let err = repo.replace_user_locations(6873, &[3, 99]).unwrap_err();
        assert!(matches!(err, Error::ForeignKeyViolation { .. }), "{err:?}");
        let got: Vec<i32> = repo.user_locations_with_username(6873).unwrap().into_iter().map(|row| row.location.location_id).collect();
        assert_eq!(got, [1, 2, 4]);
    }

    fn link_or_set_referrer_failing_rolls_back_only_itself(backend: Backend) {
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
}
