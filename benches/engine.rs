//! Checkout-path cost: a point query through `Database` (pre-ping on, on without the bypass
//! window, off) against the same query on one held connection, in one run.
//!
//! `cargo bench --bench engine` (PostgreSQL from `BENCH_DATABASE_URL`, else `TEST_DATABASE_URL`,
//! else `postgres://postgres@127.0.0.1:5432/postgres`; a scratch database is created and dropped).
//! Each round runs every variant once, in a rotating order, so drift hits them alike; rates are
//! the median of the rounds with the spread (min-max), and each comparison is the median of the
//! per-round ratios (paired), which is steadier than a ratio of medians.

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};
use userbase::{demo, Database, DbUrl, PoolConfig, Secrets, Settings};

const ROUNDS: usize = 31;
const OPS_PER_ROUND: usize = 2_000;
const USER_ID: i64 = 1169;

fn server() -> DbUrl {
    let raw = std::env::var("BENCH_DATABASE_URL")
        .or_else(|_| std::env::var("TEST_DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    DbUrl::parse(&raw).expect("a valid PostgreSQL URL")
}

fn engine(url: &DbUrl, pre_ping: bool, bypass: Duration) -> Database {
    let pool = PoolConfig::default()
        .with_pre_ping(pre_ping)
        .with_pre_ping_bypass(bypass);
    Database::new(Settings::new(url.clone()).with_pool(pool)).expect("engine")
}

/// Operations per second of `op` run `OPS_PER_ROUND` times.
fn rate(mut op: impl FnMut()) -> f64 {
    let started = Instant::now();
    for _ in 0..OPS_PER_ROUND {
        op();
    }
    OPS_PER_ROUND as f64 / started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let server = server();
    let name = format!("userbase_bench_engine_{}", std::process::id());
    let mut admin =
        PgConnection::establish(&server.render(Secrets::Shown)).expect("connect to the server");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create");
    let url = server.clone().with_database(&name).unwrap();

    let setup = engine(&url, true, Duration::ZERO);
    setup.run_pending_migrations().expect("migrate");
    setup.transaction(demo::load).expect("demo rows");

    let variants: [(&str, Database); 3] = [
        (
            "pre_ping on (500 ms bypass)",
            engine(&url, true, Duration::from_millis(500)),
        ),
        (
            "pre_ping on (no bypass)",
            engine(&url, true, Duration::ZERO),
        ),
        ("pre_ping off", engine(&url, false, Duration::ZERO)),
    ];
    let held_db = engine(&url, false, Duration::ZERO);
    let mut held = held_db.session().expect("held session");

    // Warm up every path (connections made, statements prepared).
    for (_, db) in &variants {
        rate(|| drop(db.session().unwrap().repo().user(USER_ID).unwrap()));
    }
    rate(|| drop(held.repo().user(USER_ID).unwrap()));

    // samples[i][round]: ops/s of variant i (the last one is the held connection).
    let count = variants.len() + 1;
    let mut samples = vec![Vec::new(); count];
    for round in 0..ROUNDS {
        for k in 0..count {
            let i = (round + k) % count;
            let ops = match variants.get(i) {
                Some((_, db)) => rate(|| drop(db.session().unwrap().repo().user(USER_ID).unwrap())),
                None => rate(|| drop(held.repo().user(USER_ID).unwrap())),
            };
            samples[i].push(ops);
        }
    }

    let names: Vec<&str> = variants
        .iter()
        .map(|(n, _)| *n)
        .chain(["held connection (no checkout)"])
        .collect();
    println!("point query `repo.user({USER_ID})`, {ROUNDS} rounds x {OPS_PER_ROUND} ops; ops/s median (min-max)");
    for (name, sample) in names.iter().zip(&samples) {
        let min = sample.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = sample.iter().cloned().fold(0.0, f64::max);
        println!(
            "  {name:<32} {:>9.0}  ({min:.0}-{max:.0})",
            median(sample.clone())
        );
    }
    // Extra time per operation of `slow` over `fast`, from paired per-round ratios.
    let extra = |slow: usize, fast: usize| {
        let ratios = samples[fast]
            .iter()
            .zip(&samples[slow])
            .map(|(f, s)| f / s - 1.0)
            .collect();
        median(ratios) * 100.0
    };
    let held_ix = variants.len();
    println!("extra time per op (median of per-round ratios):");
    println!(
        "  pre_ping on vs off:              {:+.1} % (target <= +3 %)",
        extra(0, 2)
    );
    println!("  pre_ping without bypass vs off:  {:+.1} %", extra(1, 2));
    println!(
        "  checkout (pre_ping off) vs held: {:+.1} % (target <= +5 %)",
        extra(2, held_ix)
    );
    println!(
        "  checkout (pre_ping on) vs held:  {:+.1} %",
        extra(0, held_ix)
    );

    drop(held);
    drop(held_db);
    drop(variants);
    drop(setup);
    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .expect("drop the scratch database");
}
