//! `import_users` on its fast path (SQLite: fixed-size inserts Diesel keeps prepared, timestamps
//! formatted once) stores exactly what the ordinary insert stores, on both backends.

mod common;

use chrono::{NaiveDate, NaiveDateTime};
use diesel::QueryableByName;
use userbase::models::NewUser;
use userbase::{Backend, Repo};

use common::TestDb;

/// Users of the import: ids from `from`, every optional column set in some rows and not in
/// others, explicit timestamps with 0, 3 and 6 fractional digits and none.
fn batch(names: &[String], from: i64) -> Vec<NewUser<'_>> {
    let day = NaiveDate::from_ymd_opt(2024, 6, 19).unwrap();
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let n = i as i64;
            let mut user = NewUser::new(from + n, name);
            if n % 3 != 0 {
                user = user.username(name);
            }
            if n % 5 == 1 {
                user = user.language("uk");
            }
            if n % 7 == 2 {
                user.active = Some(false);
            }
            if n % 4 == 3 {
                user.logged_as = Some("someone");
            }
            if n > 0 && n % 6 == 0 {
                user = user.referrer(from + n - 1);
            }
            let at = |micros: u32| -> NaiveDateTime {
                day.and_hms_micro_opt(2, 45, (i % 60) as u32, micros)
                    .unwrap()
            };
            match n % 4 {
                0 => user.created_at(at(0)),
                1 => user.created_at(at(500_000)),
                2 => user.created_at(at(123_456)),
                _ => user,
            }
        })
        .collect()
}

/// Every stored column of `users` with an id in `from..from + n`, as exact text (SQLite: each
/// value's storage class and bytes; PostgreSQL: each value's text form), ordered by id, with the
/// id made relative to `from`.
#[derive(QueryableByName, Debug, PartialEq)]
struct Stored {
    #[diesel(sql_type = diesel::sql_types::Text)]
    line: String,
}

fn stored(repo: &mut Repo<'_>, backend: Backend, from: i64, n: i64) -> Vec<String> {
    let sql = match backend {
        Backend::Sqlite => format!(
            "SELECT (user_id - {from}) || '|' || typeof(username) || ':' || quote(username) || '|' \
             || typeof(full_name) || ':' || quote(full_name) || '|' || typeof(language) || ':' \
             || quote(language) || '|' || typeof(active) || ':' || quote(active) || '|' \
             || typeof(logged_as) || ':' || quote(logged_as) || '|' || typeof(referrer_id) || ':' \
             || quote(coalesce(referrer_id - {from}, 'none')) || '|' || typeof(created_at) || ':' \
             || hex(created_at) AS line \
             FROM users WHERE user_id >= {from} AND user_id < {from} + {n} ORDER BY user_id"
        ),
        _ => format!(
            "SELECT format('%s|%L|%L|%L|%L|%L|%L|%L', user_id - {from}, username, full_name, \
             language, active, logged_as, referrer_id - {from}, created_at) AS line \
             FROM users WHERE user_id >= {from} AND user_id < {from} + {n} ORDER BY user_id"
        ),
    };
    repo.load_sql::<Stored>(&sql)
        .unwrap()
        .into_iter()
        .map(|s| s.line)
        .collect()
}

both_backends! {
    fn import_stores_what_single_inserts_store(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        // 4 095 + 1 000 + 7 rows: a full chunk, then chunks of 512, 256, … 1 rows on SQLite.
        let n = 5_102;
        let names: Vec<String> = (0..n).map(|i| format!("User {i}")).collect();
        let (single_from, import_from) = (1_000_000, 2_000_000);
        for user in batch(&names, single_from) {
            repo.insert_user(&user).unwrap();
        }
        let imported = batch(&names, import_from);
        assert_eq!(repo.import_users(&imported).unwrap(), n);

        let singles = stored(&mut repo, backend, single_from, n as i64);
        let imports = stored(&mut repo, backend, import_from, n as i64);
        assert_eq!(singles.len(), n);
        // The rows without a timestamp took the database's now: compare the others exactly.
        for (i, (single, import)) in singles.iter().zip(&imports).enumerate() {
            if i % 4 != 3 {
                assert_eq!(import, single, "row {i}");
            }
        }
        // The imported `now`, read back and written through the ordinary insert, is the same
        // bytes again.
        let now_user = repo.user(import_from + 3).unwrap();
        let mut again = batch(&names, 3_000_000)[3];
        again.created_at = Some(now_user.created_at);
        repo.insert_user(&again).unwrap();
        let again = stored(&mut repo, backend, 3_000_003, 1);
        let import_now = &imports[3];
        assert_eq!(again.len(), 1);
        // Same line but for the referrer, which is relative to another base.
        let cut = |line: &str| line.rsplit_once('|').map(|(_, at)| at.to_owned()).unwrap();
        assert_eq!(cut(&again[0]), cut(import_now));
    }
}

both_backends! {
    fn import_takes_referrers_later_in_the_batch(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        // 5 000 users, each referred by the one before it: every referrer comes later in the
        // batch, across SQLite's statements (4 095 + 512 + 256 + … rows).
        let n = 5_000_i64;
        let names: Vec<String> = (0..n).map(|i| format!("User {i}")).collect();
        let chain: Vec<NewUser<'_>> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let user = NewUser::new(i as i64 + 1, name);
                if (i as i64) < n - 1 { user.referrer(i as i64 + 2) } else { user }
            })
            .collect();
        assert_eq!(repo.import_users(&chain).unwrap(), n as usize);
        let stored = repo.users().unwrap();
        assert_eq!(stored.len(), n as usize);
        for (i, user) in stored.iter().enumerate() {
            let i = i as i64;
            assert_eq!((user.user_id, user.full_name.as_str()), (i + 1, names[i as usize].as_str()));
            assert_eq!(user.referrer_id, (i < n - 1).then_some(i + 2), "user {}", i + 1);
        }
    }
}

/// On SQLite, `created_at` text in any form Diesel reads (not only the one it writes) still
/// reads as Diesel reads it: the fast path leaves other forms to Diesel's parser.
#[test]
fn sqlite_reads_every_timestamp_form() {
    use diesel::RunQueryDsl;
    let test = TestDb::new(Backend::Sqlite);
    let db = test.database();
    let mut session = db.session().unwrap();
    let forms = [
        ("2024-06-19 02:45:14", (14, 0)),
        ("2024-06-19 02:45:14.5", (14, 500_000_000)),
        ("2024-06-19 02:45:14.123456", (14, 123_456_000)),
        ("2024-06-19T02:45:14", (14, 0)),
        ("2024-06-19 02:45:14+00:00", (14, 0)),
        ("2024-06-19 02:45", (0, 0)),
    ];
    for (i, (text, _)) in forms.iter().enumerate() {
        diesel::sql_query(format!(
            "INSERT INTO users (user_id, full_name, language, active, created_at) \
             VALUES ({}, 'U', 'en', 1, '{text}')",
            i + 1
        ))
        .execute(session.connection())
        .unwrap();
    }
    let day = NaiveDate::from_ymd_opt(2024, 6, 19).unwrap();
    let users = session.repo().users().unwrap();
    let read: Vec<NaiveDateTime> = users.iter().map(|u| u.created_at).collect();
    let expected: Vec<NaiveDateTime> = forms
        .iter()
        .map(|(_, (s, nano))| day.and_hms_nano_opt(2, 45, *s, *nano).unwrap())
        .collect();
    assert_eq!(read, expected);
    assert_eq!(session.repo().users_raw().unwrap(), users);
}
