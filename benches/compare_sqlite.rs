//! userbase against rusqlite on one SQLite file, side by side in one run.
//!
//! `cargo bench --bench compare_sqlite` (add `--features bundled` for the bundled SQLite): makes a
//! scratch SQLite file, runs the migrations, loads the benchmark dataset (the SQLite twin of
//! `benches/data/dataset.sql`, `ANALYZE` included), then measures each operation of the
//! SQLAlchemy tutorial's reports, the upsert and `import_users` through userbase (one held
//! session) and through rusqlite (one held connection, the same pragmas, `prepare_cached` on the
//! very SQL text userbase sent, captured with `DB_ECHO`), in pairs, run after run. rusqlite reads
//! every column of every row into an owned value (text into `String`, timestamps parsed as
//! rusqlite's own `FromSql for NaiveDateTime` parses them) and keeps them until the statement is
//! done, as userbase does into the `Vec` of structs it returns.
//!
//! Knobs (environment): `BENCH_USERS` (10000), `BENCH_LOCATIONS` (500), `BENCH_SECONDS` per
//! measurement (1), `BENCH_RUNS` (5), `BENCH_IMPORT_ROWS` (1000), `BENCH_ANALYZE` (1; 0 skips the
//! dataset's `ANALYZE`), `BENCH_ONLY` (run only the operations whose name contains one of its
//! comma-separated parts), `BENCH_TIMESTAMPS` (`direct`: rusqlite's side parses timestamps as
//! userbase does, not with chrono's `parse_from_str`). Prints a Markdown table: medians with
//! (min-max) over the runs, and the ratio userbase / rusqlite per run as median (min-max).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::time::Instant;

use chrono::NaiveDateTime;
use rusqlite::types::{Value, ValueRef};
use rusqlite::Connection;
use support::{env_or, stats, Rng};
use userbase::models::NewUser;
use userbase::{Database, Repo, Settings};

/// The pragmas userbase gives every SQLite connection (`connection::SQLITE_PRAGMAS`).
const PRAGMAS: &str = "PRAGMA foreign_keys = ON; \
     PRAGMA busy_timeout = 5000; \
     PRAGMA journal_mode = WAL; \
     PRAGMA synchronous = NORMAL;";

/// The id given to userbase while its SQL is captured: the replay draws this bind at random.
const CAPTURE_ID: i64 = 4242;
/// First id of the users `import_users` adds (userbase's, then rusqlite's above them).
const IMPORT_BASE: i64 = 1_000_000_000;

/// Operations per second of `op` over `seconds`.
fn rate(seconds: f64, mut op: impl FnMut()) -> f64 {
    let started = Instant::now();
    let mut n = 0_u64;
    while started.elapsed().as_secs_f64() < seconds {
        op();
        n += 1;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// The dataset of `benches/data/dataset.sql` in SQLite's dialect.
fn dataset(users: i64, locations: i64, analyze: bool) -> String {
    let columns = userbase::models::user::USER_COLUMNS;
    let mut sql = format!(
        "BEGIN;
         INSERT INTO users ({columns})
         WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {users})
         SELECT n,
                CASE WHEN n % 11 = 0 THEN NULL ELSE 'user' || n END,
                'Full Name ' || n,
                CASE n % 5 WHEN 0 THEN 'ru' WHEN 1 THEN 'uk' WHEN 2 THEN 'de' WHEN 3 THEN 'es' ELSE 'en' END,
                n % 10 <> 0,
                NULL,
                CASE WHEN n > 1 AND n % 3 = 0 THEN (n * 7919) % (n - 1) + 1 END,
                strftime('%Y-%m-%d %H:%M:%f', '2024-06-19 02:45:14', '+' || n || ' seconds')
         FROM g;
         INSERT INTO locations (location_name, address, has_solarium, created_at)
         WITH RECURSIVE g(l) AS (SELECT 1 UNION ALL SELECT l + 1 FROM g WHERE l < {locations})
         SELECT 'Location ' || l, l || ' Main Street', l % 2 = 0,
                strftime('%Y-%m-%d %H:%M:%f', '2024-06-19 03:00:30', '+' || l || ' seconds')
         FROM g;
         INSERT INTO userlocations (location_id, user_id)
         WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {users}),
                        k(k) AS (VALUES (0), (1), (2), (3), (4), (5), (6))
         SELECT ((n * 31 + k * 17) % {locations}) + 1, n FROM g, k WHERE k < n % 7;
         COMMIT;"
    );
    if analyze {
        sql.push_str("ANALYZE;");
    }
    sql
}

/// One statement userbase sent: its SQL and, when it was a prepared statement, its binds as
/// Diesel's debug output shows them.
#[derive(Debug, Clone)]
struct Statement {
    sql: String,
    binds: Option<Vec<String>>,
}

/// The statements userbase sends for `op`, captured through `DB_ECHO`.
fn capture(path: &str, op: &dyn Fn(&mut Repo<'_>, i64)) -> Vec<Statement> {
    let log = common::Captured::run(tracing::Level::INFO, || {
        let settings = Settings::from_lookup(|name| match name {
            "DATABASE_URL" => Some(path.to_owned()),
            "DB_ECHO" => Some("true".to_owned()),
            _ => None,
        })
        .expect("settings");
        let db = Database::new(settings).expect("engine");
        let mut session = db.session().expect("session");
        op(&mut session.repo(), CAPTURE_ID);
    });
    log.lines()
        .filter_map(|line| line.split_once("userbase::sql: ").map(|(_, rest)| rest))
        .filter_map(|rest| {
            let (text, _) = rest.rsplit_once(" elapsed_us=")?;
            Some(match text.split_once(" -- binds: [") {
                Some((sql, binds)) => Statement {
                    sql: sql.to_owned(),
                    binds: Some(split_binds(binds.strip_suffix(']').unwrap_or(binds))),
                },
                None => Statement {
                    sql: text.to_owned(),
                    binds: None,
                },
            })
        })
        .collect()
}

fn split_binds(binds: &str) -> Vec<String> {
    if binds.is_empty() {
        return Vec::new();
    }
    binds.split(", ").map(str::to_owned).collect()
}

/// A bind of Diesel's debug output as the value Diesel gives SQLite: the captured id becomes
/// `id`; booleans are integers and timestamps text, as Diesel binds them.
fn bind_value(bind: &str, id: i64) -> Value {
    let bind = bind
        .strip_prefix("Some(")
        .and_then(|b| b.strip_suffix(')'))
        .unwrap_or(bind);
    if bind == "None" {
        Value::Null
    } else if bind == CAPTURE_ID.to_string() {
        Value::Integer(id)
    } else if let Ok(n) = bind.parse::<i64>() {
        Value::Integer(n)
    } else if bind == "true" || bind == "false" {
        Value::Integer(i64::from(bind == "true"))
    } else if let Some(text) = bind.strip_prefix('"').and_then(|b| b.strip_suffix('"')) {
        Value::Text(text.to_owned())
    } else {
        panic!("bind {bind:?} not understood")
    }
}

/// One value of a row, owned, as userbase's structs hold it.
#[expect(dead_code, reason = "held until the statement is done, never read")]
enum Owned {
    Integer(i64),
    Text(String),
    Timestamp(NaiveDateTime),
    Other,
}

/// Reads every column of every row into an owned value and keeps them all (one growing vector
/// per statement, as userbase collects its structs into one `Vec`), until the statement is done:
/// integers, text into `String`, timestamps (text of `YYYY-MM-DD HH:MM:SS…`) parsed into
/// `NaiveDateTime`.
fn read_rows(rows: &mut rusqlite::Rows<'_>) -> usize {
    let mut kept = Vec::new();
    let mut n = 0;
    while let Some(row) = rows.next().expect("row") {
        let columns = row.as_ref().column_count();
        for i in 0..columns {
            kept.push(match row.get_ref(i).expect("column") {
                ValueRef::Integer(v) => Owned::Integer(v),
                ValueRef::Text(t) => {
                    let text = std::str::from_utf8(t).expect("utf-8");
                    if t.len() >= 19 && t[4] == b'-' && t[10] == b' ' {
                        let at = if direct_timestamps() {
                            parse_timestamp(t)
                        } else {
                            // What rusqlite's own `FromSql for NaiveDateTime` does.
                            NaiveDateTime::parse_from_str(text, "%F %T%.f").ok()
                        };
                        Owned::Timestamp(at.expect("timestamp"))
                    } else {
                        Owned::Text(text.to_owned())
                    }
                }
                _ => Owned::Other,
            });
        }
        n += 1;
    }
    drop(std::hint::black_box(kept));
    n
}

/// Whether rusqlite's side parses timestamps as userbase's models do (`BENCH_TIMESTAMPS=direct`)
/// instead of as rusqlite's own conversion does (chrono's `parse_from_str`, the default).
fn direct_timestamps() -> bool {
    static DIRECT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DIRECT.get_or_init(|| std::env::var("BENCH_TIMESTAMPS").is_ok_and(|v| v == "direct"))
}

/// `YYYY-MM-DD HH:MM:SS[.f]` read directly, as `userbase::models`' `StoredTimestamp` does.
fn parse_timestamp(b: &[u8]) -> Option<NaiveDateTime> {
    let digits = |from: usize, to: usize| -> Option<u32> {
        b.get(from..to)?.iter().try_fold(0_u32, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    let nano = match &b[19..] {
        [] => 0,
        [b'.', fraction @ ..] if (1..=9).contains(&fraction.len()) => {
            digits(20, b.len())? * 10_u32.pow(9 - fraction.len() as u32)
        }
        _ => return None,
    };
    chrono::NaiveDate::from_ymd_opt(digits(0, 4)? as i32, digits(5, 7)?, digits(8, 10)?)?
        .and_hms_nano_opt(digits(11, 13)?, digits(14, 16)?, digits(17, 19)?, nano)
}

/// Replays `statements` on rusqlite with the captured id replaced by `id`.
fn replay(conn: &Connection, statements: &[Statement], id: i64) {
    for statement in statements {
        match &statement.binds {
            None => conn.execute_batch(&statement.sql).expect("batch"),
            Some(binds) => {
                let mut stmt = conn.prepare_cached(&statement.sql).expect("prepare");
                for (i, bind) in binds.iter().enumerate() {
                    stmt.raw_bind_parameter(i + 1, bind_value(bind, id))
                        .expect("bind");
                }
                read_rows(&mut stmt.raw_query());
            }
        }
    }
}

/// A batch of `rows` new users from id `from`, as `import_users` takes them.
fn import_batch(names: &[String], from: i64) -> Vec<NewUser<'_>> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| NewUser::new(from + i as i64, name).username(name))
        .collect()
}

/// `import_users` on rusqlite: the captured statements with the batch's values bound from the
/// rows (`created_at` the database's now, read first, as userbase does). Each captured `INSERT`
/// takes the next rows of the batch, as many as it has binds for; with `single`, the whole batch
/// goes in one `INSERT` of the same form instead (what one `prepare_cached` of the batch does).
fn replay_import(conn: &Connection, statements: &[Statement], batch: &[NewUser<'_>], single: bool) {
    conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
    let mut now = String::new();
    let mut rest = batch;
    let insert = |sql: &str, rows: &[NewUser<'_>], now: &str| {
        let mut stmt = conn.prepare_cached(sql).expect("prepare");
        let mut i = 1;
        for user in rows {
            let values = [
                Value::Integer(user.user_id),
                user.username
                    .map_or(Value::Null, |u| Value::Text(u.to_owned())),
                Value::Text(user.full_name.to_owned()),
                Value::Text(user.language.unwrap_or("en").to_owned()),
                Value::Integer(i64::from(user.active.unwrap_or(true))),
                user.logged_as
                    .map_or(Value::Null, |l| Value::Text(l.to_owned())),
                user.referrer_id.map_or(Value::Null, Value::Integer),
                Value::Text(now.to_owned()),
            ];
            for value in values {
                stmt.raw_bind_parameter(i, value).expect("bind");
                i += 1;
            }
        }
        assert_eq!(stmt.raw_execute().expect("insert"), rows.len());
    };
    for statement in statements {
        match &statement.binds {
            None => {}
            Some(binds) if binds.is_empty() => {
                let mut stmt = conn.prepare_cached(&statement.sql).expect("prepare");
                now = stmt.query_row([], |row| row.get(0)).expect("now");
            }
            Some(_) if single && rest.is_empty() => {}
            Some(_) if single => {
                let (head, _) = statement.sql.split_once(" VALUES ").expect("an INSERT");
                let rows = vec!["(?, ?, ?, ?, ?, ?, ?, ?)"; rest.len()].join(", ");
                insert(&format!("{head} VALUES {rows}"), rest, &now);
                rest = &[];
            }
            Some(binds) => {
                assert_eq!(binds.len() % 8, 0, "whole rows");
                let (rows, after) = rest.split_at(binds.len() / 8);
                insert(&statement.sql, rows, &now);
                rest = after;
            }
        }
    }
    assert!(rest.is_empty(), "every row of the batch inserted");
    conn.execute_batch("COMMIT").expect("commit");
}

type Op = Box<dyn Fn(&mut Repo<'_>, i64)>;

fn main() {
    let users: i64 = env_or("BENCH_USERS", 10_000);
    let locations: i64 = env_or("BENCH_LOCATIONS", 500);
    let seconds: f64 = env_or("BENCH_SECONDS", 1.0);
    let runs: usize = env_or("BENCH_RUNS", 5);
    let import_rows: usize = env_or("BENCH_IMPORT_ROWS", 1000);
    let analyze = env_or("BENCH_ANALYZE", 1) != 0;

    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("bench.sqlite3");
    let path = path.to_str().expect("utf-8 path").to_owned();
    let open_userbase = || {
        Database::new(
            Settings::from_lookup(|name| (name == "DATABASE_URL").then(|| path.clone()))
                .expect("settings"),
        )
        .expect("engine")
    };
    let open_rusqlite = || {
        let conn = Connection::open(&path).expect("rusqlite");
        conn.execute_batch(PRAGMAS).expect("pragmas");
        conn
    };
    // Migrations and the load each on a connection of their own, closed before measuring: both
    // sides measure on connections opened after the load. The connection that ran the
    // migrations and the one that loaded the rows start with different page caches, and with a
    // page cache shared by the process (SQLite built with SQLITE_ENABLE_MEMORY_MANAGEMENT) the
    // difference stays (BENCHMARKS.md, "The bundled build").
    open_userbase().run_pending_migrations().expect("migrate");
    open_rusqlite()
        .execute_batch(&dataset(users, locations, analyze))
        .expect("dataset");
    let db = open_userbase();
    let conn = open_rusqlite();

    let version: String = conn
        .query_row("SELECT sqlite_version()", [], |r| r.get(0))
        .expect("version");
    let mut options = conn
        .prepare("PRAGMA compile_options")
        .expect("compile_options");
    let options: Vec<String> = options
        .query_map([], |r| r.get(0))
        .expect("compile_options")
        .map(|o| o.expect("option"))
        .filter(|o: &String| {
            ["STAT4", "QPSG", "MEMORY_MANAGEMENT"]
                .iter()
                .any(|f| o.contains(f))
        })
        .collect();
    println!(
        "# userbase vs rusqlite on SQLite {version} ({}; {users} users, {locations} locations{}; \
         {runs} runs of {seconds} s, median (min-max))\n",
        if options.is_empty() {
            "no STAT4, QPSG or MEMORY_MANAGEMENT".to_owned()
        } else {
            options.join(", ")
        },
        if analyze { ", ANALYZEd" } else { "" },
    );

    let ops: Vec<(&str, i64, Op)> = vec![
        (
            "user by id",
            users,
            Box::new(|r, id| drop(r.user(id).unwrap())),
        ),
        (
            "users_by_location",
            locations,
            Box::new(|r, id| drop(r.users_by_location(id as i32).unwrap())),
        ),
        (
            "user_locations_with_username",
            users,
            Box::new(|r, id| drop(r.user_locations_with_username(id).unwrap())),
        ),
        (
            "count_user_locations",
            users,
            Box::new(|r, id| assert!(r.count_user_locations(id).unwrap() >= 0)),
        ),
        (
            "location_counts_by_user",
            users,
            Box::new(|r, _| drop(r.location_counts_by_user().unwrap())),
        ),
        (
            "location_counts_by_user_named",
            users,
            Box::new(|r, _| drop(r.location_counts_by_user_named().unwrap())),
        ),
        (
            "find_location_by_name",
            users,
            Box::new(|r, _| drop(r.find_location_by_name("Location 42").unwrap())),
        ),
        (
            "users_raw (raw SQL, all users)",
            users,
            Box::new(|r, _| drop(r.users_raw().unwrap())),
        ),
        (
            "users_with_locations (all users, 2 queries)",
            users,
            Box::new(|r, _| drop(r.users_with_locations().unwrap())),
        ),
        (
            "users_with_locations_page, 1000 users",
            users,
            Box::new(|r, _| drop(r.users_with_locations_page(None, 1000).unwrap())),
        ),
        (
            "user upsert (existing user)",
            users,
            Box::new(|r, id| {
                let name = format!("Full Name {id}");
                let new = NewUser::new(id, &name).username("seen-again");
                drop(r.upsert_user(&new).unwrap())
            }),
        ),
    ];

    println!("| operation | userbase ops/s | rusqlite ops/s | ratio |");
    println!("|---|---|---|---|");
    let fmt = |(median, min, max): (f64, f64, f64)| format!("{median:.0} ({min:.0}-{max:.0})");
    let row = |name: &str, ours: Vec<f64>, theirs: Vec<f64>| {
        let ratios: Vec<f64> = ours.iter().zip(&theirs).map(|(o, t)| o / t).collect();
        let (r, rmin, rmax) = stats(ratios);
        println!(
            "| {name} | {} | {} | {r:.2} ({rmin:.2}-{rmax:.2}) |",
            fmt(stats(ours)),
            fmt(stats(theirs))
        );
    };
    let wanted = support::picked_by("BENCH_ONLY");
    let mut session = db.session().expect("session");
    for (name, range, op) in ops.iter().filter(|(name, ..)| wanted(name)) {
        let statements = capture(&path, op.as_ref());
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        let (mut rng_ours, mut rng_theirs) =
            (Rng(0x9e37_79b9_7f4a_7c15), Rng(0x9e37_79b9_7f4a_7c15));
        for _ in 0..runs {
            let mut repo = session.repo();
            ours.push(rate(seconds, || op(&mut repo, rng_ours.below(*range))));
            theirs.push(rate(seconds, || {
                replay(&conn, &statements, rng_theirs.below(*range))
            }));
        }
        row(name, ours, theirs);
        if std::env::var("BENCH_SHOW_SQL").is_ok() {
            println!("\n```sql\n{statements:#?}\n```\n");
        }
    }

    // import_users: each operation adds `import_rows` new users (fresh ids every time).
    if !wanted("import_users") {
        return;
    }
    let names: Vec<String> = (0..import_rows).map(|i| format!("imported {i}")).collect();
    let statements = capture(&path, &|repo, _| {
        let batch = import_batch(&names, IMPORT_BASE - import_rows as i64);
        assert_eq!(repo.import_users(&batch).unwrap(), batch.len());
    });
    let inserts = statements
        .iter()
        .filter(|s| s.sql.starts_with("INSERT"))
        .count();
    // rusqlite on the very statements userbase sent, then on one statement for the whole batch.
    let mut next_ours = IMPORT_BASE;
    for (single, base) in [(false, 2), (true, 3)] {
        let mut next_theirs = IMPORT_BASE * base;
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for _ in 0..runs {
            let mut repo = session.repo();
            ours.push(rate(seconds, || {
                let batch = import_batch(&names, next_ours);
                next_ours += import_rows as i64;
                assert_eq!(repo.import_users(&batch).unwrap(), batch.len());
            }));
            theirs.push(rate(seconds, || {
                let batch = import_batch(&names, next_theirs);
                next_theirs += import_rows as i64;
                replay_import(&conn, &statements, &batch, single);
            }));
        }
        row(
            &if single {
                format!("import_users, {import_rows} rows a call (rusqlite: 1 INSERT)")
            } else {
                format!("import_users, {import_rows} rows a call ({inserts} INSERTs)")
            },
            ours,
            theirs,
        );
    }
}
