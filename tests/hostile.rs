//! A corpus of hostile inputs: every case ends in a typed error or a verbatim round trip, and
//! PostgreSQL and SQLite agree case by case.

mod common;

use chrono::{NaiveDate, NaiveDateTime};
use userbase::models::{NewLocation, NewUser, UserChanges};
use userbase::{Backend, Error, Repo};

use common::TestDb;

/// The outcome of one case, comparable across backends.
fn outcome<T>(result: Result<T, Error>, round_trip: impl FnOnce(T) -> bool) -> String {
    match result {
        Ok(value) => {
            if round_trip(value) {
                "round trip".to_owned()
            } else {
                "CHANGED ON THE WAY".to_owned()
            }
        }
        Err(Error::Validation { field, .. }) => format!("Validation({field})"),
        Err(Error::NotFound) => "NotFound".to_owned(),
        Err(Error::UniqueViolation { .. }) => "UniqueViolation".to_owned(),
        Err(Error::ForeignKeyViolation { constraint, .. }) => {
            format!("ForeignKeyViolation({constraint:?})")
        }
        Err(Error::ReferralCycle { .. }) => "ReferralCycle".to_owned(),
        // What malformed raw SQL gets; only `load_sql` cases may end here (checked below).
        Err(Error::Query(_)) => "Query".to_owned(),
        Err(other) => format!("UNTYPED {other:?}"),
    }
}

fn texts() -> Vec<(String, String)> {
    let mut texts: Vec<(&str, String)> = vec![
        ("ascii 128", "a".repeat(128)),
        ("ascii 129", "a".repeat(129)),
        ("2-byte 128", "é".repeat(128)),
        ("2-byte 129", "é".repeat(129)),
        ("3-byte 128", "語".repeat(128)),
        ("3-byte 129", "語".repeat(129)),
        ("4-byte 128", "😀".repeat(128)),
        ("4-byte 129", "😀".repeat(129)),
        ("combining 128", "e\u{301}".repeat(64)),
        ("combining 130", "e\u{301}".repeat(65)),
        ("zwj family", "👩\u{200D}👩\u{200D}👧".to_owned()),
        ("1 MB", "x".repeat(1 << 20)),
        ("empty", String::new()),
        ("spaces", "   ".to_owned()),
        ("tabs and newlines", "\t\n\r".to_owned()),
        ("nbsp and ideographic space", "\u{00A0}\u{3000}".to_owned()),
        ("zero-width space", "\u{200B}".to_owned()),
        (
            "zero-width mix",
            "\u{200B}\u{200C}\u{200D}\u{2060}\u{FEFF}".to_owned(),
        ),
        ("bidi marks only", "\u{200E}\u{200F}\u{202E}".to_owned()),
        ("hangul filler", "\u{3164}".to_owned()),
        ("soft hyphen", "\u{00AD}".to_owned()),
        ("variation selector", "\u{FE0F}".to_owned()),
        ("tag characters", "\u{E0041}\u{E0042}".to_owned()),
        ("nul", "\0".to_owned()),
        ("nul inside", "ab\0cd".to_owned()),
        ("nul at end", "abcd\0".to_owned()),
        ("zero-width inside", "a\u{200B}b".to_owned()),
        ("rtl override text", "\u{202E}evil.exe".to_owned()),
        ("control chars inside", "a\u{7}b\u{1B}[31m".to_owned()),
        ("newline inside", "line 1\nline 2".to_owned()),
        ("quote", "O'Brien".to_owned()),
        ("injection 1", "'; DROP TABLE users; --".to_owned()),
        ("injection 2", "\" OR 1=1 --".to_owned()),
        ("injection 3", "Robert'); DROP TABLE students;--".to_owned()),
        ("like wildcards", "%_%".to_owned()),
        ("placeholders", "$1 ? :name @p1".to_owned()),
        ("backslashes", "\\x00 \\' \\\\".to_owned()),
        ("sql comment", "/* */ -- #".to_owned()),
        ("replacement char", "\u{FFFD}".to_owned()),
        ("private use", "\u{E000}\u{F8FF}".to_owned()),
        ("noncharacter", "\u{FFFF}".to_owned()),
    ];
    texts.sort_by(|a, b| a.0.cmp(b.0));
    texts.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32, nanos: u32) -> NaiveDateTime {
    NaiveDate::from_ymd_opt(y, mo, d)
        .unwrap()
        .and_hms_nano_opt(h, mi, s, nanos)
        .unwrap()
}

fn run_corpus(repo: &mut Repo<'_>) -> Vec<(String, String)> {
    let mut results = Vec::new();
    let mut next_id = 1_000_i64;
    let mut record = |name: String, outcome: String| results.push((name, outcome));
    repo.insert_user(&NewUser::new(1, "Anchor")).unwrap();
    let anchor = repo
        .insert_location(&NewLocation::new("Anchor", "1 Road"))
        .unwrap()
        .location_id;
    for (name, text) in texts() {
        next_id += 1;
        let id = next_id;
        let text = text.as_str();
        record(
            format!("full_name {name}"),
            outcome(repo.insert_user(&NewUser::new(id, text)), |u| {
                u.full_name == text
            }),
        );
        let stored_user = repo.find_user(id).unwrap().map(|u| u.full_name);
        record(
            format!("full_name {name} read back"),
            outcome(Ok::<_, Error>(stored_user), |n| {
                n.is_none() || n.as_deref() == Some(text)
            }),
        );
        record(
            format!("username {name}"),
            outcome(
                repo.upsert_user(&NewUser::new(id, "Named").username(text)),
                |u| u.username.as_deref() == Some(text),
            ),
        );
        record(
            format!("language {name}"),
            outcome(
                repo.update_user(
                    1,
                    &UserChanges {
                        language: Some(text),
                        ..UserChanges::default()
                    },
                ),
                |u| u.language == text,
            ),
        );
        record(
            format!("logged_as {name}"),
            outcome(
                repo.update_user(
                    1,
                    &UserChanges {
                        logged_as: Some(Some(text)),
                        ..UserChanges::default()
                    },
                ),
                |u| u.logged_as.as_deref() == Some(text),
            ),
        );
        let inserted = repo.insert_location(&NewLocation::new(text, text));
        let stored = inserted.as_ref().ok().map(|l| l.location_id);
        record(
            format!("location {name}"),
            outcome(inserted, |l| l.location_name == text && l.address == text),
        );
        record(
            format!("find_location_by_name {name}"),
            outcome(repo.find_location_by_name(text), |found| {
                found.map(|l| l.location_id) == stored
            }),
        );
        record(
            format!("rename_location {name}"),
            outcome(repo.rename_location(anchor, text), |l| {
                l.location_name == text
            }),
        );
        let _ = repo.rename_location(anchor, "Anchor");
        record(
            format!("load_sql {name}"),
            outcome(repo.load_sql::<userbase::models::User>(text), |_| true),
        );
    }
    // Extreme ids.
    for id in [i64::MIN, i64::MIN + 1, -1, 0, i64::MAX - 1, i64::MAX] {
        record(
            format!("user id {id}"),
            outcome(repo.insert_user(&NewUser::new(id, "Edge")), |u| {
                u.user_id == id
            }),
        );
        record(
            format!("read user {id}"),
            outcome(repo.user(id), |u| u.user_id == id),
        );
        record(
            format!("link user {id} to a missing location"),
            outcome(repo.link(id, i32::MAX), |_| true),
        );
        record(
            format!("referrer {id}"),
            outcome(repo.set_referrer(1, Some(id)), |u| {
                u.referrer_id == Some(id)
            }),
        );
    }
    let _ = repo.set_referrer(1, None);
    for id in [i32::MIN, -1, 0, i32::MAX] {
        record(
            format!("location id {id}"),
            outcome(repo.location(id), |l| l.location_id == id),
        );
        record(
            format!("delete location {id}"),
            outcome(repo.delete_location(id), |()| true),
        );
        record(
            format!("link missing user to {id}"),
            outcome(repo.link(i64::MAX - 7, id), |_| true),
        );
    }
    record(
        "unknown user".to_owned(),
        outcome(repo.user(i64::MAX - 7), |_| true),
    );
    record(
        "first page".to_owned(),
        outcome(repo.users_page(None, 1), |page| {
            page.first().map(|u| u.user_id) == Some(i64::MIN)
        }),
    );
    record(
        "page after max".to_owned(),
        outcome(repo.users_page(Some(i64::MAX), 5), |page| page.is_empty()),
    );
    for limit in [i64::MIN, -1, 0, 1, 100_000, 100_001, i64::MAX] {
        record(
            format!("limit {limit}"),
            outcome(repo.users_page(None, limit), |_| true),
        );
    }
    // Extreme timestamps.
    let times = [
        ("year 1", at(1, 1, 1, 0, 0, 0, 0), at(1, 1, 1, 0, 0, 0, 0)),
        (
            "year 9999",
            at(9999, 12, 31, 23, 59, 59, 999_999_999),
            at(9999, 12, 31, 23, 59, 59, 999_999_000),
        ),
        (
            "epoch",
            at(1970, 1, 1, 0, 0, 0, 0),
            at(1970, 1, 1, 0, 0, 0, 0),
        ),
        (
            "before 2000 nanos",
            at(1999, 12, 31, 23, 59, 59, 999_999_999),
            at(1999, 12, 31, 23, 59, 59, 999_999_000),
        ),
        (
            "nanos",
            at(2024, 6, 19, 3, 0, 32, 755_164_999),
            at(2024, 6, 19, 3, 0, 32, 755_164_000),
        ),
        (
            "leap second",
            at(2016, 12, 31, 23, 59, 59, 1_000_000_000),
            NaiveDateTime::MIN,
        ),
        (
            "leap second nanos",
            at(2016, 12, 31, 23, 59, 59, 1_999_999_999),
            NaiveDateTime::MIN,
        ),
        ("year 0", at(0, 1, 1, 0, 0, 0, 0), NaiveDateTime::MIN),
        (
            "year 10000",
            at(10000, 1, 1, 0, 0, 0, 0),
            NaiveDateTime::MIN,
        ),
        ("chrono min", NaiveDateTime::MIN, NaiveDateTime::MIN),
        ("chrono max", NaiveDateTime::MAX, NaiveDateTime::MIN),
    ];
    for (name, time, stored) in times {
        next_id += 1;
        let id = next_id;
        record(
            format!("created_at {name}"),
            outcome(
                repo.insert_user(&NewUser::new(id, "Timed").created_at(time)),
                |u| u.created_at == stored,
            ),
        );
        record(
            format!("created_at {name} read back"),
            outcome(repo.find_user(id), |u| {
                u.as_ref().is_none_or(|u| u.created_at == stored)
            }),
        );
    }
    results
}

#[test]
fn hostile_inputs_end_typed_or_verbatim_and_backends_agree() {
    let mut by_backend = Vec::new();
    for backend in [Backend::Postgres, Backend::Sqlite] {
        let test = TestDb::new(backend);
        let db = test.database();
        let mut session = db.session().unwrap();
        let results = run_corpus(&mut session.repo());
        // Nothing untyped, nothing changed on the way.
        let bad: Vec<_> = results
            .iter()
            .filter(|(name, o)| {
                o.starts_with("UNTYPED")
                    || o.starts_with("CHANGED")
                    || (o == "Query" && !name.starts_with("load_sql"))
            })
            .map(|(name, o)| (name, o.chars().take(200).collect::<String>()))
            .collect();
        assert!(bad.is_empty(), "{backend:?}: {bad:#?}");
        by_backend.push(results);
    }
    let (pg, sqlite) = (&by_backend[0], &by_backend[1]);
    assert!(pg.len() > 290, "{} cases", pg.len());
    for (p, s) in pg.iter().zip(sqlite) {
        assert_eq!(p, s, "the backends disagree");
    }
    assert_eq!(pg.len(), sqlite.len());
    // Spot checks that the corpus exercises both outcomes.
    let find = |name: &str| {
        pg.iter()
            .find(|(n, _)| n == name)
            .map(|(_, o)| o.as_str())
            .unwrap()
    };
    assert_eq!(find("full_name 4-byte 128"), "round trip");
    assert_eq!(find("full_name 4-byte 129"), "Validation(full_name)");
    assert_eq!(
        find("find_location_by_name nul"),
        "Validation(location_name)"
    );
    assert_eq!(find("full_name zero-width mix"), "Validation(full_name)");
    assert_eq!(find("full_name injection 1"), "round trip");
    assert_eq!(find("created_at leap second"), "Validation(created_at)");
    assert_eq!(find("created_at year 9999"), "round trip");
    assert_eq!(find("user id -9223372036854775808"), "round trip");
    assert_eq!(find("first page"), "round trip");
    assert_eq!(find("limit 0"), "Validation(limit)");
}
