//! userbase against the libpq limit, side by side in one run.
//!
//! `cargo bench --bench compare` against the PostgreSQL named by `BENCH_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`): creates a scratch database, runs the
//! migrations, loads `benches/data/dataset.sql` (or `BENCH_DATASET`) with `psql -v users=…
//! -v locations=…`, then measures every Repo operation through userbase and through
//! `pgbench -M prepared -n` running the very SQL userbase sent (captured with `echo`), bulk loads
//! against `psql \copy`, and 16 threads on a 5 + 10 pool against `pgbench -c 15 -j 2`.
//!
//! Knobs (environment): `BENCH_USERS` (10000), `BENCH_LOCATIONS` (500), `BENCH_SECONDS` per
//! measurement (2), `BENCH_RUNS` (5), `BENCH_BULK` row counts (`100000,1000000`),
//! `BENCH_BULK_RUNS` (3), `BENCH_ONLY` (sections: `queries,threaded,engine,bulk`), `BENCH_OPS`
//! (run only the Repo operations whose name contains one of its comma-separated parts). Prints a
//! Markdown table: medians, (min-max) over the runs, and ratios.

use std::fmt::Write as _;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/libpq.rs"]
mod libpq;
mod support;

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};
use support::{env_or, stats, Rng};
use userbase::models::NewUser;
use userbase::{Database, DbUrl, PoolConfig, Secrets, Settings};

struct Bench {
    url: DbUrl,
    users: i64,
    locations: i64,
    seconds: f64,
    runs: usize,
}

fn fmt_rate((median, min, max): (f64, f64, f64)) -> String {
    format!("{median:.0} ({min:.0}-{max:.0})")
}

/// `psql`/`pgbench` connection arguments for `url`.
fn pg_args(url: &DbUrl) -> Vec<String> {
    vec![
        "-h".into(),
        url.host().unwrap_or("127.0.0.1").into(),
        "-p".into(),
        url.port().unwrap_or(5432).to_string(),
        "-U".into(),
        url.username().unwrap_or("postgres").into(),
    ]
}

fn psql(url: &DbUrl, extra: &[&str]) {
    let out = Command::new("psql")
        .args(pg_args(url))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(url.database().unwrap_or("postgres"))
        .args(extra)
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a pgbench script; returns transactions per second.
fn pgbench(url: &DbUrl, script: &str, clients: u32, threads: u32, seconds: f64) -> f64 {
    let path = std::env::temp_dir().join(format!("userbase-bench-{}.sql", std::process::id()));
    std::fs::write(&path, script).expect("write the pgbench script");
    let out = Command::new("pgbench")
        .args(pg_args(url))
        .args([
            "-M",
            "prepared",
            "-n",
            "-c",
            &clients.to_string(),
            "-j",
            &threads.to_string(),
        ])
        .args(["-T", &format!("{}", seconds.ceil() as u64), "-f"])
        .arg(&path)
        .arg(url.database().unwrap_or("postgres"))
        .output()
        .expect("run pgbench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench failed: {}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("pgbench printed tps")
}

/// Operations per second of `op` over `seconds`.
fn rate(seconds: f64, mut op: impl FnMut()) -> f64 {
    let started = Instant::now();
    let mut n = 0_u64;
    while started.elapsed().as_secs_f64() < seconds {
        for _ in 0..16 {
            op();
        }
        n += 16;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// The statements (SQL, binds) userbase sends for `op`, captured through `echo`.
fn capture(url: &DbUrl, op: &dyn Fn(&Database, i64)) -> Vec<(String, Vec<String>)> {
    let pool = PoolConfig::default().with_echo(true);
    let db = Database::new(Settings::new(url.clone()).with_pool(pool)).expect("engine");
    // The pool's own first-checkout statements (its pooler probe) are not the operation's.
    drop(db.session().expect("first checkout"));
    let log = common::Captured::run(tracing::Level::INFO, || op(&db, CAPTURE_ID));
    log.lines()
        .filter_map(|line| line.split_once("userbase::sql: ").map(|(_, rest)| rest))
        .filter_map(|rest| {
            let (sql, rest) = rest.split_once(" -- binds: [")?;
            let (binds, _) = rest.rsplit_once("] elapsed_us=")?;
            Some((sql.to_owned(), split_binds(binds)))
        })
        .collect()
}

/// The id userbase is given while its SQL is captured: pgbench draws this bind at random.
const CAPTURE_ID: i64 = 4242;

fn split_binds(binds: &str) -> Vec<String> {
    if binds.is_empty() {
        return Vec::new();
    }
    if binds.starts_with('[') {
        // One array bind (`= ANY($1)`).
        return vec![binds.to_owned()];
    }
    binds.split(", ").map(str::to_owned).collect()
}

/// A pgbench script running the captured statements, each bind a variable: the captured id
/// becomes `random(1, id_range)`, other numbers stay, strings and arrays become literals.
fn pgbench_script(statements: &[(String, Vec<String>)], id_range: i64) -> String {
    let mut script = String::new();
    for (s, (sql, binds)) in statements.iter().enumerate() {
        let mut sql = sql.clone();
        for (i, bind) in binds.iter().enumerate().rev() {
            let placeholder = format!("${}", i + 1);
            let var = format!("p{s}_{i}");
            let value = bind
                .strip_prefix("Some(")
                .and_then(|b| b.strip_suffix(')'))
                .unwrap_or(bind);
            let replacement = if value == CAPTURE_ID.to_string() {
                let _ = writeln!(script, "\\set {var} random(1, {id_range})");
                format!(":{var}")
            } else if value.parse::<i64>().is_ok() {
                let _ = writeln!(script, "\\set {var} {value}");
                format!(":{var}")
            } else if value == "None" {
                "NULL".to_owned()
            } else if let Some(items) = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
                format!("'{{{}}}'", items.replace(' ', ""))
            } else {
                format!("'{}'", value.trim_matches('"').replace('\'', "''"))
            };
            sql = sql.replace(&placeholder, &replacement);
        }
        let _ = writeln!(script, "{sql};");
    }
    script
}

type Op = Box<dyn Fn(&Database, i64) + Sync>;

/// The point query every section measures: `user` by id, a session checked out for it.
fn point_query(db: &Database, id: i64) {
    drop(db.session().unwrap().repo().user(id).unwrap());
}

fn main() {
    let server = DbUrl::parse(
        &std::env::var("BENCH_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned()),
    )
    .expect("BENCH_DATABASE_URL");
    let dataset = std::env::var("BENCH_DATASET").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/benches/data/dataset.sql").to_owned()
    });
    let name = format!("userbase_bench_{}", std::process::id());
    let mut admin = PgConnection::establish(&server.render(Secrets::Shown)).expect("connect");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create");
    let bench = Bench {
        url: server.clone().with_database(&name).unwrap(),
        users: env_or("BENCH_USERS", 10_000),
        locations: env_or("BENCH_LOCATIONS", 500),
        seconds: env_or("BENCH_SECONDS", 2.0),
        runs: env_or("BENCH_RUNS", 5),
    };
    Database::new(Settings::new(bench.url.clone()))
        .and_then(|db| db.run_pending_migrations())
        .expect("migrate");
    psql(
        &bench.url,
        &[
            "-v",
            &format!("users={}", bench.users),
            "-v",
            &format!("locations={}", bench.locations),
            "-f",
            &dataset,
        ],
    );

    println!(
        "# userbase vs libpq ({} users, {} locations; {} runs of {} s; median (min-max))\n",
        bench.users, bench.locations, bench.runs, bench.seconds
    );
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let wanted = |section: &str| only.is_empty() || only.split(',').any(|s| s.trim() == section);
    if wanted("queries") {
        queries(&bench);
    }
    if wanted("threaded") {
        threaded(&bench);
    }
    if wanted("engine") {
        engine_variants(&bench);
    }
    if wanted("bulk") {
        bulk(&bench, &server);
    }

    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .expect("drop");
}

fn queries(bench: &Bench) {
    let users = bench.users;
    let locations = bench.locations;
    let ops: Vec<(&str, i64, Op)> = vec![
        ("user by id", users, Box::new(point_query)),
        (
            "users_by_location",
            locations,
            Box::new(|db, id| {
                drop(
                    db.session()
                        .unwrap()
                        .repo()
                        .users_by_location(id as i32)
                        .unwrap(),
                )
            }),
        ),
        (
            "user_locations_with_username",
            users,
            Box::new(|db, id| {
                drop(
                    db.session()
                        .unwrap()
                        .repo()
                        .user_locations_with_username(id)
                        .unwrap(),
                )
            }),
        ),
        (
            "count_user_locations",
            users,
            Box::new(|db, id| {
                let count = db.session().unwrap().repo().count_user_locations(id);
                assert!(count.unwrap() >= 0);
            }),
        ),
        (
            "location_counts_by_user",
            users,
            Box::new(|db, _| {
                drop(
                    db.session()
                        .unwrap()
                        .repo()
                        .location_counts_by_user()
                        .unwrap(),
                )
            }),
        ),
        (
            "location_counts_by_user_named",
            users,
            Box::new(|db, _| {
                drop(
                    db.session()
                        .unwrap()
                        .repo()
                        .location_counts_by_user_named()
                        .unwrap(),
                )
            }),
        ),
        (
            "users_with_locations, 1000 users (2 queries)",
            users,
            Box::new(|db, _| {
                drop(
                    db.session()
                        .unwrap()
                        .repo()
                        .users_with_locations_page(None, 1000)
                        .unwrap(),
                )
            }),
        ),
        (
            "user upsert (existing user)",
            users,
            Box::new(|db, id| {
                let name = format!("Full Name {id}");
                let new = NewUser::new(id, &name).username("seen-again");
                drop(db.session().unwrap().repo().upsert_user(&new).unwrap())
            }),
        ),
    ];
    println!("## Repo operations (one thread, a session checked out per operation, pre_ping on)\n");
    println!(
        "| operation | userbase ops/s | pgbench ops/s | ratio | libpq + decoding ops/s | ratio |"
    );
    println!("|---|---|---|---|---|---|");
    let db = Database::new(Settings::new(bench.url.clone())).expect("engine");
    let picked = support::picked_by("BENCH_OPS");
    for (name, range, op) in ops.iter().filter(|(name, ..)| picked(name)) {
        let statements = capture(&bench.url, op.as_ref());
        let script = pgbench_script(&statements, *range);
        let mut decoding =
            libpq::Libpq::new(&bench.url.render(Secrets::Shown), &statements, CAPTURE_ID);
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        let mut decoded = Vec::new();
        let (mut rng, mut rng_decoding) = (Rng(0x9e37_79b9_7f4a_7c15), Rng(0x9e37_79b9_7f4a_7c15));
        for _ in 0..bench.runs {
            ours.push(rate(bench.seconds, || op(&db, rng.below(*range))));
            theirs.push(pgbench(&bench.url, &script, 1, 1, bench.seconds));
            decoded.push(rate(bench.seconds, || {
                std::hint::black_box(decoding.run(rng_decoding.below(*range)));
            }));
        }
        let (o, t, d) = (stats(ours), stats(theirs), stats(decoded));
        println!(
            "| {name} | {} | {} | {:.2} | {} | {:.2} |",
            fmt_rate(o),
            fmt_rate(t),
            o.0 / t.0,
            fmt_rate(d),
            o.0 / d.0
        );
        if std::env::var("BENCH_SHOW_SQL").is_ok() {
            println!("\n```sql\n{script}```\n");
        }
    }
    println!();
}

/// Total ops/s of `threads` threads each running `op` for `seconds`.
fn threads_rate(
    threads: u64,
    seconds: f64,
    op: impl Fn(&mut Rng) + Send + Sync + Clone + 'static,
) -> f64 {
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let op = op.clone();
            thread::spawn(move || {
                let mut rng = Rng(0x1234_5678 + t);
                rate(seconds, || op(&mut rng))
            })
        })
        .collect();
    workers.into_iter().map(|w| w.join().expect("worker")).sum()
}

/// Server sessions opened so far in the benchmark database (`pg_stat_database.sessions`).
fn sessions_opened(url: &DbUrl) -> i64 {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct Sessions {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = PgConnection::establish(&url.render(Secrets::Shown)).expect("connect");
    diesel::sql_query(
        "SELECT sessions AS n FROM pg_stat_database WHERE datname = current_database()",
    )
    .get_result::<Sessions>(&mut conn)
    .expect("pg_stat_database")
    .n
}

fn threaded(bench: &Bench) {
    let engine = |pool_size, max_overflow, overflow_idle_timeout| {
        let pool = PoolConfig::default()
            .with_pool_size(pool_size)
            .with_max_overflow(max_overflow)
            .with_overflow_idle_timeout(overflow_idle_timeout);
        Database::new(Settings::new(bench.url.clone()).with_pool(pool)).expect("engine")
    };
    let statements = capture(&bench.url, &point_query);
    let script = pgbench_script(&statements, bench.users);
    let users = bench.users;
    let point = |db: Database| move |rng: &mut Rng| point_query(&db, rng.below(users));
    // The 16-thread case on the default pool with SQLAlchemy's immediate overflow close
    // (before `overflow_idle_timeout`), with shorter timeouts and with the default; then a 15 + 0
    // pool (same limit, nothing above pool_size) and 16 threads each holding one session of a
    // 16-connection pool (no pool traffic at all).
    let default_timeout = PoolConfig::default().overflow_idle_timeout;
    let ms = |ms| Duration::from_millis(ms);
    let pools = [
        engine(5, 10, Duration::ZERO),
        engine(5, 10, ms(10)),
        engine(5, 10, ms(100)),
        engine(5, 10, default_timeout),
        engine(15, 0, default_timeout),
    ];
    let held_db = engine(16, 0, default_timeout);
    let mut samples: Vec<(Vec<f64>, i64)> = vec![(Vec::new(), 0); pools.len() + 1];
    let mut theirs = Vec::new();
    for _ in 0..bench.runs {
        for (i, db) in pools.iter().enumerate() {
            // Warm up: the connections a pool opens for the first burst (and after its
            // overflow idle timeout closed them while the other cases ran) are not churn.
            threads_rate(16, 0.3, point(db.clone()));
            let before = sessions_opened(&bench.url);
            samples[i]
                .0
                .push(threads_rate(16, bench.seconds, point(db.clone())));
            samples[i].1 += sessions_opened(&bench.url) - before - 1;
        }
        let held_sessions = Arc::new(Mutex::new(
            (0..16)
                .map(|_| held_db.session().expect("session"))
                .collect::<Vec<_>>(),
        ));
        let before = sessions_opened(&bench.url);
        samples[pools.len()].0.push(threads_rate(16, bench.seconds, {
            let sessions = held_sessions.clone();
            move |rng: &mut Rng| {
                thread_local!(static SESSION: std::cell::RefCell<Option<userbase::Session>> = const { std::cell::RefCell::new(None) });
                SESSION.with(|cell| {
                    let mut slot = cell.borrow_mut();
                    let session = slot.get_or_insert_with(|| sessions.lock().expect("lock").pop().expect("a session"));
                    drop(session.repo().user(rng.below(users)).unwrap());
                })
            }
        }));
        samples[pools.len()].1 += sessions_opened(&bench.url) - before - 1;
        theirs.push(pgbench(&bench.url, &script, 15, 2, bench.seconds));
    }
    let t = stats(theirs);
    println!("## Concurrency: point queries, 16 threads vs pgbench -c 15 -j 2\n");
    println!("| case | userbase ops/s | connections opened per second | vs 15 + 0 pool (paired per run) | pgbench ops/s | vs pgbench |\n|---|---|---|---|---|---|");
    let default_name = format!(
        "5 + 10 pool (default), overflow_idle_timeout {} ms (default)",
        default_timeout.as_millis()
    );
    let names = [
        "5 + 10 pool, overflow_idle_timeout 0 (SQLAlchemy's immediate close; before)",
        "5 + 10 pool, overflow_idle_timeout 10 ms",
        "5 + 10 pool, overflow_idle_timeout 100 ms",
        default_name.as_str(),
        "15 + 0 pool",
        "(diagnostic) each thread holding a session",
    ];
    let fifteen_runs = samples[4].0.clone();
    for (name, (sample, opened)) in names.iter().zip(samples) {
        // Each run measures every case back to back: the ratio to the 15 + 0 pool is taken
        // per run (paired), then summarised.
        let paired = stats(
            sample
                .iter()
                .zip(&fifteen_runs)
                .map(|(o, f)| o / f)
                .collect(),
        );
        let o = stats(sample);
        let per_second = opened as f64 / (bench.runs as f64 * bench.seconds);
        println!(
            "| {name} | {} | {per_second:.1} | {:.2} ({:.2}-{:.2}) | {} | {:.2} ({:.2}-{:.2}) |",
            fmt_rate(o),
            paired.0,
            paired.1,
            paired.2,
            fmt_rate(t),
            o.0 / t.0,
            o.1 / t.2,
            o.2 / t.1,
        );
    }
    println!();
}

fn engine_variants(bench: &Bench) {
    let engine = |pre_ping| {
        let pool = PoolConfig::default().with_pre_ping(pre_ping);
        Database::new(Settings::new(bench.url.clone()).with_pool(pool)).expect("engine")
    };
    let (on, off) = (engine(true), engine(false));
    let held_db = engine(false);
    let mut held = held_db.session().expect("session");
    let statements = capture(&bench.url, &point_query);
    let script = pgbench_script(&statements, bench.users);
    let mut samples = vec![Vec::new(); 4];
    let mut rng = Rng(42);
    for _ in 0..bench.runs {
        samples[0].push(rate(bench.seconds, || {
            point_query(&on, rng.below(bench.users))
        }));
        samples[1].push(rate(bench.seconds, || {
            point_query(&off, rng.below(bench.users))
        }));
        samples[2].push(rate(bench.seconds, || {
            drop(held.repo().user(rng.below(bench.users)).unwrap())
        }));
        samples[3].push(pgbench(&bench.url, &script, 1, 1, bench.seconds));
    }
    let s: Vec<_> = samples.into_iter().map(stats).collect();
    println!("## Engine: user by id, one thread\n");
    println!("| variant | ops/s | vs pgbench |\n|---|---|---|");
    for (name, st) in [
        "checkout per op, pre_ping on",
        "checkout per op, pre_ping off",
        "one held session",
        "pgbench -c 1",
    ]
    .iter()
    .zip(&s)
    {
        println!("| {name} | {} | {:.2} |", fmt_rate(*st), st.0 / s[3].0);
    }
    println!(
        "\npre_ping on costs {:+.1} % time per op over off; checkout costs {:+.1} % over a held session.\n",
        (s[1].0 / s[0].0 - 1.0) * 100.0,
        (s[2].0 / s[1].0 - 1.0) * 100.0
    );
}

fn bulk(bench: &Bench, server: &DbUrl) {
    let sizes: Vec<usize> = std::env::var("BENCH_BULK")
        .unwrap_or_else(|_| "100000,1000000".to_owned())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let runs: usize = env_or("BENCH_BULK_RUNS", 3);
    let name = format!("{}_bulk", bench.url.database().unwrap_or("userbase_bench"));
    let mut admin = PgConnection::establish(&server.render(Secrets::Shown)).expect("connect");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create");
    let url = server.clone().with_database(&name).unwrap();
    let db = Database::new(Settings::new(url.clone())).expect("engine");
    db.run_pending_migrations().expect("migrate");
    let created = chrono::NaiveDate::from_ymd_opt(2024, 6, 19)
        .and_then(|d| d.and_hms_opt(2, 45, 14))
        .expect("date");

    println!("## Bulk load of users (rows/s; {runs} runs)\n");
    println!("| rows | COPY (copy_users) | chunked INSERT (import_users) | psql \\copy | COPY ratio | SQLite file (import_users) |");
    println!("|---|---|---|---|---|---|");
    for n in sizes {
        let names: Vec<String> = (1..=n).map(|i| format!("Full Name {i}")).collect();
        let handles: Vec<String> = (1..=n).map(|i| format!("user{i}")).collect();
        let users: Vec<NewUser> = (0..n)
            .map(|i| {
                NewUser::new(i as i64 + 1, &names[i])
                    .username(&handles[i])
                    .language("en")
                    .created_at(created)
            })
            .collect();
        let csv = std::env::temp_dir().join(format!("userbase-bench-{}.csv", std::process::id()));
        let mut text = String::with_capacity(n * 64);
        for i in 0..n {
            let _ = writeln!(
                text,
                "{},{},{},en,t,,,2024-06-19 02:45:14",
                i + 1,
                handles[i],
                names[i]
            );
        }
        std::fs::write(&csv, text).expect("write csv");
        let truncate = || {
            db.session()
                .unwrap()
                .connection()
                .batch_execute("TRUNCATE userlocations, users CASCADE")
                .unwrap()
        };
        let timed = |f: &mut dyn FnMut()| {
            truncate();
            let started = Instant::now();
            f();
            n as f64 / started.elapsed().as_secs_f64()
        };
        let (mut copy, mut insert, mut psql_copy) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            copy.push(timed(&mut || {
                assert_eq!(db.session().unwrap().repo().copy_users(&users).unwrap(), n)
            }));
            insert.push(timed(&mut || {
                assert_eq!(
                    db.session().unwrap().repo().import_users(&users).unwrap(),
                    n
                )
            }));
            psql_copy.push(timed(&mut || {
                psql(
                    &url,
                    &[
                        "-c",
                        &format!(
                            "\\copy users ({}) FROM '{}' WITH (FORMAT csv)",
                            userbase::models::user::USER_COLUMNS,
                            csv.display()
                        ),
                    ],
                )
            }));
        }
        // Correctness of the last load (psql's) is psql's; check ours once more.
        truncate();
        db.session().unwrap().repo().copy_users(&users).unwrap();
        let mut session = db.session().unwrap();
        let last = session.repo().users_page(Some(n as i64 - 1), 5).unwrap();
        assert_eq!(last.len(), 1);
        assert_eq!(
            (last[0].full_name.as_str(), last[0].username.as_deref()),
            (names[n - 1].as_str(), Some(handles[n - 1].as_str()))
        );
        drop(session);
        // The same import into an SQLite file.
        let dir = tempfile::tempdir().expect("temp dir");
        let sqlite = Database::new(Settings::new(
            DbUrl::sqlite(dir.path().join("bulk.sqlite3").to_str().expect("path")).unwrap(),
        ))
        .expect("sqlite");
        sqlite.run_pending_migrations().expect("migrate sqlite");
        let started = Instant::now();
        assert_eq!(
            sqlite
                .session()
                .unwrap()
                .repo()
                .import_users(&users)
                .unwrap(),
            n
        );
        let sqlite_rate = n as f64 / started.elapsed().as_secs_f64();
        let count = sqlite
            .session()
            .unwrap()
            .repo()
            .users_page(Some(n as i64 - 3), 10)
            .unwrap()
            .len();
        assert_eq!(count, 3);
        let (c, i, p) = (stats(copy), stats(insert), stats(psql_copy));
        println!(
            "| {n} | {} | {} | {} | {:.2} | {sqlite_rate:.0} (1 run) |",
            fmt_rate(c),
            fmt_rate(i),
            fmt_rate(p),
            c.0 / p.0
        );
        let _ = std::fs::remove_file(&csv);
    }
    drop(db);
    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .expect("drop");
}
