//! What the metrics and spans cost: the point query and 16 threads, with no recorder and with
//! the Prometheus recorder, side by side with the same query through Diesel alone, in one run.
//!
//! `cargo bench --bench metrics`: on SQLite (a scratch file) and on PostgreSQL (a scratch
//! database on the test server, as the tests find it; `BENCH_BACKENDS=sqlite` skips it), loads
//! `BENCH_USERS` users (10000), then measures, interleaved run after run:
//!
//! - **baseline**: the query `Repo::user` sends, built by the same fragment and run by Diesel
//!   alone on a connection of its own (no pool, no statement watch, no span, no clock, no
//!   metrics): for the 16 threads, one such connection per thread, so no checkout either;
//! - **no recorder**: `Repo::user` on an engine made with no recorder installed;
//! - **Prometheus**: `Repo::user` on an engine made with `metrics-exporter-prometheus`'s recorder
//!   in force (installed per thread, the handles the engine takes are the recorder's).
//!
//! Point query: one held session per mode, `user(id)` for random ids, the modes alternating in
//! batches of 128 calls. 16 threads: each checks a session out of a 5 + 10 pool and runs
//! `user(id)`, in a loop, all threads switching mode together every 50 ms. Interleaving this
//! finely lets a change of the machine's load reach every mode alike. Knobs: `BENCH_SECONDS` per measurement
//! (1), `BENCH_RUNS` (5), `BENCH_USERS`, `BENCH_BACKENDS` (`sqlite,postgres`). Prints medians
//! with (min-max), and the ratio to the baseline per run as median (min-max).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use metrics_exporter_prometheus::PrometheusBuilder;
use support::{env_or, stats, Rng};
use userbase::models::{user, NewUser, User};
use userbase::{AnyConnection, Backend, Database, PoolConfig, Secrets, Settings};

/// The user with id `id` through Diesel alone, on the connection a session holds.
fn baseline(conn: &mut AnyConnection, id: i64) -> User {
    match conn {
        AnyConnection::Pg(c) => user::by_id(id).first(c),
        AnyConnection::Sqlite(c) => user::by_id(id).first(c),
    }
    .expect("baseline query")
}

/// How a measurement runs the point query.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Baseline,
    NoRecorder,
    Prometheus,
}

const MODES: [Mode; 3] = [Mode::Baseline, Mode::NoRecorder, Mode::Prometheus];

struct Engines {
    /// The URL the baseline's own connections open.
    target: (Backend, String),
    plain: Database,
    recorded: Database,
    users: i64,
}

impl Engines {
    /// A connection of the baseline's own, outside any pool (no statement watch).
    fn own(&self) -> AnyConnection {
        AnyConnection::open(self.target.0, &self.target.1).expect("the baseline's connection")
    }

    fn engine(&self, mode: Mode) -> &Database {
        match mode {
            Mode::Prometheus => &self.recorded,
            _ => &self.plain,
        }
    }

    /// One session per mode held; `seconds` of point queries in each mode, in alternating
    /// batches of 128 (so a change of the machine's load reaches every mode alike); operations
    /// per second of each mode.
    fn point(&self, seconds: f64, rng: &mut Rng) -> [f64; 3] {
        let mut own = self.own();
        let mut sessions: Vec<_> = MODES
            .iter()
            .map(|mode| self.engine(*mode).session().expect("session"))
            .collect();
        let users = self.users;
        let mut spent = [Duration::ZERO; 3];
        let mut done = [0_u64; 3];
        while spent.iter().sum::<Duration>().as_secs_f64() < 3.0 * seconds {
            for (index, mode) in MODES.iter().enumerate() {
                let session = &mut sessions[index];
                let start = Instant::now();
                match mode {
                    Mode::Baseline => {
                        for _ in 0..128 {
                            drop(baseline(&mut own, rng.below(users)));
                        }
                    }
                    _ => {
                        let mut repo = session.repo();
                        for _ in 0..128 {
                            drop(repo.user(rng.below(users)).expect("user"));
                        }
                    }
                }
                spent[index] += start.elapsed();
                done[index] += 128;
            }
        }
        [0, 1, 2].map(|i| done[i] as f64 / spent[i].as_secs_f64())
    }

    /// 16 threads, each a checkout and a point query per operation, every mode in turn for
    /// slices of 50 ms (all threads in the same mode at once) for `seconds` each; total
    /// operations per second of each mode.
    fn threads(&self, seconds: f64) -> [f64; 3] {
        let users = self.users;
        let slice = Duration::from_millis(50);
        let cycles = ((seconds / slice.as_secs_f64()).ceil() as usize).max(1);
        let barrier = Barrier::new(16);
        let per_thread: Vec<[(u64, Duration); 3]> = thread::scope(|scope| {
            let workers: Vec<_> = (0..16_u64)
                .map(|t| {
                    let barrier = &barrier;
                    scope.spawn(move || {
                        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t + 1));
                        let mut own = self.own();
                        let mut figures = [(0_u64, Duration::ZERO); 3];
                        for _ in 0..cycles {
                            for (index, mode) in MODES.iter().enumerate() {
                                let db = self.engine(*mode);
                                barrier.wait();
                                let start = Instant::now();
                                while start.elapsed() < slice {
                                    let id = rng.below(users);
                                    match mode {
                                        Mode::Baseline => drop(baseline(&mut own, id)),
                                        _ => {
                                            let mut session = db.session().expect("session");
                                            drop(session.repo().user(id).expect("user"))
                                        }
                                    }
                                    figures[index].0 += 1;
                                }
                                figures[index].1 += start.elapsed();
                            }
                        }
                        figures
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("worker"))
                .collect()
        });
        [0, 1, 2].map(|i| {
            let ops: u64 = per_thread.iter().map(|f| f[i].0).sum();
            let time: f64 = per_thread.iter().map(|f| f[i].1.as_secs_f64()).sum::<f64>() / 16.0;
            ops as f64 / time
        })
    }
}

fn bench(backend: Backend, seconds: f64, runs: usize, users: i64) {
    let test = common::TestDb::new(backend);
    let settings = || Settings::new(test.url.clone()).with_pool(PoolConfig::default());
    let loader = Database::new(settings()).expect("engine");
    let names: Vec<String> = (1..=users).map(|i| format!("User {i}")).collect();
    let batch: Vec<NewUser<'_>> = names
        .iter()
        .zip(1..)
        .map(|(name, id)| NewUser::new(id, name))
        .collect();
    loader
        .transaction(|repo| repo.import_users(&batch))
        .expect("load the users");
    drop(loader);

    let recorder = PrometheusBuilder::new().build_recorder();
    let engines = Engines {
        target: (backend, test.url.render(Secrets::Shown)),
        plain: Database::new(settings().with_pool(PoolConfig::default().with_pool_name("plain")))
            .expect("engine"),
        recorded: metrics::with_local_recorder(&recorder, || {
            Database::new(settings().with_pool(PoolConfig::default().with_pool_name("recorded")))
                .expect("engine")
        }),
        users,
    };

    println!("\n## {backend} ({users} users; {runs} runs of {seconds} s, median (min-max))\n");
    println!("| case | baseline ops/s | no recorder ops/s | Prometheus ops/s | no recorder / baseline | Prometheus / baseline | Prometheus / no recorder |");
    println!("|---|---|---|---|---|---|---|");
    let fmt = |(median, min, max): (f64, f64, f64)| format!("{median:.0} ({min:.0}-{max:.0})");
    let ratio = |a: &[f64], b: &[f64]| {
        let (r, min, max) = stats(a.iter().zip(b).map(|(a, b)| a / b).collect());
        format!("{r:.3} ({min:.3}-{max:.3})")
    };
    let row = |name: &str, figures: &[Vec<f64>; 3]| {
        let [base, plain, prom] = figures;
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} |",
            fmt(stats(base.clone())),
            fmt(stats(plain.clone())),
            fmt(stats(prom.clone())),
            ratio(plain, base),
            ratio(prom, base),
            ratio(prom, plain),
        );
    };

    // Warm both engines (connections, statement caches, the recorder's handles) with the
    // recorder in force on this thread and on the workers, so the recorded engine's handles
    // are the recorder's; the measurements then need no thread-local recorder.
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    metrics::with_local_recorder(&recorder, || {
        engines.point(0.05, &mut rng);
    });
    let mut point: [Vec<f64>; 3] = Default::default();
    let mut threaded: [Vec<f64>; 3] = Default::default();
    for _ in 0..runs {
        for (all, one) in point.iter_mut().zip(engines.point(seconds, &mut rng)) {
            all.push(one);
        }
    }
    row("point query (`user(id)`, one held session)", &point);
    for _ in 0..runs {
        for (all, one) in threaded.iter_mut().zip(engines.threads(seconds)) {
            all.push(one);
        }
    }
    row("16 threads, checkout + `user(id)`, pool 5 + 10", &threaded);
    // The recorder saw the operations: the figures above are not of a no-op.
    let handle = recorder.handle();
    let scrape = handle.render();
    assert!(
        scrape.contains("db_client_operation_duration"),
        "the Prometheus recorder holds the operations"
    );
}

fn main() {
    let seconds: f64 = env_or("BENCH_SECONDS", 1.0);
    let runs: usize = env_or("BENCH_RUNS", 5);
    let users: i64 = env_or("BENCH_USERS", 10_000);
    let wanted = support::picked_by("BENCH_BACKENDS");
    println!("# The cost of the metrics and spans (no subscriber installed)");
    if wanted("sqlite") {
        bench(Backend::Sqlite, seconds, runs, users);
    }
    if wanted("postgres") {
        bench(Backend::Postgres, seconds, runs, users);
    }
}
