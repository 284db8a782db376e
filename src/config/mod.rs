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
//! | `DB_POOL_SIZE` | connections kept open in the pool; `0`: none kept idle | `5` ([`DEFAULT_POOL_SIZE`]) | 0 to 10 000 |
//! | `DB_MAX_OVERFLOW` | extra connections allowed above `DB_POOL_SIZE` under load | `10` ([`DEFAULT_MAX_OVERFLOW`]) | 0 to 10 000; `DB_POOL_SIZE + DB_MAX_OVERFLOW` 1 to 10 000 ([`MAX_CONNECTIONS`]) |
//! | `DB_POOL_TIMEOUT_SECS` | seconds a checkout waits for a free connection (fractions allowed) | `30` ([`DEFAULT_POOL_TIMEOUT`]) | above 0, at most 86 400 ([`MAX_DURATION`]) |
//! | `DB_POOL_RECYCLE_SECS` | replace connections older than this many seconds | `-1`: never | `-1`, or above 0 and at most 86 400 |
//! | `DB_PRE_PING` | test a connection before handing it out (`true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`) | `true` | |
//! | `DB_PRE_PING_BYPASS_MS` | skip the pre-ping for a connection used within this many milliseconds | `500` ([`DEFAULT_PRE_PING_BYPASS`]) | 0 to 86 400 000 |
//! | `DB_OVERFLOW_IDLE_TIMEOUT_MS` | close connections above `DB_POOL_SIZE` once more than `DB_POOL_SIZE` have stayed idle this many milliseconds; `0`: as they come back (SQLAlchemy) | `1000` ([`DEFAULT_OVERFLOW_IDLE_TIMEOUT`]) | 0 to 86 400 000 |
//! | `DB_LEAK_DETECTION_MS` | warn when a session is held longer than this many milliseconds | unset or `0`: off | 0 to 86 400 000 |
//! | `DB_ECHO` | log every statement with its binds and duration through `tracing`, target `userbase::sql` (same boolean forms) | `false` | |
//! | `DB_HIDE_PARAMETERS` | with `DB_ECHO`, log statements without their bind values | `false` | |
//! | `DB_ECHO_POOL` | log checkouts, check-ins, overflow discards, recycles and invalidations, target `userbase::pool` | `false` | |
//!
//! The `DB_HOST` … `DB_NAME` parts are used as soon as any of them is set; with none of them and no
//! `DATABASE_URL`, the embedded SQLite file [`DEFAULT_SQLITE_PATH`] is used. A variable set to an
//! empty value counts as unset, except `DATABASE_URL`: empty, it is an error (it would otherwise
//! select the SQLite file without a word). A malformed or out-of-range value is an
//! [`Error::Config`](crate::Error::Config) naming the variable and the allowed range; the same
//! bounds apply in code ([`PoolConfig::validate`], [`DbUrl::validate`]).

mod env;
mod pool;
pub(crate) mod url;

pub use self::env::{DEFAULT_HOST, DEFAULT_PORT, DEFAULT_SQLITE_PATH, DEFAULT_USER};
pub use self::pool::{
    PoolConfig, DEFAULT_MAX_OVERFLOW, DEFAULT_OVERFLOW_IDLE_TIMEOUT, DEFAULT_POOL_SIZE,
    DEFAULT_POOL_TIMEOUT, DEFAULT_PRE_PING, DEFAULT_PRE_PING_BYPASS, MAX_CONNECTIONS, MAX_DURATION,
};
pub use self::url::{Backend, DbUrl, Secrets, SECRET_QUERY_PARAMS};

/// Everything needed to open a [`Database`](crate::Database): the URL and the pool knobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Where the database is.
    pub url: DbUrl,
    /// How the pool behaves.
    pub pool: PoolConfig,
}

impl Settings {
    /// Settings for a URL with the default pool.
    pub fn new(url: DbUrl) -> Self {
        Settings {
            url,
            pool: PoolConfig::default(),
        }
    }
}
