//! The pool and every query in Prometheus: installs `metrics-exporter-prometheus`, runs a small
//! mixed load on the embedded default (an SQLite file in a temporary directory, no server
//! needed), and serves `/metrics` on 127.0.0.1.
//!
//! ```text
//! cargo run --example metrics                   # serves on 127.0.0.1:9000 for 60 s (or Ctrl-C)
//! cargo run --example metrics -- --port 9464 --seconds 600
//! cargo run --example metrics -- --once         # serves one scrape, then exits (CI)
//! curl -s http://127.0.0.1:9000/metrics
//! ```
//!
//! The port is also read from `METRICS_PORT`. The recorder is installed before the `Database` is
//! created: a pool takes its instruments from the recorder in force when it is built.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use userbase::models::{NewLocation, NewUser};
use userbase::{Database, DbUrl, Error, PoolConfig, RetryPolicy, Settings};

/// Histogram buckets for the durations, in seconds: 10 µs (an SQLite point query) to 10 s.
const BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Numbers the locations the load inserts (their names are unique).
static PLACES: AtomicU64 = AtomicU64::new(0);

struct Args {
    port: u16,
    seconds: u64,
    once: bool,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        port: match std::env::var("METRICS_PORT") {
            Ok(port) => port.parse().map_err(|e| format!("METRICS_PORT: {e}"))?,
            Err(_) => 9000,
        },
        seconds: 60,
        once: false,
    };
    let mut given = std::env::args().skip(1);
    while let Some(arg) = given.next() {
        let mut value = |name: &str| given.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--port" => {
                args.port = value("--port")?
                    .parse()
                    .map_err(|e| format!("--port: {e}"))?
            }
            "--seconds" => {
                args.seconds = value("--seconds")?
                    .parse()
                    .map_err(|e| format!("--seconds: {e}"))?
            }
            "--once" => args.once = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;

    // 1. The recorder, before any Database: durations as histograms with buckets, names as
    //    Prometheus recommends (`_seconds`, `_total`).
    let handle = PrometheusBuilder::new()
        .with_recommended_naming(true)
        .set_buckets(BUCKETS)?
        .install_recorder()?;

    // 2. The engine: the embedded default, in a temporary directory; a small pool so the load
    //    below makes callers wait.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("userbase.sqlite3");
    let pool = PoolConfig::default()
        .with_pool_size(2)
        .with_max_overflow(2)
        .with_pool_timeout(Duration::from_millis(200))
        .with_pool_name("example");
    let db =
        Database::new(Settings::new(DbUrl::sqlite(path.display().to_string())?).with_pool(pool))?;
    db.run_pending_migrations()?;

    // 3. A mixed load: a burst now, then a trickle while serving.
    load(&db, 8, 200)?;
    let stop = Arc::new(AtomicBool::new(false));
    let trickle = {
        let (db, stop) = (db.clone(), stop.clone());
        thread::spawn(move || {
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Err(error) = load(&db, 2, 10) {
                    eprintln!("load: {error}");
                }
                round += 1;
                thread::sleep(Duration::from_millis(if round < 10 { 50 } else { 500 }));
            }
        })
    };

    // 4. `/metrics` on 127.0.0.1.
    let listener = TcpListener::bind(("127.0.0.1", args.port))?;
    println!(
        "serving http://127.0.0.1:{}/metrics ({})",
        args.port,
        if args.once {
            "one scrape".to_owned()
        } else {
            format!("{} s or Ctrl-C", args.seconds)
        }
    );
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    listener.set_nonblocking(true)?;
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                if serve(stream, &handle)? && args.once {
                    break;
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                handle.run_upkeep();
                thread::sleep(Duration::from_millis(20));
            }
            Err(error) => return Err(error.into()),
        }
    }
    stop.store(true, Ordering::Relaxed);
    trickle.join().map_err(|_| "the load thread panicked")?;
    Ok(())
}

/// `threads` threads each running `rounds` rounds of reads, writes, upserts, a failing lookup,
/// a retried transaction and a checkout that may time out.
fn load(db: &Database, threads: i64, rounds: i64) -> Result<(), Error> {
    thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || -> Result<(), Error> {
                    for round in 0..rounds {
                        let id = (t * 1_000_000 + round) % 500 + 1;
                        let name = format!("User {id}");
                        let mut session = match db.session() {
                            Ok(session) => session,
                            // The pool is small on purpose: the timeouts show in the metrics.
                            Err(Error::PoolTimeout { .. }) => continue,
                            Err(other) => return Err(other),
                        };
                        let mut repo = session.repo();
                        repo.upsert_user(&NewUser::new(id, &name).username("seen"))?;
                        repo.user(id)?;
                        // A miss: `error.type="NotFound"`.
                        let _ = repo.user(id + 10_000_000);
                        repo.count_user_locations(id)?;
                        if round % 20 == 0 {
                            repo.users_page(None, 50)?;
                        }
                        drop(session);
                        if round % 25 == 0 {
                            db.transaction_with_retry(RetryPolicy::default(), |repo| {
                                let location = repo.insert_location(&NewLocation::new(
                                    &format!("Place {}", PLACES.fetch_add(1, Ordering::Relaxed)),
                                    "1 Example Road",
                                ))?;
                                repo.link(id, location.location_id)
                            })?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().unwrap_or(Ok(())))
    })
}

/// Answers one HTTP request: the scrape on `GET /metrics`, 404 elsewhere. `true` when it was a
/// scrape.
fn serve(mut stream: TcpStream, handle: &PrometheusHandle) -> std::io::Result<bool> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // Read the headers out.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let scrape = request.starts_with("GET /metrics ");
    let (status, body) = if scrape {
        handle.run_upkeep();
        ("200 OK", handle.render())
    } else {
        ("404 Not Found", "not found: try /metrics\n".to_owned())
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()?;
    Ok(scrape)
}
