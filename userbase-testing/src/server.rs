//! Which PostgreSQL server the tests use, and the private one started when there is none.
//!
//! [`server_url`] answers, once per process: `TEST_DATABASE_URL` when it is set; else the default
//! server `postgres://postgres@127.0.0.1:5432/postgres` when something accepts connections on
//! that port; else the run-wide private cluster of [`private_server_url`].
//!
//! The run-wide cluster lives in `<target>/userbase-postgres/` (`data/`, `server.log`) and is
//! shared by every test process of a run and by the next runs:
//!
//! - `lock` is held exclusively while a process checks, starts or reuses the cluster, so the first
//!   process starts it and the others wait, then reuse it;
//! - `users` is held *shared* by every process using the cluster until it exits (the kernel drops
//!   the lock when a process ends, however it ends);
//! - a watchdog (a small `sh` loop started with the cluster) stops the cluster once `users` has
//!   been free for [`IDLE_SECS`] seconds, under `lock`, so nobody attaches while it stops.
//!
//! A cluster found running is reused only when its pid is a live `postgres` and its port answers;
//! a stale `postmaster.pid` (crash, reboot) is removed; a cluster alive in another network
//! namespace (its port does not answer here) and unused is stopped and started again here. Data
//! made by another PostgreSQL major version is re-created.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use rustix::fs::{flock, FlockOperation};

use super::cluster::{self, StopMode};
use super::process::{self, PgBin, RunAs};
use super::SetupError;
use userbase::DbUrl;

/// The server tried when `TEST_DATABASE_URL` is unset.
pub const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Seconds the run-wide cluster stays up after the last test process using it has exited
/// (so the next test binary of the same `cargo test`, or the next run, reuses it).
pub const IDLE_SECS: u32 = 60;

/// The watchdog: stops the cluster once no process has held `users` for `$4` seconds; exits when
/// the cluster is gone (checked under `lock`, so a restart in progress does not count).
const WATCHDOG: &str = r#"
base=$1 pg_ctl=$2 data=$3 limit=$4 idle=0
while :; do
    sleep 1
    if [ ! -f "$data/postmaster.pid" ]; then
        flock -x "$base/lock" test -f "$data/postmaster.pid" || exit 0
    fi
    if flock -n -x "$base/users" true; then idle=$((idle + 1)); else idle=0; fi
    if [ "$idle" -ge "$limit" ]; then
        if flock -x "$base/lock" sh -c 'flock -n -x "$1/users" true && "$2" -D "$3" -m fast -w stop' \
            userbase-pg-stop "$base" "$pg_ctl" "$data" >/dev/null 2>&1; then
            exit 0
        fi
        idle=0
    fi
done
"#;

/// The PostgreSQL server of the tests (see the [module docs](self)), decided once per process.
///
/// # Errors
///
/// [`SetupError::ServerUnavailable`] with one message saying what to install or which variable to
/// set, when `TEST_DATABASE_URL` is malformed, or when no server answers and none can be started.
pub fn server_url() -> Result<DbUrl, SetupError> {
    static SERVER: OnceLock<Result<DbUrl, String>> = OnceLock::new();
    SERVER
        .get_or_init(|| discover().map_err(|error| super::report(&error)))
        .clone()
        .map_err(|message| SetupError::ServerUnavailable { message })
}

fn discover() -> Result<DbUrl, SetupError> {
    if let Ok(raw) = std::env::var("TEST_DATABASE_URL") {
        return DbUrl::parse(&raw).map_err(|source| SetupError::Database {
            action: "read TEST_DATABASE_URL".into(),
            source,
        });
    }
    if process::port_answers(5432, Duration::from_secs(2)) {
        return DbUrl::parse(DEFAULT_SERVER).map_err(|source| SetupError::Database {
            action: "parse the default server URL".into(),
            source,
        });
    }
    private_server_url().map_err(|error| SetupError::ServerUnavailable {
        message: format!(
            "no PostgreSQL server for the tests: TEST_DATABASE_URL is unset, nothing answers on \
             127.0.0.1:5432, and the private test cluster could not be started: {}",
            super::report(&error)
        ),
    })
}

/// The run-wide private cluster (see the [module docs](self)): started when no process has
/// started it yet, else reused; this process keeps it alive until it exits.
///
/// [`server_url`] uses it when no other server answers; call it directly to test against a
/// private server even where the default one runs.
///
/// # Errors
///
/// [`SetupError::MissingProgram`] without the server binaries; [`SetupError::Command`] when
/// `initdb` or `pg_ctl` fails; [`SetupError::Io`] on the directory or its lock files;
/// [`SetupError::ServerUnavailable`] when the cluster runs in another network namespace and is in
/// use there.
pub fn private_server_url() -> Result<DbUrl, SetupError> {
    static PRIVATE: OnceLock<Result<u16, String>> = OnceLock::new();
    PRIVATE
        .get_or_init(|| attach().map_err(|error| super::report(&error)))
        .clone()
        .map_err(|message| SetupError::ServerUnavailable { message })
        .and_then(cluster::loopback_url)
}

/// The lock on `users` this process holds for its lifetime.
static USING: OnceLock<File> = OnceLock::new();

fn attach() -> Result<u16, SetupError> {
    let bin = PgBin::find()?;
    let run_as = RunAs::detect()?;
    let base = process::servers_dir()?;
    let lock = lock_file(&base.join("lock"))?;
    lock_with(&lock, FlockOperation::LockExclusive, "lock")?;
    let port = start_or_reuse(&bin, &run_as, &base)?;
    let users = lock_file(&base.join("users"))?;
    lock_with(&users, FlockOperation::LockShared, "users")?;
    let _ = USING.set(users);
    ensure_watchdog(&bin, &run_as, &base)?;
    drop(lock);
    Ok(port)
}

/// Under `lock`: the port of a running, reachable cluster, or of one started now.
fn start_or_reuse(bin: &PgBin, run_as: &RunAs, base: &Path) -> Result<u16, SetupError> {
    let data = base.join("data");
    let log = base.join("server.log");
    if let Some((pid, port)) = cluster::postmaster_pid_and_port(&data) {
        if process::process_runs(pid, "postgres") {
            match port {
                Some(port) if process::port_answers(port, Duration::from_secs(2)) => {
                    tracing::debug!(port, pid, "reusing the private test cluster");
                    return Ok(port);
                }
                _ => {
                    // Alive but unreachable from here: another network namespace (or hung).
                    let users = lock_file(&base.join("users"))?;
                    if flock(&users, FlockOperation::NonBlockingLockExclusive).is_err() {
                        return Err(SetupError::ServerUnavailable {
                            message: format!(
                                "the private test cluster in {} (pid {pid}) is in use by a test \
                                 run this process cannot reach (another network namespace?); \
                                 wait for it to end or set TEST_DATABASE_URL",
                                data.display()
                            ),
                        });
                    }
                    cluster::pg_ctl_stop(bin, run_as, &data, StopMode::Immediate)?;
                }
            }
        } else {
            tracing::info!(
                pid,
                "removing a stale postmaster.pid of the private test cluster"
            );
            remove(&data.join("postmaster.pid"))?;
        }
    }
    let major = bin.major_version()?;
    let made_by = fs::read_to_string(data.join("PG_VERSION")).ok();
    if made_by.as_deref().map(str::trim) != Some(major.as_str()) {
        if data.exists() {
            tracing::info!(?made_by, major, "re-creating the private test cluster");
            remove(&data)?;
        }
        // Built aside and renamed, so a half-built cluster is never taken for a ready one.
        let building = base.join("data.new");
        if building.exists() {
            remove(&building)?;
        }
        fs::create_dir(&building).map_err(|source| SetupError::Io {
            action: format!("create {}", building.display()),
            source,
        })?;
        run_as.own(&building)?;
        cluster::initdb(bin, run_as, &building)?;
        cluster::append_settings(&building, cluster::BASE_SETTINGS.iter().copied())?;
        cluster::append_settings(&building, RUN_WIDE.iter().copied())?;
        fs::rename(&building, &data).map_err(|source| SetupError::Io {
            action: format!("rename {} to {}", building.display(), data.display()),
            source,
        })?;
    }
    // The log is written by the server's user.
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|source| SetupError::Io {
            action: format!("create {}", log.display()),
            source,
        })?;
    run_as.own(&log)?;
    let port = cluster::start_on_free_port(bin, run_as, &data, &log)?;
    tracing::info!(port, data = %data.display(), "started the private test cluster");
    Ok(port)
}

/// Settings of the run-wide cluster beyond those of every private cluster: room for the
/// parallel tests of a whole suite; no full-page writes and asynchronous commits (nothing is
/// backed up or replicated from it, and a crash only loses test data).
const RUN_WIDE: &[(&str, &str)] = &[
    ("max_connections", "300"),
    ("full_page_writes", "off"),
    ("synchronous_commit", "off"),
];

/// Starts the watchdog unless one runs for this cluster already.
fn ensure_watchdog(bin: &PgBin, run_as: &RunAs, base: &Path) -> Result<(), SetupError> {
    let pid_file = base.join("watchdog.pid");
    let running = fs::read_to_string(&pid_file)
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .is_some_and(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmdline| {
                    let cmdline = String::from_utf8_lossy(&cmdline);
                    cmdline.contains("userbase-pg-watchdog")
                        && cmdline.contains(&*base.to_string_lossy())
                })
                .unwrap_or(false)
        });
    if running {
        return Ok(());
    }
    let Some(flock_program) = process::find_in_path("flock", &["/usr/bin", "/bin"]) else {
        tracing::warn!(
            "flock(1) not found: the private test cluster keeps running after the tests; \
             the next run reuses it"
        );
        return Ok(());
    };
    let child = run_as
        .command("sh")
        .env(
            "PATH",
            format!(
                "{}:/usr/bin:/bin",
                flock_program
                    .parent()
                    .unwrap_or(Path::new("/usr/bin"))
                    .display()
            ),
        )
        .arg("-c")
        .arg(WATCHDOG)
        .arg("userbase-pg-watchdog")
        .arg(base)
        .arg(bin.program("pg_ctl"))
        .arg(base.join("data"))
        .arg(idle_secs().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: a Ctrl-C on `cargo test` does not end it early.
        .process_group(0)
        .spawn()
        .map_err(|source| SetupError::Io {
            action: "start the private test cluster's watchdog".into(),
            source,
        })?;
    fs::write(&pid_file, child.id().to_string()).map_err(|source| SetupError::Io {
        action: format!("write {}", pid_file.display()),
        source,
    })?;
    Ok(())
}

/// [`IDLE_SECS`], or `USERBASE_TEST_SERVER_IDLE_SECS` when set to a number.
fn idle_secs() -> u32 {
    std::env::var("USERBASE_TEST_SERVER_IDLE_SECS")
        .ok()
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(IDLE_SECS)
}

/// Opens (creating, readable by everyone so the watchdog can lock it too) a lock file.
fn lock_file(path: &Path) -> Result<File, SetupError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)
        .map_err(|source| SetupError::Io {
            action: format!("open {}", path.display()),
            source,
        })
}

fn lock_with(file: &File, operation: FlockOperation, name: &str) -> Result<(), SetupError> {
    flock(file, operation).map_err(|errno| SetupError::Io {
        action: format!("lock the private test cluster's `{name}` file"),
        source: errno.into(),
    })
}

fn remove(path: &Path) -> Result<(), SetupError> {
    let result = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    result.map_err(|source| SetupError::Io {
        action: format!("remove {}", path.display()),
        source,
    })
}
