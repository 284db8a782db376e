//! Bulk data: streaming imports from iterators and CSV, exports, progress, and the `COPY`
//! paths of `import_links` / `import_locations` — each on PostgreSQL and on SQLite.

mod common;

use std::time::Duration;

use chrono::{NaiveDate, NaiveDateTime};
use diesel::QueryableByName;
use userbase::bulk::{
    self, Commit, ExportOptions, ImportCause, ImportOptions, Progress, UserRecord,
};
use userbase::models::{NewLocation, NewUser, UserLocation};
use userbase::{Error, Repo};

use common::{eventually, Flag, TestDb};

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

fn count(repo: &mut Repo<'_>, table: &str) -> i64 {
    repo.load_sql::<Count>(&format!("SELECT count(*) AS n FROM {table}"))
        .unwrap()[0]
        .n
}

fn at(day: u32, micros: u32) -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2024, 6, day)
        .and_then(|d| d.and_hms_micro_opt(2, 45, 7, micros))
        .unwrap()
}

/// A user record with only an id and a name.
fn record(user_id: i64, full_name: &str) -> UserRecord {
    UserRecord {
        user_id,
        full_name: full_name.to_owned(),
        created_at: Some(at(19, 0)),
        ..UserRecord::default()
    }
}

/// `n` users with ids 1..=n, as an iterator that never fails.
fn users(n: i64) -> impl Iterator<Item = Result<UserRecord, std::io::Error>> {
    (1..=n).map(|id| Ok(record(id, &format!("User {id}"))))
}

fn export_all(repo: &mut Repo<'_>) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut users = Vec::new();
    let mut locations = Vec::new();
    let mut links = Vec::new();
    repo.export_users(&mut users, ExportOptions::default())
        .unwrap();
    repo.export_locations(&mut locations, ExportOptions::default())
        .unwrap();
    repo.export_links(&mut links, ExportOptions::default())
        .unwrap();
    (users, locations, links)
}

/// The users file of the round trip, as both backends export it.
const USERS_CSV: &str = "\
user_id,username,full_name,language,active,logged_as,referrer_id,created_at
1,ann,\"Smith, Ann\",en,t,,5,2024-06-19 02:45:07
2,,\"Bob \"\"the builder\"\"\",uk,f,bob,1,2024-06-20 02:45:07.5
3,zoë,\"two
lines\r
and more\",fr,t,,,2024-06-21 02:45:07.123456
4,東京,Ünïcödé 🙂,ja,t,\\N,3,2024-06-22 02:45:07.00001
5,,Eve,en,t,,,2024-06-23 02:45:07
";

const LOCATIONS_CSV: &str = "\
location_id,location_name,address,has_solarium,created_at
1,\"Gym, North\",\"1 \"\"Main\"\" St\",t,2024-06-19 02:45:07
3,Café Zürich,\"Bahnhofstrasse 1
8001 Zürich\",f,2024-06-20 02:45:07.25
";

const LINKS_CSV: &str = "\
location_id,user_id
1,1
3,1
1,2
3,4
";

both_backends! {
    fn export_then_import_then_export_is_identical(backend: Backend) {
        let source = TestDb::new(backend);
        let db = source.database();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        // User 1 is referred by user 5, written after it: a forward reference.
        let mut eve = NewUser::new(5, "Eve").created_at(at(23, 0));
        eve.active = Some(true);
        repo.insert_user(&eve).unwrap();
        let mut ann = NewUser::new(1, "Smith, Ann").username("ann").referrer(5).created_at(at(19, 0));
        ann.active = Some(true);
        let mut bob = NewUser::new(2, "Bob \"the builder\"").language("uk").referrer(1).created_at(at(20, 500_000));
        bob.active = Some(false);
        bob.logged_as = Some("bob");
        let zoe = NewUser::new(3, "two\nlines\r\nand more").username("zoë").language("fr").created_at(at(21, 123_456));
        let mut tokyo = NewUser::new(4, "Ünïcödé 🙂").username("東京").language("ja").referrer(3).created_at(at(22, 10));
        tokyo.logged_as = Some("\\N");
        repo.import_users(&[ann, bob, zoe, tokyo]).unwrap();
        let gym = NewLocation { created_at: Some(at(19, 0)), ..NewLocation::new("Gym, North", "1 \"Main\" St") };
        let spare = NewLocation::new("Spare", "Nowhere");
        let cafe = NewLocation {
            has_solarium: Some(false),
            created_at: Some(at(20, 250_000)),
            ..NewLocation::new("Café Zürich", "Bahnhofstrasse 1\n8001 Zürich")
        };
        repo.import_locations(&[gym, spare, cafe]).unwrap();
        repo.delete_location(2).unwrap();
        let links = [(1, 1), (3, 1), (1, 2), (3, 4)].map(|(location_id, user_id)| UserLocation { location_id, user_id });
        assert_eq!(repo.import_links(&links).unwrap(), 4);

        let (users, locations, links) = export_all(&mut repo);
        assert_eq!(String::from_utf8(users.clone()).unwrap(), USERS_CSV);
        assert_eq!(String::from_utf8(locations.clone()).unwrap(), LOCATIONS_CSV);
        assert_eq!(String::from_utf8(links.clone()).unwrap(), LINKS_CSV);

        // Into an empty database, in batches of 2: user 1's referrer comes a batch later.
        let target = TestDb::new(backend);
        let db2 = target.database();
        let mut session2 = db2.session().unwrap();
        let mut repo2 = session2.repo();
        let options = || ImportOptions::default().batch_size(2);
        let imported = repo2.import_users_from(bulk::csv::users(&users[..]), options()).unwrap();
        assert_eq!((imported.rows, imported.inserted, imported.batches), (5, 5, 3));
        repo2.import_locations_from(bulk::csv::locations(&locations[..]), options()).unwrap();
        repo2.import_links_from(bulk::csv::links(&links[..]), options()).unwrap();
        assert_eq!(export_all(&mut repo2), (users, locations, links));
        // The id sequence moved past the imported ids.
        assert_eq!(repo2.insert_location(&NewLocation::new("New", "Street")).unwrap().location_id, 4);
    }

    fn source_failure_leaves_nothing_or_the_committed_batches(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        let failing = || {
            users(300_000).map(|row| match row {
                Ok(user) if user.user_id == 250_000 => Err(std::io::Error::other("disk gone")),
                other => other,
            })
        };
        let error = repo
            .import_users_from(failing(), ImportOptions::default().batch_size(20_000))
            .unwrap_err();
        assert_eq!((error.committed, error.row), (0, Some(250_000)));
        assert!(matches!(&error.cause, ImportCause::Source(e) if e.to_string() == "disk gone"));
        assert_eq!(count(&mut repo, "users"), 0);

        let options = ImportOptions::default().batch_size(20_000).commit(Commit::PerBatch);
        let error = repo.import_users_from(failing(), options).unwrap_err();
        assert_eq!((error.committed, error.row), (240_000, Some(250_000)));
        assert_eq!(count(&mut repo, "users"), 240_000);
        assert_eq!(repo.users_page(Some(239_999), 10).unwrap().len(), 1);
    }

    fn referral_cycle_across_batches_is_refused(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        // 1 refers to 3 (a later batch), 3 refers to 1: the cycle closes in the second batch.
        let rows = [
            UserRecord { referrer_id: Some(3), ..record(1, "One") },
            record(2, "Two"),
            UserRecord { referrer_id: Some(1), ..record(3, "Three") },
        ];
        for commit in [Commit::Whole, Commit::PerBatch] {
            let rows = rows.clone().map(Ok::<_, std::io::Error>);
            let options = ImportOptions::default().batch_size(2).commit(commit);
            let error = repo.import_users_from(rows, options).unwrap_err();
            assert!(
                matches!(error.database(), Some(Error::ReferralCycle { user_id: 1, referrer_id: 3 })),
                "{commit:?}: {error:?}"
            );
            match commit {
                Commit::Whole => assert_eq!((error.committed, count(&mut repo, "users")), (0, 0)),
                // The first batch stays, user 1 without the referrer that would close the cycle.
                _ => {
                    assert_eq!((error.committed, count(&mut repo, "users")), (2, 2));
                    assert_eq!(repo.user(1).unwrap().referrer_id, None);
                }
            }
        }
    }

    fn referral_cycle_among_many_pending_referrals_is_refused(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        // Users 1..=5 refer to 10..=14 (the next batch); 14 refers to 5: 5 -> 14 -> 5.
        let first = (1..=5).map(|id| UserRecord { referrer_id: Some(id + 9), ..record(id, "Early") });
        let second = (10..=14).map(|id| UserRecord { referrer_id: (id == 14).then_some(5), ..record(id, "Late") });
        let rows: Vec<_> = first.chain(second).collect();
        let error = repo
            .import_users_from(rows.clone().into_iter().map(Ok::<_, std::io::Error>), ImportOptions::default().batch_size(5))
            .unwrap_err();
        assert!(matches!(error.database(), Some(Error::ReferralCycle { user_id: 5, referrer_id: 14 })), "{error:?}");
        assert_eq!(count(&mut repo, "users"), 0);
        // Without the closing referral, all ten go in with their referrers.
        let mut rows = rows;
        rows[9] = record(14, "Late");
        repo.import_users_from(rows.into_iter().map(Ok::<_, std::io::Error>), ImportOptions::default().batch_size(5)).unwrap();
        let referrers: Vec<_> = repo.users().unwrap().iter().map(|u| u.referrer_id).collect();
        assert_eq!(referrers, [Some(10), Some(11), Some(12), Some(13), Some(14), None, None, None, None, None]);
    }

    fn forward_referrals_across_batches_are_set_and_missing_ones_refused(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        let rows = [
            UserRecord { referrer_id: Some(4), ..record(1, "One") },
            UserRecord { referrer_id: Some(1), ..record(2, "Two") },
            UserRecord { referrer_id: Some(4), ..record(3, "Three") },
            record(4, "Four"),
        ];
        let options = ImportOptions::default().batch_size(1);
        repo.import_users_from(rows.map(Ok::<_, std::io::Error>), options).unwrap();
        let referrers: Vec<_> = repo.users().unwrap().iter().map(|u| u.referrer_id).collect();
        assert_eq!(referrers, [Some(4), Some(1), Some(4), None]);

        let rows = [UserRecord { referrer_id: Some(99), ..record(10, "Ten") }, record(11, "Eleven")];
        let options = ImportOptions::default().batch_size(1);
        let error = repo.import_users_from(rows.map(Ok::<_, std::io::Error>), options).unwrap_err();
        assert!(
            matches!(error.database(), Some(Error::ForeignKeyViolation { constraint: Some(c), .. }) if c == "users_referrer_id_fkey"),
            "{error:?}"
        );
        assert_eq!(count(&mut repo, "users"), 4);
    }

    fn import_links_skips_duplicates_in_input_and_stored(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        repo.import_users(&[NewUser::new(1, "One"), NewUser::new(2, "Two"), NewUser::new(3, "Three")]).unwrap();
        repo.import_locations(&[NewLocation::new("A", "a"), NewLocation::new("B", "b")]).unwrap();
        repo.link(1, 1).unwrap();
        let link = |user_id, location_id| UserLocation { location_id, user_id };
        // Stored already, twice in the input, new.
        let links = [link(1, 1), link(2, 1), link(2, 1), link(3, 2), link(1, 2), link(3, 2)];
        assert_eq!(repo.import_links(&links).unwrap(), 3);
        assert_eq!(count(&mut repo, "userlocations"), 4);
        // The same through the stream, in batches of 2, against what is stored now.
        let more = [link(1, 1), link(2, 2), link(2, 2), link(3, 1)];
        let imported = repo
            .import_links_from(more.map(Ok::<_, std::io::Error>), ImportOptions::default().batch_size(2))
            .unwrap();
        assert_eq!((imported.rows, imported.inserted), (4, 2));
        let mut stored = repo.user_locations().unwrap();
        stored.sort_by_key(|l| (l.user_id, l.location_id));
        assert_eq!(stored, [link(1, 1), link(1, 2), link(2, 1), link(2, 2), link(3, 1), link(3, 2)]);
        // A missing location: nothing of the import is kept, and the constraint is named.
        let error = repo.import_links(&[link(3, 3), link(9, 2)]);
        assert!(
            matches!(&error, Err(Error::ForeignKeyViolation { constraint: Some(c), .. }) if c.starts_with("userlocations_")),
            "{error:?}"
        );
        assert_eq!(count(&mut repo, "userlocations"), 6);
    }

    fn progress_counts_rise_to_the_total(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        let mut reports: Vec<Progress> = Vec::new();
        let options = ImportOptions::default()
            .batch_size(1_000)
            .progress_interval(Duration::ZERO)
            .progress(|p| reports.push(*p));
        repo.import_users_from(users(10_500), options).unwrap();
        let rows: Vec<u64> = reports.iter().map(|p| p.rows).collect();
        let expected: Vec<u64> = (1..=10).map(|b| b * 1_000).chain([10_500, 10_500]).collect();
        assert_eq!(rows, expected);
        assert_eq!(reports.iter().filter(|p| p.finished).count(), 1);
        assert!(reports.last().unwrap().finished);
        assert!(reports.windows(2).all(|w| w[0].elapsed <= w[1].elapsed));

        // Exports report rows and bytes, rising, ending at what was written.
        let mut reports: Vec<Progress> = Vec::new();
        let mut out = Vec::new();
        let options = ExportOptions::default().progress_interval(Duration::ZERO).progress(|p| reports.push(*p));
        let exported = repo.export_users(&mut out, options).unwrap();
        assert_eq!((exported.rows, exported.bytes), (10_500, out.len() as u64));
        assert!(reports.len() >= 2, "{reports:?}");
        assert!(reports.windows(2).all(|w| w[0].rows <= w[1].rows && w[0].bytes <= w[1].bytes));
        let last = reports.last().unwrap();
        assert_eq!((last.rows, last.bytes, last.finished), (10_500, Some(out.len() as u64), true));
    }

    fn malformed_csv_line_is_reported_and_nothing_kept(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        // Row 3 starts on line 5 (row 2 spans two lines); its `active` is not a boolean.
        let file = "user_id,username,full_name,language,active,logged_as,referrer_id,created_at\n\
                    1,,One,en,t,,,\n\
                    2,,\"Two\nlines\",en,t,,,\n\
                    3,,Three,en,maybe,,,\n\
                    4,,Four,en,t,,,\n";
        let error = repo
            .import_users_from(bulk::csv::users(file.as_bytes()), ImportOptions::default().batch_size(2))
            .unwrap_err();
        let ImportCause::Source(csv) = &error.cause else { panic!("{error:?}") };
        assert_eq!((csv.line(), csv.column(), csv.field()), (5, Some(5), Some("active")));
        assert_eq!(csv.to_string(), "line 5, column 5 (active): \"maybe\" is not a boolean (t or f)");
        assert_eq!((error.row, error.committed), (Some(3), 0));
        assert_eq!(count(&mut repo, "users"), 0);
        // Per batch: the first batch (rows 1 and 2) stays.
        let options = ImportOptions::default().batch_size(2).commit(Commit::PerBatch);
        let error = repo.import_users_from(bulk::csv::users(file.as_bytes()), options).unwrap_err();
        assert_eq!(error.committed, 2);
        assert_eq!(count(&mut repo, "users"), 2);
        // A bad header and a short line.
        let error = repo
            .import_users_from(bulk::csv::users("id,name\n1,x\n".as_bytes()), ImportOptions::default())
            .unwrap_err();
        let ImportCause::Source(csv) = &error.cause else { panic!("{error:?}") };
        assert_eq!((csv.line(), csv.column()), (1, Some(1)));
        let short = "user_id,username,full_name,language,active,logged_as,referrer_id,created_at\n7,,Seven\n";
        let error = repo.import_users_from(bulk::csv::users(short.as_bytes()), ImportOptions::default()).unwrap_err();
        let ImportCause::Source(csv) = &error.cause else { panic!("{error:?}") };
        assert_eq!(csv.line(), 2, "{csv}");
        // A row validation refuses names its row.
        let blank = "user_id,username,full_name,language,active,logged_as,referrer_id,created_at\n7,,Seven,,,,,\n8,,\" \",,,,,\n";
        let error = repo.import_users_from(bulk::csv::users(blank.as_bytes()), ImportOptions::default()).unwrap_err();
        assert!(matches!(error.database(), Some(Error::Validation { field: "full_name", .. })), "{error:?}");
        assert_eq!(error.row, Some(2));
        assert_eq!(count(&mut repo, "users"), 2);
    }
}

/// A `COPY … TO STDOUT` the server cancels (statement timeout) fails the export instead of
/// reporting a short file as complete, and leaves the connection usable.
#[test]
fn postgres_export_cancelled_by_the_server_fails() {
    use diesel::connection::SimpleConnection;

    let test = TestDb::new(userbase::Backend::Postgres);
    let db = test.database();
    let mut session = db.session().unwrap();
    session
        .repo()
        .import_users_from(users(200_000), ImportOptions::default())
        .unwrap();
    session
        .connection()
        .batch_execute("SET statement_timeout = 1")
        .unwrap();
    let mut out = Vec::new();
    let result = session
        .repo()
        .export_users(&mut out, ExportOptions::default());
    assert!(
        matches!(result, Err(bulk::ExportError::Database(_))),
        "{result:?} after {} bytes",
        out.len()
    );
    session
        .connection()
        .batch_execute("SET statement_timeout = 0")
        .unwrap();
    let mut out = Vec::new();
    let exported = session
        .repo()
        .export_users(&mut out, ExportOptions::default())
        .unwrap();
    assert_eq!(exported.rows, 200_000);
}

/// PostgreSQL: a link that a writer taking no user lock (plain SQL here) stores while
/// `import_links` runs makes the import's plain `INSERT` fail on the key; the import then goes
/// on with `ON CONFLICT DO NOTHING` and skips that link. When the writer rolls back instead, the
/// import stores every link. Either way the import waits for the writer, then succeeds.
#[test]
fn postgres_import_links_skips_a_link_stored_meanwhile() {
    use diesel::connection::SimpleConnection;

    let test = TestDb::new(userbase::Backend::Postgres);
    let db = test.database();
    let users: Vec<NewUser> = (1..=4).map(|id| NewUser::new(id, "User")).collect();
    db.session().unwrap().repo().import_users(&users).unwrap();
    db.session()
        .unwrap()
        .repo()
        .import_locations(&[NewLocation::new("A", "a"), NewLocation::new("B", "b")])
        .unwrap();
    let link = |user_id, location_id| UserLocation {
        location_id,
        user_id,
    };
    let import_waits = || {
        db.session()
            .unwrap()
            .repo()
            .load_sql::<Flag>(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event_type = 'Lock' AND wait_event = 'transactionid') AS flag",
            )
            .unwrap()[0]
            .flag
    };
    for (commit, user, made) in [(true, 1, 2), (false, 3, 3)] {
        let mut writer = db.session().unwrap();
        writer
            .connection()
            .batch_execute(&format!(
                "BEGIN; INSERT INTO userlocations (location_id, user_id) VALUES (1, {user})"
            ))
            .unwrap();
        let links = [link(user, 1), link(user, 2), link(user + 1, 1)];
        let imported = std::thread::scope(|scope| {
            let importer = scope.spawn(|| db.session().unwrap().repo().import_links(&links));
            assert!(
                eventually(Duration::from_secs(30), import_waits),
                "commit {commit}: the import never waited for the writer"
            );
            let end = if commit { "COMMIT" } else { "ROLLBACK" };
            writer.connection().batch_execute(end).unwrap();
            importer.join().unwrap()
        });
        assert_eq!(imported.unwrap(), made, "commit {commit}");
        let mut stored: Vec<UserLocation> = db
            .session()
            .unwrap()
            .repo()
            .user_locations()
            .unwrap()
            .into_iter()
            .filter(|l| l.user_id == user || l.user_id == user + 1)
            .collect();
        stored.sort_by_key(|l| (l.user_id, l.location_id));
        assert_eq!(
            stored,
            [link(user, 1), link(user, 2), link(user + 1, 1)],
            "commit {commit}"
        );
    }
}
