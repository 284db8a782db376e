//! Settings: the database URL and the pool knobs, from code or from the environment.
//!
//! [`Settings::from_env`] loads a `.env` file from the current directory or one of its
//! parents (with [`dotenvy`]; variables already set in the environment win) and reads:
//!
//! | variable | meaning | default | allowed |
//! |---|---|---|---|
//! | `DATABASE_URL` | full URL: `postgres://user:pass@host:5432/db`, `sqlite://path/file.db`, a bare file path, or `sqlite::memory:` ([`DbUrl::parse`]) | unset: the parts below, else [`DEFAULT_SQLITE_PATH`] | not empty once set |
//! | `DB_HOST` | PostgreSQL host, used when `DATABASE_URL` is unset | `localhost` | a name, IPv4, IPv6 (`::1` or `[::1]`, zone ids), or a socket directory |
//! | `DB_PORT` | PostgreSQL port | `5432` | 1 to 65535 |
//! | `DB_USER` | PostgreSQL user | `postgres` | no NUL |
//! | `DB_PASS` | PostgreSQL password (never printed) | none | no NUL |
//! | `DB_NAME` | PostgreSQL database | the value of `DB_USER` | no NUL |
//! | `DB_SSLMODE` | libpq's `sslmode` for PostgreSQL URLs that set none (`DATABASE_URL`, the parts, replicas, migrations); see [`DbUrl::effective_sslmode`] | unset: `require` for a host that is not this machine, `verify-full` with `DB_SSLROOTCERT`, else libpq's default | one of [`SSLMODES`] |
//! | `DB_SSLROOTCERT` | the CA file that verifies the server's certificate (`sslrootcert`); switches the default to `verify-full` | unset | a path |
//! | `DB_POOL_SIZE` | connections kept open in the pool; `0`: none kept idle ([`DEFAULT_POOL_SIZE`], [`MAX_CONNECTIONS`]) | `5` | a whole number from 0 to 10 000, with `DB_POOL_SIZE + DB_MAX_OVERFLOW` from 1 to 10 000 |
//! | `DB_MAX_OVERFLOW` | extra connections allowed above `DB_POOL_SIZE` under load ([`DEFAULT_MAX_OVERFLOW`], [`MAX_CONNECTIONS`]) | `10` | a whole number from 0 to 10 000, with `DB_POOL_SIZE + DB_MAX_OVERFLOW` from 1 to 10 000 |
//! | `DB_POOL_TIMEOUT_SECS` | how long a whole checkout may take ([`PoolConfig::pool_timeout`], [`DEFAULT_POOL_TIMEOUT`], [`MAX_DURATION`]) | `30` | seconds above 0 and at most 86 400 (fractions allowed) |
//! | `DB_POOL_RECYCLE_SECS` | replace connections older than this many seconds | `-1`: never | `-1` (never) or seconds above 0 and at most 86 400 (fractions allowed) |
//! | `DB_PRE_PING` | test a connection before handing it out ([`DEFAULT_PRE_PING`]) | `true` | true/false, 1/0, yes/no, on/off |
//! | `DB_PRE_PING_BYPASS_MS` | skip the pre-ping for a connection used within this many milliseconds ([`DEFAULT_PRE_PING_BYPASS`]) | `500` | whole milliseconds from 0 to 86 400 000 |
//! | `DB_OVERFLOW_IDLE_TIMEOUT_MS` | close connections above `DB_POOL_SIZE` once more than `DB_POOL_SIZE` have stayed idle this many milliseconds; `0`: as they come back (SQLAlchemy) ([`DEFAULT_OVERFLOW_IDLE_TIMEOUT`]) | `1000` | whole milliseconds from 0 to 86 400 000 |
//! | `DB_LEAK_DETECTION_MS` | warn when a session is held longer than this many milliseconds | `0`: off | whole milliseconds from 0 (off) to 86 400 000 |
//! | `DB_ECHO` | log every statement with its binds and duration through `tracing`, target `userbase::sql` | `false` | true/false, 1/0, yes/no, on/off |
//! | `DB_HIDE_PARAMETERS` | with `DB_ECHO`, log statements without their bind values | `false` | true/false, 1/0, yes/no, on/off |
//! | `DB_ECHO_POOL` | log checkouts, check-ins, overflow discards, recycles and invalidations, target `userbase::pool` | `false` | true/false, 1/0, yes/no, on/off |
//! | `DB_POOL_NAME` | the pool's `db.client.connection.pool.name` in its metrics ([`PoolConfig::pool_name`]); replicas get `<name>-replica-<index>` | `host:port/database` (SQLite: the file name) | |
//! | `DB_STATEMENT_CACHE` | diesel's prepared-statement cache on PostgreSQL connections; `off` behind pgbouncer in transaction mode ([`PoolConfig::statement_cache`]) | `true` | true/false, 1/0, yes/no, on/off |
//! | `DB_STATEMENT_TIMEOUT_MS` | PostgreSQL cancels a statement running longer ([`Error::StatementTimeout`](crate::Error::StatementTimeout)); no effect on SQLite ([`PoolConfig::statement_timeout`]) | unset: the server's setting | whole milliseconds from 0 (no limit) to 86 400 000 |
//! | `DB_LOCK_TIMEOUT_MS` | a statement waiting longer for a lock gives up ([`Error::LockTimeout`](crate::Error::LockTimeout)); SQLite's `busy_timeout` ([`PoolConfig::lock_timeout`]) | unset: the server's setting; SQLite 5000 | whole milliseconds from 0 to 86 400 000 |
//! | `DB_IDLE_IN_TRANSACTION_TIMEOUT_MS` | PostgreSQL closes a connection whose transaction stays idle longer ([`PoolConfig::idle_in_transaction_timeout`]) | unset: the server's setting | whole milliseconds from 0 (no limit) to 86 400 000 |
//! | `DB_SQLITE_SYNCHRONOUS` | SQLite's `synchronous`: `normal` (WAL: a process crash loses nothing committed, a power loss may lose the last transactions) or `full` (survives a power loss, one `fsync` per commit) ([`PoolConfig::sqlite_synchronous`]) | `normal` | `normal`, `full` |
//! | `DATABASE_REPLICA_URLS` | read replicas, comma-separated PostgreSQL URLs ([`ReplicaConfig::urls`]) | none | each starts with `postgres://` or `postgresql://` |
//! | `DB_REPLICA_WAIT_MS` | how long a read that must see a write waits for a replica to catch up before using the primary ([`DEFAULT_REPLICA_WAIT`]) | `50` | whole milliseconds from 0 to 86 400 000 |
//! | `DB_MAX_REPLICA_LAG_MS` | replicas lagging more are skipped ([`DEFAULT_MAX_REPLICA_LAG`]) | `5000` | whole milliseconds from 1 to 86 400 000 |
//! | `DB_REPLICA_CHECK_MS` | how often replicas' lag and health are measured in the background ([`DEFAULT_REPLICA_CHECK_INTERVAL`], [`MIN_REPLICA_CHECK_INTERVAL`]) | `500` | whole milliseconds from 10 to 86 400 000 |
//! | `DB_PASS_FILE`, `DATABASE_URL_FILE`, `DATABASE_REPLICA_URLS_FILE` | a file holding the value of `DB_PASS`, `DATABASE_URL` or `DATABASE_REPLICA_URLS` (Docker and Kubernetes secrets): read once, one trailing newline removed ([`SECRET_FILE_VARIABLES`]) | unset | a readable UTF-8 file; not together with the variable itself |
//! | `DATABASE_MIGRATION_URL` | where [`Database::run_pending_migrations`](crate::Database::run_pending_migrations) connects (a direct connection, not pgbouncer) | `DATABASE_URL` | a PostgreSQL URL |
//!
//! The `DB_HOST` … `DB_NAME` parts are used as soon as any of them is set; with none of them and no
//! `DATABASE_URL`, the embedded SQLite file [`DEFAULT_SQLITE_PATH`] is used. A variable set to an
//! empty value counts as unset, except `DATABASE_URL`: empty, it is an error (it would otherwise
//! select the SQLite file without a word). A malformed or out-of-range value is an
//! [`Error::Config`](crate::Error::Config) naming the variable and the allowed range; the same
//! bounds apply in code ([`PoolConfig::validate`], [`ReplicaConfig::validate`], and the
//! [`DbUrl`] builder methods, which refuse a part as it is set), where the error names the field
//! or the URL part. Each knob's default and bounds are
//! written once, in one table of settings that validation, this reading and the error messages
//! all use (the `DEFAULT_*`, `MAX_*` and `MIN_*` constants are its values).
//!
//! A secret may come from a file instead (`DB_PASS_FILE`, `DATABASE_URL_FILE`,
//! `DATABASE_REPLICA_URLS_FILE`): setting both a variable and its `_FILE` is an
//! [`Error::Config`](crate::Error::Config), and so is a file that cannot be read (the error names
//! the variable and the path, never the content). Without a password anywhere, libpq still reads
//! its own password file (`~/.pgpass`, or `PGPASSFILE`, or the URL's `passfile` parameter).

mod env;
pub(crate) mod knobs;
mod pool;
mod replica;
mod tls;
pub(crate) mod url;

pub use self::env::{
    DEFAULT_HOST, DEFAULT_PORT, DEFAULT_SQLITE_PATH, DEFAULT_USER, SECRET_FILE_VARIABLES,
};
pub use self::knobs::{
    DEFAULT_MAX_OVERFLOW, DEFAULT_MAX_REPLICA_LAG, DEFAULT_OVERFLOW_IDLE_TIMEOUT,
    DEFAULT_POOL_SIZE, DEFAULT_POOL_TIMEOUT, DEFAULT_PRE_PING, DEFAULT_PRE_PING_BYPASS,
    DEFAULT_REPLICA_CHECK_INTERVAL, DEFAULT_REPLICA_WAIT, MAX_CONNECTIONS, MAX_DURATION,
    MIN_REPLICA_CHECK_INTERVAL,
};
pub use self::pool::{PoolConfig, SqliteSynchronous};
pub use self::replica::ReplicaConfig;
pub use self::tls::SSLMODES;
pub use self::url::{Backend, DbUrl, Secrets, SECRET_QUERY_PARAMS};

/// Everything needed to open a [`Database`](crate::Database): the URL, the pool knobs, the read
/// replicas and the migration URL.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settings {
    /// Where the database is (the primary).
    pub url: DbUrl,
    /// How the pool behaves (the replicas' pools too).
    pub pool: PoolConfig,
    /// Read replicas and how reads are routed to them; default none.
    pub replicas: ReplicaConfig,
    /// Where migrations run when set (env `DATABASE_MIGRATION_URL`): a direct connection to the
    /// primary when `url` goes through pgbouncer. Default `None`: `url`.
    pub migration_url: Option<DbUrl>,
}

impl Default for Settings {
    /// What [`Settings::from_env`] gives with nothing set: the embedded SQLite file
    /// [`DEFAULT_SQLITE_PATH`], the default pool, no replica.
    fn default() -> Self {
        Settings::new(DbUrl::default_sqlite())
    }
}

impl Settings {
    /// Settings for a URL with the default pool, no replica, migrations on `url`.
    pub fn new(url: DbUrl) -> Self {
        Settings {
            url,
            pool: PoolConfig::default(),
            replicas: ReplicaConfig::default(),
            migration_url: None,
        }
    }

    /// These settings with `pool`.
    #[must_use]
    pub fn with_pool(mut self, pool: PoolConfig) -> Self {
        self.pool = pool;
        self
    }

    /// These settings with `replicas`.
    #[must_use]
    pub fn with_replicas(mut self, replicas: ReplicaConfig) -> Self {
        self.replicas = replicas;
        self
    }

    /// These settings with migrations run through `url`.
    #[must_use]
    pub fn with_migration_url(mut self, url: DbUrl) -> Self {
        self.migration_url = Some(url);
        self
    }
}
