//! A private PostgreSQL cluster: `initdb` with trust authentication, a free loopback port, the
//! server run as `postgres` when the tests run as root, and everything stopped and removed on
//! `Drop`. The building blocks are shared with the run-wide server of [`super::server`].

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use diesel::{Connection, PgConnection, RunQueryDsl};

use super::process::{self, PgBin, RunAs};
use super::SetupError;
use userbase::{DbUrl, Secrets};

/// How long `pg_ctl` waits for a server to start or stop.
const PG_CTL_WAIT_SECS: &str = "60";

/// Settings every private cluster gets: loopback TCP only (no Unix socket to collide on), and no
/// fsync (test data need not survive a power cut; it makes `CREATE DATABASE` fast). Commits stay
/// synchronous: a committed write is in the WAL (and sent to standbys) when `COMMIT` returns,
/// which replica tests rely on.
pub(crate) const BASE_SETTINGS: &[(&str, &str)] = &[
    ("listen_addresses", "'127.0.0.1'"),
    ("unix_socket_directories", "''"),
    ("max_connections", "200"),
    ("shared_buffers", "'32MB'"),
    ("fsync", "off"),
    ("wal_keep_size", "'256MB'"),
    ("log_min_messages", "warning"),
];

/// Extra `postgresql.conf` settings for a [`Cluster`]. The default is none: loopback TCP on a
/// free port, trust authentication, `max_connections = 200`, `fsync = off`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterOptions {
    /// `(name, value)` lines appended to `postgresql.conf`; the value is written as given, so
    /// quote strings: `("work_mem", "'8MB'")`.
    pub settings: Vec<(String, String)>,
}

impl ClusterOptions {
    /// No extra settings.
    pub fn new() -> Self {
        ClusterOptions::default()
    }

    /// Adds one `postgresql.conf` line (`name = value`, the value as written in the file).
    #[must_use]
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }
}

/// How [`Cluster::stop_with`] shuts the server down (`pg_ctl stop -m …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopMode {
    /// `fast`: roll back open transactions, disconnect clients, checkpoint, exit.
    Fast,
    /// `immediate`: exit at once without a checkpoint, as a crash would (crash recovery on the
    /// next start).
    Immediate,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// A private PostgreSQL server for one test: its own data directory (under
/// `<target>/userbase-postgres/clusters/`), its own loopback port, user `postgres` with trust
/// authentication. Stopped (`-m immediate`) and deleted on `Drop`.
///
/// Tests that stop, promote or reconfigure a server use one of these, never the shared server.
pub struct Cluster {
    pub(crate) bin: PgBin,
    pub(crate) run_as: RunAs,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    /// `loopback_url(port)`.
    url: DbUrl,
    running: bool,
    // Declared last: removed after the server is stopped.
    _dir: OwnedDir,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("port", &self.port)
            .field("data", &self.data)
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// `initdb` and start a new cluster with the default [`ClusterOptions`].
    ///
    /// # Errors
    ///
    /// [`SetupError::MissingProgram`] without the server binaries (or, as root, without a
    /// `postgres` user); [`SetupError::Command`] with the program's output when `initdb` or
    /// `pg_ctl` fails; [`SetupError::Io`] when the directory cannot be made.
    pub fn start() -> Result<Cluster, SetupError> {
        Cluster::start_with(&ClusterOptions::default())
    }

    /// `initdb` and start a new cluster with extra settings.
    ///
    /// # Errors
    ///
    /// As [`Cluster::start`].
    pub fn start_with(options: &ClusterOptions) -> Result<Cluster, SetupError> {
        let bin = PgBin::find()?;
        let run_as = RunAs::detect()?;
        let dir = OwnedDir::new(&run_as)?;
        let data = dir.path().join("data");
        initdb(&bin, &run_as, &data)?;
        append_settings(&data, BASE_SETTINGS.iter().copied())?;
        append_settings(
            &data,
            options
                .settings
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )?;
        Cluster::launch(bin, run_as, dir, data)
    }

    /// A standby of `primary`: `pg_basebackup -R -X stream` from it, extra `settings` appended,
    /// started on its own port.
    pub(crate) fn standby_of(
        primary: &Cluster,
        settings: &[(String, String)],
    ) -> Result<Cluster, SetupError> {
        let dir = OwnedDir::new(&primary.run_as)?;
        let data = dir.path().join("data");
        process::run(
            primary
                .run_as
                .command(primary.bin.program("pg_basebackup"))
                .arg("--pgdata")
                .arg(&data)
                .args(["--host", "127.0.0.1", "--username", "postgres"])
                .args(["--port", &primary.port.to_string()])
                .args(["--write-recovery-conf", "--wal-method=stream"])
                .args(["--checkpoint=fast", "--no-sync"]),
        )?;
        append_settings(
            &data,
            settings.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )?;
        Cluster::launch(primary.bin.clone(), primary.run_as, dir, data)
    }

    fn launch(
        bin: PgBin,
        run_as: RunAs,
        dir: OwnedDir,
        data: PathBuf,
    ) -> Result<Cluster, SetupError> {
        let log = dir.path().join("server.log");
        let port = start_on_free_port(&bin, &run_as, &data, &log)?;
        let mut cluster = Cluster {
            bin,
            run_as,
            data,
            log,
            port,
            url: DbUrl::postgres(),
            running: true,
            _dir: dir,
        };
        // On an error the cluster is dropped here, which stops the server.
        cluster.url = loopback_url(port)?;
        Ok(cluster)
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`: the superuser on the maintenance database.
    pub fn url(&self) -> DbUrl {
        self.url.clone()
    }

    /// The loopback port the server listens on (kept across [`stop`](Cluster::stop) and
    /// [`start_again`](Cluster::start_again)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Whether the server was started and not stopped since (as far as this handle knows).
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// The server's log so far (empty when unreadable): for assertion messages.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the server (`pg_ctl stop -m fast`), keeping its data for
    /// [`start_again`](Cluster::start_again). Nothing happens when it is not running.
    ///
    /// # Errors
    ///
    /// [`SetupError::Command`] when `pg_ctl` fails.
    pub fn stop(&mut self) -> Result<(), SetupError> {
        self.stop_with(StopMode::Fast)
    }

    /// Stops the server the way `mode` says.
    ///
    /// # Errors
    ///
    /// [`SetupError::Command`] when `pg_ctl` fails.
    pub fn stop_with(&mut self, mode: StopMode) -> Result<(), SetupError> {
        if self.running {
            pg_ctl_stop(&self.bin, &self.run_as, &self.data, mode)?;
            self.running = false;
        }
        Ok(())
    }

    /// Starts a stopped server again on the same port. Nothing happens when it is running.
    ///
    /// # Errors
    ///
    /// [`SetupError::Command`] with the server log when it does not start (for example, the port
    /// was taken meanwhile).
    pub fn start_again(&mut self) -> Result<(), SetupError> {
        if !self.running {
            pg_ctl_start(&self.bin, &self.run_as, &self.data, &self.log, self.port)?;
            self.running = true;
        }
        Ok(())
    }

    /// Promotes a standby to a primary (`pg_ctl promote`, waiting until it accepts writes).
    ///
    /// # Errors
    ///
    /// [`SetupError::Command`] when `pg_ctl` fails (for example, the server is not a standby).
    pub fn promote(&self) -> Result<(), SetupError> {
        process::run(
            self.run_as
                .command(self.bin.program("pg_ctl"))
                .arg("--pgdata")
                .arg(&self.data)
                .args(["--wait", "--timeout", PG_CTL_WAIT_SECS, "promote"]),
        )?;
        Ok(())
    }

    /// Changes a setting at run time: `ALTER SYSTEM SET name = value` and `pg_reload_conf()`
    /// (works on a standby too). `value` is SQL, so quote strings: `("recovery_min_apply_delay",
    /// "'2s'")`.
    ///
    /// # Errors
    ///
    /// [`SetupError::Database`] when the server refuses the setting or cannot be reached.
    pub fn set(&self, name: &str, value: &str) -> Result<(), SetupError> {
        let mut conn = connect(&self.url())?;
        execute(&mut conn, &format!("ALTER SYSTEM SET {name} = {value}"))?;
        execute(&mut conn, "SELECT pg_reload_conf()")?;
        Ok(())
    }

    /// A new connection to [`url`](Cluster::url).
    ///
    /// # Errors
    ///
    /// [`SetupError::Database`] holding an [`Error::Connect`](userbase::Error::Connect).
    pub fn connect(&self) -> Result<PgConnection, SetupError> {
        connect(&self.url())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let _ = pg_ctl_stop(&self.bin, &self.run_as, &self.data, StopMode::Immediate);
        }
    }
}

/// `postgres://postgres@127.0.0.1:<port>/postgres`.
///
/// # Errors
///
/// [`SetupError::Database`] holding the [`Error::Config`](userbase::Error::Config) for port 0.
pub(crate) fn loopback_url(port: u16) -> Result<DbUrl, SetupError> {
    loopback_url_of(port, "postgres")
}

/// `postgres://postgres@127.0.0.1:<port>/<database>`.
///
/// # Errors
///
/// [`SetupError::Database`] holding the [`Error::Config`](userbase::Error::Config) naming the
/// part for port 0 or a database name the URL builder refuses (empty, or holding a NUL).
pub(crate) fn loopback_url_of(port: u16, database: &str) -> Result<DbUrl, SetupError> {
    DbUrl::postgres()
        .with_username("postgres")
        .and_then(|url| url.with_host("127.0.0.1"))
        .and_then(|url| url.with_port(port))
        .and_then(|url| url.with_database(database))
        .map_err(|source| SetupError::Database {
            action: format!("build the URL of database `{database}` on port {port}"),
            source,
        })
}

/// `initdb` a new cluster in `data` (which must not exist): user `postgres`, trust
/// authentication for local and loopback connections (replication included), UTF-8, locale
/// `C.UTF-8` like the Debian default.
pub(crate) fn initdb(bin: &PgBin, run_as: &RunAs, data: &Path) -> Result<(), SetupError> {
    process::run(
        run_as
            .command(bin.program("initdb"))
            .arg("--pgdata")
            .arg(data)
            .args(["--username", "postgres", "--auth", "trust"])
            .args(["--encoding", "UTF8", "--locale", "C.UTF-8", "--no-sync"]),
    )?;
    Ok(())
}

/// Appends `name = value` lines to the cluster's `postgresql.conf` (later lines win).
pub(crate) fn append_settings<'a>(
    data: &Path,
    settings: impl Iterator<Item = (&'a str, &'a str)>,
) -> Result<(), SetupError> {
    let path = data.join("postgresql.conf");
    let io = |source| SetupError::Io {
        action: format!("append settings to {}", path.display()),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(io)?;
    for (name, value) in settings {
        writeln!(file, "{name} = {value}").map_err(io)?;
    }
    Ok(())
}

/// Starts the server on a free loopback port, trying another port when the one picked was taken
/// meanwhile. Returns the port.
pub(crate) fn start_on_free_port(
    bin: &PgBin,
    run_as: &RunAs,
    data: &Path,
    log: &Path,
) -> Result<u16, SetupError> {
    let mut attempts = 0;
    loop {
        let port = process::free_port()?;
        match pg_ctl_start(bin, run_as, data, log, port) {
            Ok(()) => return Ok(port),
            Err(error) if attempts < 5 && port_taken(log) => {
                attempts += 1;
                tracing::debug!(port, %error, "port taken meanwhile, trying another");
            }
            Err(error) => return Err(error),
        }
    }
}

fn port_taken(log: &Path) -> bool {
    fs::read_to_string(log)
        .map(|text| text.contains("could not bind") || text.contains("Address already in use"))
        .unwrap_or(false)
}

/// `pg_ctl start` on `port`, waiting until the server accepts connections (or, for a standby,
/// read-only ones). A failure carries the end of the server log.
pub(crate) fn pg_ctl_start(
    bin: &PgBin,
    run_as: &RunAs,
    data: &Path,
    log: &Path,
    port: u16,
) -> Result<(), SetupError> {
    let result = process::run(
        run_as
            .command(bin.program("pg_ctl"))
            .arg("--pgdata")
            .arg(data)
            .arg("--log")
            .arg(log)
            .args(["--wait", "--timeout", PG_CTL_WAIT_SECS])
            .arg("-o")
            .arg(format!("-p {port}"))
            .arg("start"),
    );
    match result {
        Ok(_) => Ok(()),
        Err(SetupError::Command {
            command,
            status,
            output,
        }) => {
            let log_text = fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = log_text.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Err(SetupError::Command {
                command,
                status,
                output: format!(
                    "{output}\nserver log ({}):\n{}",
                    log.display(),
                    tail.join("\n")
                ),
            })
        }
        Err(other) => Err(other),
    }
}

/// `pg_ctl stop -m <mode>`, waiting until the server has exited.
pub(crate) fn pg_ctl_stop(
    bin: &PgBin,
    run_as: &RunAs,
    data: &Path,
    mode: StopMode,
) -> Result<(), SetupError> {
    process::run(
        run_as
            .command(bin.program("pg_ctl"))
            .arg("--pgdata")
            .arg(data)
            .args([
                "--mode",
                mode.as_arg(),
                "--wait",
                "--timeout",
                PG_CTL_WAIT_SECS,
            ])
            .arg("stop"),
    )?;
    Ok(())
}

/// A connection for the test support's own statements (libpq's `connect_timeout=10`).
pub(crate) fn connect(url: &DbUrl) -> Result<PgConnection, SetupError> {
    let target = if url.query_value("connect_timeout").is_some() {
        url.clone()
    } else {
        url.clone()
            .with_query_param("connect_timeout", "10")
            .map_err(|source| SetupError::Database {
                action: format!("add connect_timeout to {url}"),
                source,
            })?
    };
    PgConnection::establish(&target.render(Secrets::Shown)).map_err(|error| SetupError::Database {
        action: "open a connection for the test support".into(),
        source: userbase::Error::Connect {
            url: url.to_string(),
            message: error.to_string().trim().to_owned(),
            source: Some(Box::new(error)),
        },
    })
}

/// Runs one statement of the test support, returning the rows it touched.
pub(crate) fn execute(conn: &mut PgConnection, sql: &str) -> Result<usize, SetupError> {
    diesel::sql_query(sql)
        .execute(conn)
        .map_err(|error| SetupError::Database {
            action: format!("run `{sql}`"),
            source: error.into(),
        })
}

/// A directory under `<target>/userbase-postgres/clusters/` owned by the server's user, with an
/// `owner` file naming this process so a later run can remove what a killed test left behind.
pub(crate) struct OwnedDir {
    dir: tempfile::TempDir,
}

impl OwnedDir {
    pub(crate) fn new(run_as: &RunAs) -> Result<OwnedDir, SetupError> {
        let parent = process::servers_dir()?.join("clusters");
        fs::create_dir_all(&parent).map_err(|source| SetupError::Io {
            action: format!("create {}", parent.display()),
            source,
        })?;
        sweep_orphans(&parent);
        let dir = tempfile::Builder::new()
            .prefix("cluster-")
            .tempdir_in(&parent)
            .map_err(|source| SetupError::Io {
                action: format!("create a directory in {}", parent.display()),
                source,
            })?;
        let owner = dir.path().join("owner");
        fs::write(&owner, std::process::id().to_string()).map_err(|source| SetupError::Io {
            action: format!("write {}", owner.display()),
            source,
        })?;
        run_as.own(dir.path())?;
        Ok(OwnedDir { dir })
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Removes the directories of test processes that died without their `Drop` (killed, aborted):
/// their servers are stopped (`-m immediate`), their pgbouncers killed, the files deleted.
fn sweep_orphans(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for dir in entries.flatten().map(|entry| entry.path()) {
        let owner = fs::read_to_string(dir.join("owner"))
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok());
        let Some(owner) = owner else { continue };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        if let Ok(pid) = fs::read_to_string(dir.join("pgbouncer.pid")) {
            if let Some(pid) = pid
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|&pid| process::process_runs(pid, "pgbouncer"))
            {
                kill(pid);
            }
        }
        if let Some(pid) = postmaster_pid(&dir.join("data")) {
            if process::process_runs(pid, "postgres") {
                kill(pid);
            }
        }
        tracing::info!(dir = %dir.display(), "removing a test cluster left by a dead process");
        let _ = fs::remove_dir_all(&dir);
    }
}

/// The postmaster's pid and port from `data/postmaster.pid`, when the file is there.
pub(crate) fn postmaster_pid_and_port(data: &Path) -> Option<(u32, Option<u16>)> {
    let text = fs::read_to_string(data.join("postmaster.pid")).ok()?;
    let mut lines = text.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    let port = lines.nth(2).and_then(|line| line.trim().parse().ok());
    Some((pid, port))
}

fn postmaster_pid(data: &Path) -> Option<u32> {
    postmaster_pid_and_port(data).map(|(pid, _)| pid)
}

/// SIGKILL to a process (the postmaster's children exit when it is gone).
pub(crate) fn kill(pid: u32) {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// How long to wait for a server that should be up already.
pub(crate) const READY_WAIT: Duration = Duration::from_secs(30);
