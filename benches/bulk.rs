//! Bulk data: `import_links` through `COPY` side by side with `psql \copy` into an empty
//! `userlocations`, the streaming import with and without a progress callback, the links export
//! against `psql \copy … TO`, and the peak memory and rate of importing millions of users from an
//! iterator (each in a child process of its own, its peak read from `/proc/self/status`
//! `VmHWM`).
//!
//! `cargo bench --bench bulk` (needs PostgreSQL and `psql`). Knobs: `BENCH_DATABASE_URL` (the
//! server; default `postgres://postgres@127.0.0.1:5432/postgres`), `BENCH_LINKS` (link counts,
//! default `1000000,3000000`), `BENCH_BULK_RUNS` (3), `BENCH_MEMORY_USERS` (5000000),
//! `BENCH_ONLY` (sections: `links,streamed,export,memory`; `streamed` adds the
//! `import_links_from` columns to `links`).

#[path = "support/mod.rs"]
mod support;

use std::io::Write as _;
use std::process::Command;
use std::time::Instant;

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};
use support::{env_or, picked_by, stats};
use userbase::bulk::{ExportOptions, ImportOptions, UserRecord};
use userbase::models::{NewLocation, NewUser, UserLocation};
use userbase::{Database, DbUrl, Secrets, Settings};

/// Users the links refer to; each gets `links / USERS` locations.
const USERS: usize = 100_000;

/// Set in the child process that measures one import's memory: `backend url users`.
const CHILD: &str = "USERBASE_BULK_BENCH_CHILD";

fn main() {
    if let Ok(spec) = std::env::var(CHILD) {
        memory_child(&spec);
        return;
    }
    let server: DbUrl = std::env::var("BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
        .parse()
        .expect("BENCH_DATABASE_URL");
    let wanted = picked_by("BENCH_ONLY");
    let mut admin = PgConnection::establish(&server.render(Secrets::Shown)).expect("connect");
    let name = format!("userbase_bulk_bench_{}", std::process::id());
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create");
    let url = server.clone().with_database(&name).unwrap();
    if wanted("links") || wanted("export") {
        links(&url, &wanted);
    }
    if wanted("memory") {
        memory(&server);
    }
    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .expect("drop");
}

fn pg_args(url: &DbUrl) -> Vec<String> {
    vec![
        "-h".into(),
        url.host().unwrap_or("127.0.0.1").into(),
        "-p".into(),
        url.port().unwrap_or(5432).to_string(),
        "-U".into(),
        url.username().unwrap_or("postgres").into(),
        "-X".into(),
        "-q".into(),
        "-v".into(),
        "ON_ERROR_STOP=1".into(),
        "-d".into(),
        url.database().unwrap_or("postgres").into(),
    ]
}

fn psql(url: &DbUrl, command: &str) {
    let out = Command::new("psql")
        .args(pg_args(url))
        .args(["-c", command])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Median (min-max) of rows/s figures; `-` when not measured.
fn rate(figures: Vec<f64>) -> String {
    if figures.is_empty() {
        return "-".to_owned();
    }
    let (median, min, max) = stats(figures);
    format!("{median:.0} ({min:.0}-{max:.0})")
}

/// Median (min-max) of ratios; `-` when not measured.
fn ratio(figures: Vec<f64>) -> String {
    if figures.is_empty() {
        return "-".to_owned();
    }
    let (median, min, max) = stats(figures);
    format!("{median:.2} ({min:.2}-{max:.2})")
}

fn links(url: &DbUrl, wanted: &dyn Fn(&str) -> bool) {
    let sizes: Vec<usize> = std::env::var("BENCH_LINKS")
        .unwrap_or_else(|_| "1000000,3000000".to_owned())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let runs: usize = env_or("BENCH_BULK_RUNS", 3);
    let db = Database::new(Settings::new(url.clone())).expect("engine");
    db.run_pending_migrations().expect("migrate");
    let names: Vec<String> = (1..=USERS).map(|i| format!("User {i}")).collect();
    let users: Vec<NewUser> = (0..USERS)
        .map(|i| NewUser::new(i as i64 + 1, &names[i]))
        .collect();
    db.session().unwrap().repo().copy_users(&users).unwrap();
    let most = sizes.iter().copied().max().unwrap_or(0).div_ceil(USERS);
    let location_names: Vec<String> = (1..=most).map(|i| format!("Location {i}")).collect();
    let locations: Vec<NewLocation> = location_names
        .iter()
        .map(|n| NewLocation::new(n, "Street"))
        .collect();
    db.session()
        .unwrap()
        .repo()
        .import_locations(&locations)
        .unwrap();
    let truncate = || {
        db.session()
            .unwrap()
            .connection()
            .batch_execute("TRUNCATE userlocations")
            .unwrap()
    };

    if wanted("links") {
        println!("## Links into an empty userlocations (rows/s; {runs} runs, alternating)\n");
        println!("| links | psql \\copy | import_links (COPY) | ratio | import_links_from | ratio | import_links_from + progress | progress on/off |");
        println!("|---|---|---|---|---|---|---|---|");
    }
    for &n in &sizes {
        let per_user = n.div_ceil(USERS);
        let links: Vec<UserLocation> = (0..n)
            .map(|i| UserLocation {
                user_id: (i / per_user) as i64 + 1,
                location_id: (i % per_user) as i32 + 1,
            })
            .collect();
        let csv = std::env::temp_dir().join(format!("userbase-links-{}.csv", std::process::id()));
        {
            let mut file = std::io::BufWriter::new(std::fs::File::create(&csv).unwrap());
            for l in &links {
                writeln!(file, "{},{}", l.location_id, l.user_id).unwrap();
            }
        }
        if wanted("links") {
            let timed = |f: &mut dyn FnMut()| {
                truncate();
                let started = Instant::now();
                f();
                let rate = n as f64 / started.elapsed().as_secs_f64();
                eprintln!("{n} links: {rate:.0} rows/s");
                rate
            };
            let (mut theirs, mut ours, mut streamed, mut progress) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let with_streamed = wanted("streamed");
            for _ in 0..runs {
                theirs.push(timed(&mut || {
                    psql(
                        url,
                        &format!(
                            "\\copy userlocations (location_id, user_id) FROM '{}' WITH (FORMAT csv)",
                            csv.display()
                        ),
                    )
                }));
                ours.push(timed(&mut || {
                    let made = db.session().unwrap().repo().import_links(&links).unwrap();
                    assert_eq!(made, n);
                }));
                if !with_streamed {
                    continue;
                }
                streamed.push(timed(&mut || {
                    let rows = links.iter().map(|l| Ok::<_, std::io::Error>(*l));
                    let imported = db
                        .session()
                        .unwrap()
                        .repo()
                        .import_links_from(rows, ImportOptions::default().batch_size(100_000))
                        .unwrap();
                    assert_eq!(imported.inserted, n as u64);
                }));
                progress.push(timed(&mut || {
                    let rows = links.iter().map(|l| Ok::<_, std::io::Error>(*l));
                    let mut reports = 0_u64;
                    let options = ImportOptions::default()
                        .batch_size(100_000)
                        .progress(|_| reports += 1);
                    let imported = db
                        .session()
                        .unwrap()
                        .repo()
                        .import_links_from(rows, options)
                        .unwrap();
                    assert_eq!(imported.inserted, n as u64);
                    assert!(reports >= 1);
                }));
            }
            let per_run = |ours: &[f64]| -> Vec<f64> {
                ours.iter().zip(&theirs).map(|(o, t)| o / t).collect()
            };
            let progress_cost: Vec<f64> =
                progress.iter().zip(&streamed).map(|(p, s)| p / s).collect();
            println!(
                "| {n} | {} | {} | {} | {} | {} | {} | {} |",
                rate(theirs.clone()),
                rate(ours.clone()),
                ratio(per_run(&ours)),
                rate(streamed.clone()),
                ratio(per_run(&streamed)),
                rate(progress.clone()),
                ratio(progress_cost),
            );
        }
        if wanted("export") {
            truncate();
            db.session().unwrap().repo().import_links(&links).unwrap();
            let (mut theirs, mut ours) = (Vec::new(), Vec::new());
            for _ in 0..runs {
                let started = Instant::now();
                psql(
                    url,
                    "\\copy (SELECT location_id, user_id FROM userlocations ORDER BY user_id, location_id) TO '/dev/null' WITH (FORMAT csv, HEADER)",
                );
                theirs.push(n as f64 / started.elapsed().as_secs_f64());
                let started = Instant::now();
                let exported = db
                    .session()
                    .unwrap()
                    .repo()
                    .export_links(std::io::sink(), ExportOptions::default().progress(|_| {}))
                    .unwrap();
                assert_eq!(exported.rows, n as u64);
                ours.push(n as f64 / started.elapsed().as_secs_f64());
            }
            let ratios: Vec<f64> = ours.iter().zip(&theirs).map(|(o, t)| o / t).collect();
            println!(
                "\nExport of {n} links (rows/s, {runs} runs): psql \\copy (SELECT … ORDER BY) TO /dev/null {}, export_links to a sink {}, ratio {}\n",
                rate(theirs),
                rate(ours),
                ratio(ratios)
            );
        }
        let _ = std::fs::remove_file(&csv);
    }
    truncate();
}

/// Starts one child process a backend to import users from an iterator; prints its figures.
fn memory(server: &DbUrl) {
    let users: u64 = env_or("BENCH_MEMORY_USERS", 5_000_000);
    println!("\n## {users} users from an iterator (one child process each, default options)\n");
    println!("| backend | rows/s | peak resident (VmHWM) |");
    println!("|---|---|---|");
    let mut admin = PgConnection::establish(&server.render(Secrets::Shown)).expect("connect");
    let name = format!("userbase_bulk_memory_{}", std::process::id());
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create");
    let pg = server.clone().with_database(&name).unwrap();
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = DbUrl::sqlite(dir.path().join("memory.sqlite3").to_str().expect("path")).unwrap();
    for (backend, url) in [("PostgreSQL", pg), ("SQLite", sqlite)] {
        let out = Command::new(std::env::current_exe().expect("exe"))
            .env(CHILD, format!("{users} {}", url.render(Secrets::Shown)))
            .output()
            .expect("run child");
        assert!(
            out.status.success(),
            "child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let figures = String::from_utf8_lossy(&out.stdout);
        let mut parts = figures.split_whitespace();
        let (rate, peak) = (parts.next().unwrap_or("?"), parts.next().unwrap_or("?"));
        println!("| {backend} | {rate} | {peak} |");
    }
    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .expect("drop");
}

/// The child: imports `users` generated users into `url` from an iterator; prints rows/s and
/// the peak resident memory.
fn memory_child(spec: &str) {
    let (users, url) = spec.split_once(' ').expect("spec");
    let users: i64 = users.parse().expect("users");
    let db = Database::new(Settings::new(url.parse().expect("url"))).expect("engine");
    db.run_pending_migrations().expect("migrate");
    let created = chrono::NaiveDate::from_ymd_opt(2024, 6, 19)
        .and_then(|d| d.and_hms_opt(2, 45, 14))
        .expect("date");
    // Every tenth user is referred by the user before it; a row's text is made when it is read.
    let rows = (1..=users).map(|id| {
        Ok::<_, std::io::Error>(UserRecord {
            user_id: id,
            username: Some(format!("user{id}")),
            full_name: format!("Full Name {id}"),
            language: Some("en".to_owned()),
            referrer_id: (id % 10 == 0).then_some(id - 1),
            created_at: Some(created),
            ..UserRecord::default()
        })
    });
    let started = Instant::now();
    let mut last = 0;
    let options = ImportOptions::default().progress(|p| last = p.rows);
    let imported = db
        .session()
        .unwrap()
        .repo()
        .import_users_from(rows, options)
        .unwrap();
    let rate = imported.rows as f64 / started.elapsed().as_secs_f64();
    assert_eq!((imported.inserted, last), (users as u64, users as u64));
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let peak_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(f64::NAN);
    println!("{rate:.0} {:.1}MiB", peak_kib / 1024.0);
}
