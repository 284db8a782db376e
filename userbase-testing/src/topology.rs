//! Topologies for replica and pooler tests: a primary with a streaming hot standby, and pgbouncer
//! in front of a server. Each runs on free loopback ports and is torn down on `Drop`.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use diesel::sql_types::{Bool, Text};
use diesel::{QueryableByName, RunQueryDsl};

use super::cluster::{self, connect, Cluster, ClusterOptions, OwnedDir, READY_WAIT};
use super::process::{self, PgBin, RunAs};
use super::SetupError;
use userbase::DbUrl;

/// Options of [`PrimaryStandby::start_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StandbyOptions {
    /// `recovery_min_apply_delay` of the standby: how long it holds back replaying each commit,
    /// to make replication lag on purpose. Default `None` (replay at once). Change it later with
    /// [`PrimaryStandby::set_apply_delay`].
    pub apply_delay: Option<Duration>,
    /// Extra settings of the primary (the standby copies its `postgresql.conf`).
    pub primary: ClusterOptions,
}

impl StandbyOptions {
    /// No apply delay, no extra settings.
    pub fn new() -> Self {
        StandbyOptions::default()
    }

    /// Sets [`apply_delay`](StandbyOptions::apply_delay).
    #[must_use]
    pub fn apply_delay(mut self, delay: Duration) -> Self {
        self.apply_delay = Some(delay);
        self
    }
}

/// A primary and a streaming hot standby made from it with `pg_basebackup -R -X stream`: reads on
/// the standby see the primary's commits (after `apply_delay`, if set).
///
/// ```no_run
/// use userbase_testing::{PrimaryStandby, StandbyOptions};
/// use std::time::Duration;
///
/// let pair = PrimaryStandby::start_with(&StandbyOptions::new().apply_delay(Duration::from_millis(300)))?;
/// let (primary, replica) = (pair.primary().url(), pair.standby().url());
/// # Ok::<(), userbase_testing::SetupError>(())
/// ```
#[derive(Debug)]
pub struct PrimaryStandby {
    // The standby is declared first so it is stopped before its primary.
    standby: Cluster,
    primary: Cluster,
}

impl PrimaryStandby {
    /// A primary and a standby replaying at once.
    ///
    /// # Errors
    ///
    /// As [`Cluster::start`], and [`SetupError::Command`] when `pg_basebackup` fails.
    pub fn start() -> Result<PrimaryStandby, SetupError> {
        PrimaryStandby::start_with(&StandbyOptions::default())
    }

    /// A primary and a standby with `options`; returns once the standby is streaming.
    ///
    /// # Errors
    ///
    /// As [`start`](PrimaryStandby::start), and [`SetupError::Timeout`] when the standby does not
    /// start streaming within 30 s.
    pub fn start_with(options: &StandbyOptions) -> Result<PrimaryStandby, SetupError> {
        let primary = Cluster::start_with(&options.primary)?;
        let mut settings = vec![("hot_standby".to_owned(), "on".to_owned())];
        if let Some(delay) = options.apply_delay {
            settings.push(("recovery_min_apply_delay".into(), delay_value(delay)));
        }
        let standby = Cluster::standby_of(&primary, &settings)?;
        let pair = PrimaryStandby { standby, primary };
        let mut conn = connect(&pair.primary.url())?;
        process::wait_until("the standby to stream from the primary", READY_WAIT, || {
            let row: Flag = query(
                &mut conn,
                "SELECT count(*) > 0 AS flag FROM pg_stat_replication WHERE state = 'streaming'",
            )?;
            Ok(row.flag)
        })?;
        Ok(pair)
    }

    /// The primary (read-write).
    pub fn primary(&self) -> &Cluster {
        &self.primary
    }

    /// The standby (read-only; `pg_is_in_recovery()` is true until promoted).
    pub fn standby(&self) -> &Cluster {
        &self.standby
    }

    /// The primary, to stop or restart it (a failover test).
    pub fn primary_mut(&mut self) -> &mut Cluster {
        &mut self.primary
    }

    /// The standby, to stop, restart or [`promote`](Cluster::promote) it.
    pub fn standby_mut(&mut self) -> &mut Cluster {
        &mut self.standby
    }

    /// Changes the standby's `recovery_min_apply_delay` at run time (`Duration::ZERO`: none).
    ///
    /// # Errors
    ///
    /// [`SetupError::Database`] when the standby cannot be reached.
    pub fn set_apply_delay(&self, delay: Duration) -> Result<(), SetupError> {
        self.standby.set(
            "recovery_min_apply_delay",
            &format!("'{}'", delay_value(delay)),
        )
    }

    /// Waits until the standby has replayed everything the primary had written when called
    /// (`pg_last_wal_replay_lsn() >= ` the primary's `pg_current_wal_insert_lsn()`).
    ///
    /// # Errors
    ///
    /// [`SetupError::Timeout`] after `limit`; [`SetupError::Database`] when a server cannot be
    /// reached.
    pub fn wait_for_replay(&self, limit: Duration) -> Result<(), SetupError> {
        let target: Lsn = query(
            &mut self.primary.connect()?,
            "SELECT pg_current_wal_insert_lsn()::text AS lsn",
        )?;
        let mut standby = self.standby.connect()?;
        let sql = format!(
            "SELECT coalesce(pg_last_wal_replay_lsn() >= '{}'::pg_lsn, false) AS flag",
            target.lsn
        );
        process::wait_until("the standby to replay the primary's WAL", limit, || {
            Ok(query::<Flag>(&mut standby, &sql)?.flag)
        })
    }
}

/// `recovery_min_apply_delay` in milliseconds (`0`: none).
fn delay_value(delay: Duration) -> String {
    format!("{}ms", delay.as_millis())
}

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    flag: bool,
}

#[derive(QueryableByName)]
struct Lsn {
    #[diesel(sql_type = Text)]
    lsn: String,
}

fn query<T: QueryableByName<diesel::pg::Pg> + 'static>(
    conn: &mut diesel::PgConnection,
    sql: &str,
) -> Result<T, SetupError> {
    diesel::sql_query(sql)
        .get_result(conn)
        .map_err(|error| SetupError::Database {
            action: format!("run `{sql}`"),
            source: error.into(),
        })
}

/// pgbouncer's pooling mode (`pool_mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolMode {
    /// A server connection per client connection, for the client's whole session.
    Session,
    /// A server connection per transaction (the default here): session state (prepared
    /// statements, `SET`, advisory locks) does not survive between transactions.
    #[default]
    Transaction,
}

/// Options of [`PgBouncer::start_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgBouncerOptions {
    /// `pool_mode`; default [`PoolMode::Transaction`].
    pub pool_mode: PoolMode,
    /// `default_pool_size`: server connections per database and user; default 20.
    pub default_pool_size: u32,
    /// `max_client_conn`: client connections accepted; default 200.
    pub max_client_conn: u32,
    /// `server_reset_query = RESET ALL` with `server_reset_query_always = 1`: every server
    /// connection forgets its session settings (`SET`) whenever a transaction ends, so no client
    /// finds a `SET` of its own (or another's) on the server connection of its next transaction.
    /// Default `false`: pgbouncer's own defaults (a `SET` stays on the server connection for
    /// whichever client gets it next).
    pub reset_sessions: bool,
}

impl Default for PgBouncerOptions {
    fn default() -> Self {
        PgBouncerOptions {
            pool_mode: PoolMode::Transaction,
            default_pool_size: 20,
            max_client_conn: 200,
            reset_sessions: false,
        }
    }
}

impl PgBouncerOptions {
    /// Transaction pooling, 20 server connections, 200 clients.
    pub fn new() -> Self {
        PgBouncerOptions::default()
    }

    /// Sets [`pool_mode`](PgBouncerOptions::pool_mode).
    #[must_use]
    pub fn pool_mode(mut self, mode: PoolMode) -> Self {
        self.pool_mode = mode;
        self
    }

    /// Sets [`default_pool_size`](PgBouncerOptions::default_pool_size).
    #[must_use]
    pub fn default_pool_size(mut self, size: u32) -> Self {
        self.default_pool_size = size;
        self
    }

    /// Sets [`reset_sessions`](PgBouncerOptions::reset_sessions).
    #[must_use]
    pub fn reset_sessions(mut self, reset: bool) -> Self {
        self.reset_sessions = reset;
        self
    }
}

/// A pgbouncer (Debian's `pgbouncer` package) on a free loopback port in front of one server,
/// every database of it (`* = host=… port=…`), user `postgres` with trust authentication, admin
/// console on the database `pgbouncer`. Run as `postgres` when the tests run as root (pgbouncer
/// refuses root); killed on `Drop`.
pub struct PgBouncer {
    child: Child,
    port: u16,
    log: PathBuf,
    bin: Option<PgBin>,
    run_as: RunAs,
    _dir: OwnedDir,
}

impl fmt::Debug for PgBouncer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgBouncer")
            .field("port", &self.port)
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

impl PgBouncer {
    /// A pgbouncer in transaction pooling mode in front of the server of `server` (its host and
    /// port; user `postgres`).
    ///
    /// # Errors
    ///
    /// As [`start_with`](PgBouncer::start_with).
    pub fn start(server: &DbUrl) -> Result<PgBouncer, SetupError> {
        PgBouncer::start_with(server, &PgBouncerOptions::default())
    }

    /// A pgbouncer with `options` in front of the server of `server`; returns once it accepts
    /// connections.
    ///
    /// # Errors
    ///
    /// [`SetupError::MissingProgram`] when `pgbouncer` is not installed (Debian/Ubuntu:
    /// `apt-get install pgbouncer`); [`SetupError::Command`] with its log when it exits at start;
    /// [`SetupError::Timeout`] when it does not listen within 30 s.
    pub fn start_with(server: &DbUrl, options: &PgBouncerOptions) -> Result<PgBouncer, SetupError> {
        let program = process::find_in_path(
            "pgbouncer",
            &["/usr/sbin", "/usr/local/sbin", "/usr/local/bin"],
        )
        .ok_or_else(|| SetupError::MissingProgram {
            program: "pgbouncer".into(),
            looked_in: "PATH, /usr/sbin, /usr/local/sbin and /usr/local/bin".into(),
            hint: "install it (Debian/Ubuntu: `apt-get install pgbouncer`)".into(),
        })?;
        let run_as = RunAs::detect()?;
        let dir = OwnedDir::new(&run_as)?;
        let port = process::free_port()?;
        let host = server.host().unwrap_or("127.0.0.1");
        let server_port = server.port().unwrap_or(5432);
        let mode = match options.pool_mode {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        };
        let config = format!(
            "[databases]\n\
             * = host={host} port={server_port}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {auth}\n\
             admin_users = postgres\n\
             stats_users = postgres\n\
             pool_mode = {mode}\n\
             default_pool_size = {pool}\n\
             max_client_conn = {clients}\n\
             ignore_startup_parameters = extra_float_digits,options\n\
             {reset}",
            auth = dir.path().join("userlist.txt").display(),
            pool = options.default_pool_size,
            clients = options.max_client_conn,
            reset = if options.reset_sessions {
                "server_reset_query = RESET ALL\nserver_reset_query_always = 1\n"
            } else {
                ""
            },
        );
        write(&dir.path().join("userlist.txt"), "\"postgres\" \"\"\n")?;
        let ini = dir.path().join("pgbouncer.ini");
        write(&ini, &config)?;
        let log = dir.path().join("pgbouncer.log");
        let log_file = |log: &Path| {
            File::create(log).map_err(|source| SetupError::Io {
                action: format!("create {}", log.display()),
                source,
            })
        };
        let child = run_as
            .command(&program)
            .arg(&ini)
            .stdout(Stdio::from(log_file(&log)?))
            .stderr(Stdio::from(log_file(&log)?))
            .spawn()
            .map_err(|source| SetupError::Io {
                action: format!("start {}", program.display()),
                source,
            })?;
        write(&dir.path().join("pgbouncer.pid"), &child.id().to_string())?;
        let mut bouncer = PgBouncer {
            child,
            port,
            log,
            bin: PgBin::find().ok(),
            run_as,
            _dir: dir,
        };
        process::wait_until("pgbouncer to listen", READY_WAIT, || {
            if let Ok(Some(status)) = bouncer.child.try_wait() {
                return Err(SetupError::Command {
                    command: format!("{} {}", program.display(), ini.display()),
                    status: status.to_string(),
                    output: bouncer.log(),
                });
            }
            Ok(process::port_answers(port, Duration::from_secs(1)))
        })?;
        Ok(bouncer)
    }

    /// The loopback port pgbouncer listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>`: a database of the server, through
    /// pgbouncer.
    ///
    /// # Errors
    ///
    /// [`SetupError::Database`] holding the [`Error::Config`](userbase::Error::Config) for
    /// `URL database` when `database` is empty or holds a NUL.
    pub fn url(&self, database: &str) -> Result<DbUrl, SetupError> {
        cluster::loopback_url_of(self.port, database)
    }

    /// pgbouncer's log so far (empty when unreadable).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs an admin console command (`SHOW POOLS`, `SHOW CLIENTS`, …) through `psql` (the
    /// console speaks only the simple query protocol) and returns its rows as column → value.
    ///
    /// # Errors
    ///
    /// [`SetupError::MissingProgram`] without `psql`; [`SetupError::Command`] when the command
    /// fails.
    pub fn admin(&self, command: &str) -> Result<Vec<HashMap<String, String>>, SetupError> {
        let psql = self
            .bin
            .as_ref()
            .map(|bin| bin.program("psql"))
            .filter(|path| path.is_file())
            .or_else(|| process::find_in_path("psql", &[]))
            .ok_or_else(|| SetupError::MissingProgram {
                program: "psql".into(),
                looked_in: "the server binaries and PATH".into(),
                hint: "install the PostgreSQL client (Debian/Ubuntu: `apt-get install \
                       postgresql-client`)"
                    .into(),
            })?;
        let output = process::run(
            self.run_as
                .command(psql)
                .args(["--no-psqlrc", "--no-align", "--field-separator=\t"])
                .args(["--pset", "footer=off", "--host", "127.0.0.1"])
                .args(["--port", &self.port.to_string(), "--username", "postgres"])
                .args(["--dbname", "pgbouncer", "--command", command]),
        )?;
        let text = String::from_utf8_lossy(&output.stdout);
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
        Ok(lines
            .map(|line| {
                header
                    .iter()
                    .zip(line.split('\t'))
                    .map(|(column, value)| ((*column).to_owned(), value.to_owned()))
                    .collect()
            })
            .collect())
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write(path: &Path, contents: &str) -> Result<(), SetupError> {
    fs::write(path, contents).map_err(|source| SetupError::Io {
        action: format!("write {}", path.display()),
        source,
    })
}
