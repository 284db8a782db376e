//! Bulk loads (`src/repo/import.rs`).

use super::*;

both_backends! {
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

    fn copy_users_round_trips(backend: Backend) {
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

    fn import_users_failing_persists_nothing(backend: Backend) {
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
}
