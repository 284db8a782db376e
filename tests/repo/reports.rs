//! The tutorial's reports (`src/repo/reports.rs`): users with their locations, counts, the raw `SELECT`.

use super::*;

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

    fn users_raw_reads_whole_rows(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.seeded();
        let mut session = db.session().unwrap();
        let raw = session.repo().users_raw().unwrap();
        let typed = session.repo().users().unwrap();
        assert_eq!(raw, typed);
        assert_eq!(ids(&raw), [1, 1169, 1824, 5155, 6873, 9044, 12356]);
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
}
