//! Write paths, referrals, validation, bulk import, pagination and streaming — each on
//! PostgreSQL and on SQLite with the same expected rows.

mod common;

use userbase::models::{NewLocation, NewUser, ReferralCount, User, UserChanges, UserLocation};
use userbase::{Backend, Error, UpsertOptions};

use common::TestDb;

fn ids(users: &[User]) -> Vec<i64> {
    users.iter().map(|u| u.user_id).collect()
}

/// `n` users with ids 1..=n and names `User {id}`.
fn names(n: i64) -> Vec<String> {
    (1..=n).map(|i| format!("User {i}")).collect()
}

both_backends! {
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

    fn delete_restricted_names_the_blocking_rows(backend: Backend) {
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

    fn referrals_and_cycles(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.seeded();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        // 1 referred 1824 and 5155; 1824 referred 9044.
        repo.set_referrer(1824, Some(1)).unwrap();
        repo.set_referrer(5155, Some(1)).unwrap();
        let set = repo.set_referrer(9044, Some(1824)).unwrap();
        assert_eq!(set.referrer_id, Some(1824));
        assert_eq!(ids(&repo.referrals(1).unwrap()), [1824, 5155]);
        assert_eq!(ids(&repo.referrals(6873).unwrap()), Vec::<i64>::new());
        let counted = |referrer_id, referred| ReferralCount { referrer_id, referred };
        assert_eq!(repo.referral_counts().unwrap(), vec![counted(1, 2), counted(1824, 1)]);
        let named: Vec<(i64, Option<String>)> = repo
            .users_with_referrer_names()
            .unwrap()
            .into_iter()
            .map(|row| (row.user.user_id, row.referrer_name))
            .collect();
        let john = Some("John Doe".to_owned());
        assert_eq!(
            named,
            vec![
                (1, None),
                (1169, None),
                (1824, john.clone()),
                (5155, john),
                (6873, None),
                (9044, Some("Brian Yang".to_owned())),
                (12356, None),
            ]
        );
        // Self-referral and cycles (1 -> 1824 -> 9044 -> 1 would close a loop).
        assert!(matches!(repo.set_referrer(1, Some(1)), Err(Error::ReferralCycle { user_id: 1, referrer_id: 1 })));
        assert!(matches!(repo.set_referrer(1, Some(9044)), Err(Error::ReferralCycle { user_id: 1, referrer_id: 9044 })));
        assert!(matches!(repo.set_referrer(1, Some(1824)), Err(Error::ReferralCycle { .. })));
        assert!(matches!(repo.insert_user(&NewUser::new(5, "Me").referrer(5)), Err(Error::ReferralCycle { .. })));
        assert!(matches!(repo.set_referrer(1, Some(424242)), Err(Error::ForeignKeyViolation { .. })));
        assert!(matches!(repo.set_referrer(424242, Some(1)), Err(Error::NotFound)));
        // Allowed: 6873 is not below 1.
        assert_eq!(repo.set_referrer(1, Some(6873)).unwrap().referrer_id, Some(6873));
        // Clearing; deleting a referrer sets NULL.
        assert_eq!(repo.set_referrer(1, None).unwrap().referrer_id, None);
        repo.delete_user(1).unwrap();
        assert_eq!(repo.referral_counts().unwrap(), vec![ReferralCount { referrer_id: 1824, referred: 1 }]);
        assert_eq!(repo.user(5155).unwrap().referrer_id, None);
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

    fn import_70k_users_round_trips(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let names = names(70_000);
        let users: Vec<NewUser> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let id = i as i64 + 1;
                let user = NewUser::new(id, name);
                if id % 3 == 0 { user.username(name).language("de") } else { user }
            })
            .collect();
        let mut session = db.session().unwrap();
        assert_eq!(session.repo().import_users(&users).unwrap(), 70_000);
        assert_eq!(session.repo().copy_users(&[]).unwrap(), 0);
        let mut seen = 0_i64;
        for (i, user) in session.repo().users_iter().unwrap().enumerate() {
            let user = user.unwrap();
            let id = i as i64 + 1;
            assert_eq!((user.user_id, user.full_name.as_str()), (id, names[i].as_str()));
            let (username, language) = if id % 3 == 0 { (Some(names[i].as_str()), "de") } else { (None, "en") };
            assert_eq!((user.username.as_deref(), user.language.as_str(), user.active), (username, language, true));
            seen += 1;
        }
        assert_eq!(seen, 70_000);
    }

    fn copy_import_round_trips(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let names = names(20_000);
        let users: Vec<NewUser> = names.iter().enumerate().map(|(i, n)| NewUser::new(i as i64 + 1, n).referrer(1).username("u")).collect();
        let first = NewUser::new(1, "Root");
        let mut session = db.session().unwrap();
        session.repo().insert_user(&first).unwrap();
        assert_eq!(session.repo().copy_users(&users[1..]).unwrap(), 19_999);
        let page = session.repo().users_page(Some(19_997), 10).unwrap();
        assert_eq!(ids(&page), [19_998, 19_999, 20_000]);
        assert!(page.iter().all(|u| u.referrer_id == Some(1) && u.username.as_deref() == Some("u") && u.language == "en"));
        assert_eq!(session.repo().referral_counts().unwrap(), vec![ReferralCount { referrer_id: 1, referred: 19_999 }]);
    }

    fn a_failing_import_persists_nothing(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let names = names(40_000);
        // The last row duplicates the first: the error comes in the last chunk.
        let mut users: Vec<NewUser> = names.iter().enumerate().map(|(i, n)| NewUser::new(i as i64 + 1, n)).collect();
        users.push(NewUser::new(1, "Duplicate"));
        let mut session = db.session().unwrap();
        for copy in [false, true] {
            let result = if copy { session.repo().copy_users(&users) } else { session.repo().import_users(&users) };
            assert!(matches!(result, Err(Error::UniqueViolation { .. })), "{result:?}");
            assert_eq!(session.repo().users_page(None, 10).unwrap(), vec![]);
        }
        // A bad row is found before anything is written.
        users.pop();
        users.push(NewUser::new(40_001, ""));
        assert!(matches!(session.repo().import_users(&users), Err(Error::Validation { field: "full_name", .. })));
        assert_eq!(session.repo().users_page(None, 10).unwrap(), vec![]);
    }

    fn import_locations_and_links(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        let names = names(12_000);
        let locations: Vec<NewLocation> = names.iter().map(|n| NewLocation::new(n, "Main Street")).collect();
        assert_eq!(repo.import_locations(&locations).unwrap(), 12_000);
        let users: Vec<NewUser> = names[..100].iter().enumerate().map(|(i, n)| NewUser::new(i as i64 + 1, n)).collect();
        repo.import_users(&users).unwrap();
        // 100 users x 200 locations = 20 000 links: more than one chunk on both backends.
        let links: Vec<UserLocation> = (1..=100_i64)
            .flat_map(|u| (1..=200).map(move |l| UserLocation { user_id: u, location_id: l }))
            .collect();
        assert_eq!(repo.import_links(&links).unwrap(), 20_000);
        assert_eq!(repo.import_links(&links[..10]).unwrap(), 0, "existing links are skipped");
        assert_eq!(repo.count_user_locations(42).unwrap(), 200);
        let bad = [UserLocation { user_id: 1, location_id: 300 }, UserLocation { user_id: 1, location_id: 12_001 }];
        assert!(matches!(repo.import_links(&bad), Err(Error::ForeignKeyViolation { .. })));
        assert_eq!(repo.count_user_locations(1).unwrap(), 200);
        let dup = [NewLocation::new("Fresh", "x"), NewLocation::new("User 5", "x")];
        assert!(matches!(repo.import_locations(&dup), Err(Error::UniqueViolation { .. })));
        assert!(repo.find_location_by_name("Fresh").unwrap().is_none());
    }

    fn pagination_visits_every_row_once_in_order(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        let names = names(1_000);
        // Ids with gaps and negatives: 1000 users, ids -500, -497, ... (step 3).
        let users: Vec<NewUser> = names.iter().enumerate().map(|(i, n)| NewUser::new(i as i64 * 3 - 500, n)).collect();
        repo.import_users(&users).unwrap();
        let locations: Vec<NewLocation> = names[..250].iter().map(|n| NewLocation::new(n, "x")).collect();
        repo.import_locations(&locations).unwrap();
        for user in users.iter().step_by(7) {
            repo.link(user.user_id, (user.user_id.rem_euclid(250) + 1) as i32).unwrap();
        }
        let mut visited = Vec::new();
        let mut after = None;
        loop {
            let page = repo.users_page(after, 64).unwrap();
            let Some(last) = page.last() else { break };
            after = Some(last.user_id);
            visited.extend(ids(&page));
        }
        let expected: Vec<i64> = users.iter().map(|u| u.user_id).collect();
        assert_eq!(visited, expected);
        let mut located = Vec::new();
        let mut after = None;
        loop {
            let page = repo.locations_page(after, 100).unwrap();
            let Some(last) = page.last() else { break };
            after = Some(last.location_id);
            located.extend(page.into_iter().map(|l| l.location_id));
        }
        assert_eq!(located, (1..=250).collect::<Vec<i32>>());
        let mut walked = Vec::new();
        let mut links = 0;
        let mut after = None;
        loop {
            let page = repo.users_with_locations_page(after, 100).unwrap();
            let Some(last) = page.last() else { break };
            after = Some(last.user.user_id);
            for row in page {
                links += row.locations.len();
                walked.push(row.user.user_id);
            }
        }
        assert_eq!(walked, expected);
        assert_eq!(links, users.iter().step_by(7).count());
    }
}
