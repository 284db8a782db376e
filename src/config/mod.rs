//! Settings: the database URL and the pool knobs, from code or from the environment.
//!
//! [`Settings::from_env`] loads a `.env` file from the current directory or one of its
//! parents (with [`dotenvy`]; variables already set in the environment win) and reads
//! every variable of the crate documentation's [settings table](crate#settings): the URL or its
//! parts, TLS, secrets from files, and the pool, deadline, logging and replica knobs, each with
//! its default and bounds (the `DEFAULT_*`, `MAX_*` and `MIN_*` constants below are its values).
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
mod target;
mod tls;
pub(crate) mod url;

pub use self::env::{
    DEFAULT_HOST, DEFAULT_PORT, DEFAULT_SQLITE_PATH, DEFAULT_USER, SECRET_FILE_VARIABLES,
};
pub use self::knobs::{
    DEFAULT_MAX_OVERFLOW, DEFAULT_MAX_REPLICA_LAG, DEFAULT_OVERFLOW_IDLE_TIMEOUT,
    DEFAULT_POOL_SIZE, DEFAULT_POOL_TIMEOUT, DEFAULT_PRE_PING, DEFAULT_PRE_PING_BYPASS,
    DEFAULT_REPLICA_CHECK_INTERVAL, DEFAULT_REPLICA_WAIT, DEFAULT_SQLITE_BUSY_TIMEOUT,
    MAX_CONNECTIONS, MAX_DURATION, MIN_REPLICA_CHECK_INTERVAL,
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
