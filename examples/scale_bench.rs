//! Figures for BENCHMARKS.md "Replicas": reads/s through a streaming replica vs the primary
//! alone, the cost of read-your-writes per read, on private servers (never the shared one).
//!
//! `cargo run --example scale_bench` (needs the PostgreSQL server binaries).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use userbase::config::ReplicaConfig;
use userbase::{Database, PoolConfig, Settings};
use userbase_testing::{fixtures, PrimaryStandby};

fn reads_per_second(db: &Database, threads: usize, for_how_long: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (db, stop, done) = (db.clone(), stop.clone(), done.clone());
            std::thread::spawn(move || {
                let mut id = t as i64;
                while !stop.load(Ordering::Relaxed) {
                    id = id % 100 + 1;
                    let found = db.read(|repo| repo.find_user(id)).expect("read");
                    assert!(found.is_some());
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(for_how_long);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("reader");
    }
    done.load(Ordering::Relaxed) as f64 / for_how_long.as_secs_f64()
}

fn mean_us(n: u32, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pair = PrimaryStandby::start()?;
    let pool = PoolConfig::default().with_pool_size(8);
    let primary_only = Database::new(Settings::new(pair.primary().url()).with_pool(pool.clone()))?;
    primary_only.run_pending_migrations()?;
    primary_only.transaction(|repo| {
        for id in 1..=100 {
            fixtures::user(id).insert(repo)?;
        }
        Ok::<_, userbase::Error>(())
    })?;
    pair.wait_for_replay(Duration::from_secs(30))?;
    let replicated = Database::new(
        Settings::new(pair.primary().url())
            .with_pool(pool)
            .with_replicas(ReplicaConfig::default().with_url(pair.standby().url())),
    )?;
    let secs = Duration::from_secs(3);
    for threads in [1, 4, 8] {
        let p = reads_per_second(&primary_only, threads, secs);
        let r = reads_per_second(&replicated, threads, secs);
        println!("{threads} threads: primary only {p:.0} reads/s, replica {r:.0} reads/s");
    }

    let n = 2000;
    let plain = mean_us(n, || {
        primary_only.session().unwrap().repo().find_user(1).unwrap();
    });
    let read_no_token = mean_us(n, || {
        replicated.read(|repo| repo.find_user(1)).unwrap();
    });
    // Our own write recorded once: every later read is covered by the cached replay position.
    replicated.transaction(|repo| repo.set_referrer(1, None).map(drop))?;
    pair.wait_for_replay(Duration::from_secs(30))?;
    let covered = mean_us(n, || {
        replicated.read(|repo| repo.find_user(1)).unwrap();
    });
    // A token just written by another process: the replica is asked (and waited for).
    let writer = Database::new(Settings::new(pair.primary().url()))?;
    let mut checked_total = Duration::ZERO;
    for id in 0..500_i64 {
        writer.transaction(|repo| repo.set_referrer(1 + id % 50, None).map(drop))?;
        let token = writer.record_write()?.expect("PostgreSQL");
        let start = Instant::now();
        replicated.read_after(token, |repo| repo.find_user(1))?;
        checked_total += start.elapsed();
    }
    let checked = checked_total.as_secs_f64() * 1e6 / 500.0;
    let tx_primary_only = mean_us(500, || {
        primary_only
            .transaction(|repo| repo.find_user(1).map(drop))
            .unwrap();
    });
    // With replicas a transaction is asked whether it wrote (one round trip before the commit);
    // one that wrote records its WAL position (one more after it).
    let tx_read_only = mean_us(500, || {
        replicated
            .transaction(|repo| repo.find_user(1).map(drop))
            .unwrap();
    });
    let tx_write_primary_only = mean_us(500, || {
        primary_only
            .transaction(|repo| repo.set_referrer(1, None).map(drop))
            .unwrap();
    });
    let tx_recorded = mean_us(500, || {
        replicated
            .transaction(|repo| repo.set_referrer(1, None).map(drop))
            .unwrap();
    });
    println!("point read, session on the primary: {plain:.0} µs");
    println!("db.read on the replica, no write pending: {read_no_token:.0} µs");
    println!("db.read after own write, covered by the cached replay position: {covered:.0} µs");
    println!("db.read_after(fresh token): check + wait for replay: {checked:.0} µs");
    println!("read-only transaction without replicas: {tx_primary_only:.0} µs; with replicas (asked whether it wrote): {tx_read_only:.0} µs");
    println!("writing transaction without replicas: {tx_write_primary_only:.0} µs; with replicas (asked, WAL position recorded): {tx_recorded:.0} µs");
    Ok(())
}
