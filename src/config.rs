//! Settings: the database URL and the pool knobs, from code or from the environment.
//!
//! [`Settings::from_env`] loads a `.env` file from the current directory or one of its
//! parents (with [`dotenvy`]; variables already set in the environment win) and reads:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `DATABASE_URL` | full URL: `postgres://user:pass@host:5432/db`, `sqlite://path/file.db`, a bare file path, or `sqlite::memory:` | unset: the parts below, else [`DEFAULT_SQLITE_PATH`] |
//! | `DB_HOST` | PostgreSQL host, used when `DATABASE_URL` is unset | `localhost` |
//! | `DB_PORT` | PostgreSQL port | `5432` |
//! | `DB_USER` | PostgreSQL user | `postgres` |
//! | `DB_PASS` | PostgreSQL password (never printed) | none |
//! | `DB_NAME` | PostgreSQL database | the value of `DB_USER` |
//! | `DB_POOL_SIZE` | connections kept open in the pool | `5` ([`DEFAULT_POOL_SIZE`]) |
//! | `DB_MAX_OVERFLOW` | extra connections allowed above `DB_POOL_SIZE` under load | `10` ([`DEFAULT_MAX_OVERFLOW`]) |
//! | `DB_POOL_TIMEOUT_SECS` | seconds a checkout waits for a free connection (fractions allowed) | `30` ([`DEFAULT_POOL_TIMEOUT`]) |
//! | `DB_POOL_RECYCLE_SECS` | replace connections older than this many seconds; `-1` or empty: never | never |
//! | `DB_PRE_PING` | test a connection before handing it out (`true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`) | `true` |
//! | `DB_PRE_PING_BYPASS_MS` | skip the pre-ping for a connection used within this many milliseconds | `500` ([`DEFAULT_PRE_PING_BYPASS`]) |
//! | `DB_ECHO` | log every statement with its binds and duration through `tracing`, target `userbase::sql` (same boolean forms) | `false` |
//! | `DB_HIDE_PARAMETERS` | with `DB_ECHO`, log statements without their bind values | `false` |
//! | `DB_OVERFLOW_IDLE_TIMEOUT_MS` | close connections above `DB_POOL_SIZE` once more than `DB_POOL_SIZE` have stayed idle this many milliseconds; `0` closes them as they come back (SQLAlchemy) | `1000` ([`DEFAULT_OVERFLOW_IDLE_TIMEOUT`]) |
//! | `DB_LEAK_DETECTION_MS` | warn (through `tracing`, naming where it was checked out) about a session held longer than this many milliseconds; unset or `0`: off | off |
//! | `DB_ECHO_POOL` | log checkouts, check-ins, overflow discards, recycles and invalidations, target `userbase::pool` | `false` |
//!
//! The `DB_HOST` … `DB_NAME` parts are used as soon as any of them is set; with none of them and no
//! `DATABASE_URL`, the embedded SQLite file [`DEFAULT_SQLITE_PATH`] is used. A malformed value is an
//! [`Error::Config`] naming the variable.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::error::{Error, Result};

/// Default `pool_size`: connections kept open (SQLAlchemy's default).
pub const DEFAULT_POOL_SIZE: u32 = 5;
/// Default `max_overflow`: connections allowed above `pool_size` (SQLAlchemy's default).
pub const DEFAULT_MAX_OVERFLOW: u32 = 10;
/// Default `pool_timeout`: how long a checkout waits (SQLAlchemy's default, 30 s).
pub const DEFAULT_POOL_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `pre_ping`: test connections before handing them out.
pub const DEFAULT_PRE_PING: bool = true;
/// Default `pre_ping_bypass`: a connection used this recently is handed out without a ping
/// (HikariCP's "alive bypass window").
pub const DEFAULT_PRE_PING_BYPASS: Duration = Duration::from_millis(500);
/// Default `overflow_idle_timeout`: connections above `pool_size` are closed once more than
/// `pool_size` connections have stayed idle this long (see [`PoolConfig::overflow_idle_timeout`]).
pub const DEFAULT_OVERFLOW_IDLE_TIMEOUT: Duration = Duration::from_secs(1);
/// The SQLite file used when neither `DATABASE_URL` nor any `DB_*` part is set.
pub const DEFAULT_SQLITE_PATH: &str = "userbase.sqlite3";
/// Default PostgreSQL host for the `DB_*` parts.
pub const DEFAULT_HOST: &str = "localhost";
/// Default PostgreSQL port for the `DB_*` parts.
pub const DEFAULT_PORT: u16 = 5432;
/// Default PostgreSQL user for the `DB_*` parts.
pub const DEFAULT_USER: &str = "postgres";

/// What is percent-encoded in user names, passwords, database names and query parameters:
/// everything but RFC 3986's unreserved characters.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// What is percent-encoded in an SQLite path: as [`COMPONENT`], but `/` stays.
const PATH: &AsciiSet = &COMPONENT.remove(b'/');

/// The database engines userbase speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// PostgreSQL, the production backend.
    Postgres,
    /// An embedded SQLite file (or in-memory database), the zero-setup default.
    Sqlite,
}

impl Backend {
    /// The backend's name as printed in reports: `postgres` or `sqlite`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A database URL built from parts or parsed from a string: the seed's `sqlalchemy.URL`.
///
/// Its [`Display`](fmt::Display) and [`Debug`] hide the password; only
/// [`render(false)`](DbUrl::render) shows it.
///
/// ```no_run
/// use userbase::DbUrl;
///
/// let url = DbUrl::postgres()
///     .with_username("testuser")
///     .with_password("test p@ss")
///     .with_host("localhost")
///     .with_port(5432)
///     .with_database("testuser");
/// assert_eq!(url.render(false), "postgres://testuser:test%20p%40ss@localhost:5432/testuser");
/// assert_eq!(url.to_string(), "postgres://testuser:***@localhost:5432/testuser");
/// let parsed: DbUrl = "sqlite://data/app.db".parse()?;
/// assert_eq!(parsed.database(), Some("data/app.db"));
/// # Ok::<(), userbase::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct DbUrl {
    backend: Backend,
    /// The scheme as written (`postgres` or `postgresql`; `sqlite`).
    scheme: String,
    username: Option<String>,
    password: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    /// PostgreSQL: database name. SQLite: file path, or `:memory:`.
    database: Option<String>,
    query: Vec<(String, String)>,
}

impl DbUrl {
    /// An empty PostgreSQL URL (`postgres://`) to fill with the builder methods.
    #[doc(alias = "create")]
    pub fn postgres() -> Self {
        DbUrl {
            backend: Backend::Postgres,
            scheme: "postgres".to_owned(),
            username: None,
            password: None,
            host: None,
            port: None,
            database: None,
            query: Vec::new(),
        }
    }

    /// An SQLite URL for a file path, or for `:memory:` (an in-memory database).
    pub fn sqlite(path: impl Into<String>) -> Self {
        DbUrl {
            backend: Backend::Sqlite,
            scheme: "sqlite".to_owned(),
            database: Some(path.into()),
            ..DbUrl::postgres()
        }
    }

    /// Sets the user name.
    pub fn with_username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// Sets the password (hidden by `Display` and `Debug`).
    pub fn with_password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Sets the host name or IP address (an IPv6 address is written without brackets).
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// Sets the port.
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Sets the database name (PostgreSQL) or file path (SQLite).
    pub fn with_database(mut self, database: impl Into<String>) -> Self {
        self.database = Some(database.into());
        self
    }

    /// Adds a query parameter (`?sslmode=require`, `?application_name=bot`, …).
    pub fn with_query_param(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.query.push((key.into(), value.into()));
        self
    }

    /// Which backend this URL opens.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The user name, if any.
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// Whether a password is set (the password itself is only in [`render(false)`](DbUrl::render)).
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    /// The host, if any (IPv6 without brackets).
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// The port, if any.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The database name (PostgreSQL) or file path (SQLite), if any.
    pub fn database(&self) -> Option<&str> {
        self.database.as_deref()
    }

    /// The query parameters, in order.
    pub fn query(&self) -> &[(String, String)] {
        &self.query
    }

    /// The value of query parameter `key`, if present.
    pub fn query_value(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether this is an SQLite in-memory database.
    pub fn is_memory(&self) -> bool {
        self.backend == Backend::Sqlite && self.database.as_deref() == Some(":memory:")
    }

    /// Renders the URL as a string, with the password or with `***` in its place.
    ///
    /// The seed's `url.render_as_string(hide_password=…)`. Every part is percent-encoded.
    #[doc(alias = "render_as_string")]
    pub fn render(&self, hide_password: bool) -> String {
        let mut out = String::new();
        match self.backend {
            Backend::Sqlite => {
                let path = self.database.as_deref().unwrap_or_default();
                if path == ":memory:" {
                    out.push_str("sqlite::memory:");
                } else {
                    out.push_str("sqlite://");
                    out.extend(utf8_percent_encode(path, PATH));
                }
            }
            Backend::Postgres => {
                out.push_str(&self.scheme);
                out.push_str("://");
                if let Some(user) = &self.username {
                    out.extend(utf8_percent_encode(user, COMPONENT));
                }
                if let Some(password) = &self.password {
                    out.push(':');
                    if hide_password {
                        out.push_str("***");
                    } else {
                        out.extend(utf8_percent_encode(password, COMPONENT));
                    }
                }
                if self.username.is_some() || self.password.is_some() {
                    out.push('@');
                }
                if let Some(host) = &self.host {
                    if host.contains(':') {
                        out.push('[');
                        out.push_str(host);
                        out.push(']');
                    } else {
                        out.extend(utf8_percent_encode(host, COMPONENT));
                    }
                }
                if let Some(port) = self.port {
                    out.push(':');
                    out.push_str(&port.to_string());
                }
                if let Some(database) = &self.database {
                    out.push('/');
                    out.extend(utf8_percent_encode(database, COMPONENT));
                }
            }
        }
        for (i, (key, value)) in self.query.iter().enumerate() {
            out.push(if i == 0 { '?' } else { '&' });
            out.extend(utf8_percent_encode(key, COMPONENT));
            out.push('=');
            out.extend(utf8_percent_encode(value, COMPONENT));
        }
        out
    }

    /// Parses a URL: `postgres://` / `postgresql://`, `sqlite://path`, `sqlite::memory:`, or a bare
    /// file path (`./app.db`, `/var/lib/app.db`, `app.sqlite3`), which means SQLite.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the scheme is not one of these (the message names it) or the URL is
    /// malformed.
    pub fn parse(input: &str) -> Result<Self> {
        let input = input.trim();
        if input.is_empty() {
            return Err(url_error("the URL is empty"));
        }
        if input == "sqlite::memory:" || input == ":memory:" {
            return Ok(DbUrl::sqlite(":memory:"));
        }
        let Some((scheme, rest)) = input.split_once("://") else {
            if input.contains(':') && !Path::new(input).exists() && !looks_like_path(input) {
                let scheme = input.split(':').next().unwrap_or_default();
                return Err(unsupported_scheme(scheme));
            }
            return Ok(DbUrl::sqlite(input));
        };
        match scheme {
            "sqlite" => parse_sqlite(rest),
            "postgres" | "postgresql" => parse_postgres(input, scheme),
            other => Err(unsupported_scheme(other)),
        }
    }
}

/// A bare path: relative (`./x`, `../x`, `x.db`) or absolute, on Unix or Windows.
fn looks_like_path(input: &str) -> bool {
    input.starts_with('.')
        || input.starts_with('/')
        || input.starts_with('\\')
        || input.as_bytes().get(1) == Some(&b':')
}

fn url_error(message: impl Into<String>) -> Error {
    Error::config("DATABASE_URL", message)
}

fn unsupported_scheme(scheme: &str) -> Error {
    url_error(format!(
        "unsupported URL scheme `{scheme}`: use postgres://, postgresql://, sqlite:// or a file path"
    ))
}

fn decode(part: &str, what: &str) -> Result<String> {
    percent_decode_str(part)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| url_error(format!("the {what} is not valid UTF-8 once decoded")))
}

fn parse_sqlite(rest: &str) -> Result<DbUrl> {
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    let path = decode(path, "path")?;
    if path.is_empty() {
        return Err(url_error("the SQLite URL names no file"));
    }
    let mut url = DbUrl::sqlite(path);
    if let Some(query) = query {
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            url = url.with_query_param(key, value);
        }
    }
    Ok(url)
}

fn parse_postgres(input: &str, scheme: &str) -> Result<DbUrl> {
    let parsed = url::Url::parse(input).map_err(|e| url_error(format!("malformed URL: {e}")))?;
    let mut url = DbUrl {
        scheme: scheme.to_owned(),
        ..DbUrl::postgres()
    };
    if !parsed.username().is_empty() {
        url.username = Some(decode(parsed.username(), "user name")?);
    }
    if let Some(password) = parsed.password() {
        url.password = Some(decode(password, "password")?);
    }
    url.host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .map(|h| decode(h, "host"))
        .transpose()?;
    url.port = parsed.port();
    let database = parsed.path().trim_start_matches('/');
    if !database.is_empty() {
        url.database = Some(decode(database, "database name")?);
    }
    url.query = parsed
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    Ok(url)
}

impl FromStr for DbUrl {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        DbUrl::parse(s)
    }
}

impl fmt::Display for DbUrl {
    /// The URL with the password replaced by `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(true))
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DbUrl").field(&self.render(true)).finish()
    }
}

/// The engine's pool knobs: the seed's `create_engine(pool_size=…, max_overflow=…, …)`.
///
/// Every field has the default named on it; `PoolConfig::default()` gives them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Connections kept open once made. Default [`DEFAULT_POOL_SIZE`] (5).
    pub pool_size: u32,
    /// Connections allowed above `pool_size` under load; at most `pool_size + max_overflow` are
    /// open at once. Default [`DEFAULT_MAX_OVERFLOW`] (10).
    pub max_overflow: u32,
    /// How long a checkout waits for a free connection before [`Error::PoolTimeout`].
    /// Default [`DEFAULT_POOL_TIMEOUT`] (30 s).
    pub pool_timeout: Duration,
    /// Replace connections older than this. Default `None`: never (the seed's `pool_recycle=-1`).
    pub pool_recycle: Option<Duration>,
    /// Test a connection before handing it out. Default [`DEFAULT_PRE_PING`] (`true`).
    pub pre_ping: bool,
    /// With `pre_ping`, skip the ping for a connection that was in use this recently.
    /// Default [`DEFAULT_PRE_PING_BYPASS`] (500 ms); zero pings on every checkout.
    pub pre_ping_bypass: Duration,
    /// Log every statement with its bind values, duration and error through `tracing`
    /// (target `userbase::sql`, level INFO; errors at WARN). Default `false`.
    pub echo: bool,
    /// With `echo`, leave the bind values out of the log (SQLAlchemy's `hide_parameters`).
    /// Default `false`.
    pub hide_parameters: bool,
    /// Log pool events through `tracing` (target `userbase::pool`, level DEBUG): checkouts,
    /// check-ins, overflow discards, recycles, invalidations (SQLAlchemy's `echo_pool`).
    /// Default `false`.
    pub echo_pool: bool,
    /// How long more than `pool_size` connections may stay idle before the ones above
    /// `pool_size` are closed. Default [`DEFAULT_OVERFLOW_IDLE_TIMEOUT`] (1 s).
    ///
    /// SQLAlchemy closes an overflow connection the moment it comes back while `pool_size` are
    /// idle (`Duration::ZERO` here); under a steady load just above `pool_size` that reconnects
    /// many times a second. With `pool_size = 0` every idle connection is above `pool_size`.
    pub overflow_idle_timeout: Duration,
    /// Warn through `tracing` (target `userbase::pool`, level WARN, once per session) about a
    /// session held longer than this, naming where it was checked out (HikariCP's
    /// `leakDetectionThreshold`). Default `None`: off.
    pub leak_detection_threshold: Option<Duration>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            pool_size: DEFAULT_POOL_SIZE,
            max_overflow: DEFAULT_MAX_OVERFLOW,
            pool_timeout: DEFAULT_POOL_TIMEOUT,
            pool_recycle: None,
            pre_ping: DEFAULT_PRE_PING,
            pre_ping_bypass: DEFAULT_PRE_PING_BYPASS,
            echo: false,
            hide_parameters: false,
            echo_pool: false,
            overflow_idle_timeout: DEFAULT_OVERFLOW_IDLE_TIMEOUT,
            leak_detection_threshold: None,
        }
    }
}

impl PoolConfig {
    /// The most connections open at once: `pool_size + max_overflow`.
    pub fn max_connections(&self) -> u32 {
        self.pool_size.saturating_add(self.max_overflow)
    }

    /// Checks the knobs make a usable pool.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `pool_size + max_overflow` is 0 or `pool_timeout` is zero.
    pub fn validate(&self) -> Result<()> {
        if self.max_connections() == 0 {
            return Err(Error::config(
                "DB_POOL_SIZE",
                "pool_size + max_overflow must be at least 1",
            ));
        }
        if self.pool_timeout.is_zero() {
            return Err(Error::config(
                "DB_POOL_TIMEOUT_SECS",
                "pool_timeout must be above zero",
            ));
        }
        Ok(())
    }
}

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

    /// Reads the settings from `.env` and the environment (see the [module docs](self)).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the variable when a value is malformed, or when `.env` exists but
    /// cannot be parsed.
    pub fn from_env() -> Result<Self> {
        match dotenvy::dotenv() {
            Ok(_) => {}
            Err(e) if e.not_found() => {}
            Err(e) => return Err(Error::config(".env", e.to_string())),
        }
        Settings::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup` (a variable name → its value), without touching the
    /// process environment: what [`from_env`](Settings::from_env) does after loading `.env`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the variable when a value is malformed.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let var = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let url = if let Some(url) = var("DATABASE_URL") {
            DbUrl::parse(&url)?
        } else if ["DB_HOST", "DB_PORT", "DB_USER", "DB_PASS", "DB_NAME"]
            .iter()
            .any(|name| var(name).is_some())
        {
            let user = var("DB_USER").unwrap_or_else(|| DEFAULT_USER.to_owned());
            let mut url = DbUrl::postgres()
                .with_host(var("DB_HOST").unwrap_or_else(|| DEFAULT_HOST.to_owned()))
                .with_port(parse_var(&var, "DB_PORT")?.unwrap_or(DEFAULT_PORT))
                .with_database(var("DB_NAME").unwrap_or_else(|| user.clone()))
                .with_username(user);
            if let Some(password) = lookup("DB_PASS").filter(|p| !p.is_empty()) {
                url = url.with_password(password);
            }
            url
        } else {
            DbUrl::sqlite(DEFAULT_SQLITE_PATH)
        };

        let defaults = PoolConfig::default();
        let pool = PoolConfig {
            pool_size: parse_var(&var, "DB_POOL_SIZE")?.unwrap_or(defaults.pool_size),
            max_overflow: parse_var(&var, "DB_MAX_OVERFLOW")?.unwrap_or(defaults.max_overflow),
            pool_timeout: match parse_var::<f64>(&var, "DB_POOL_TIMEOUT_SECS")? {
                Some(secs) => seconds("DB_POOL_TIMEOUT_SECS", secs)?,
                None => defaults.pool_timeout,
            },
            pool_recycle: match parse_var::<f64>(&var, "DB_POOL_RECYCLE_SECS")? {
                Some(-1.0) => None,
                Some(secs) => Some(seconds("DB_POOL_RECYCLE_SECS", secs)?),
                None => defaults.pool_recycle,
            },
            pre_ping: parse_bool(&var, "DB_PRE_PING")?.unwrap_or(defaults.pre_ping),
            pre_ping_bypass: parse_var(&var, "DB_PRE_PING_BYPASS_MS")?
                .map(Duration::from_millis)
                .unwrap_or(defaults.pre_ping_bypass),
            echo: parse_bool(&var, "DB_ECHO")?.unwrap_or(defaults.echo),
            hide_parameters: parse_bool(&var, "DB_HIDE_PARAMETERS")?
                .unwrap_or(defaults.hide_parameters),
            echo_pool: parse_bool(&var, "DB_ECHO_POOL")?.unwrap_or(defaults.echo_pool),
            overflow_idle_timeout: parse_var(&var, "DB_OVERFLOW_IDLE_TIMEOUT_MS")?
                .map(Duration::from_millis)
                .unwrap_or(defaults.overflow_idle_timeout),
            leak_detection_threshold: parse_var::<u64>(&var, "DB_LEAK_DETECTION_MS")?
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis),
        };
        pool.validate()?;
        Ok(Settings { url, pool })
    }
}

fn parse_var<T: FromStr>(var: &impl Fn(&str) -> Option<String>, name: &str) -> Result<Option<T>>
where
    T::Err: fmt::Display,
{
    var(name)
        .map(|raw| {
            raw.trim().parse::<T>().map_err(|e| {
                Error::config(name, format!("`{}` is not a valid value: {e}", raw.trim()))
            })
        })
        .transpose()
}

fn seconds(name: &str, secs: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(secs)
        .map_err(|_| Error::config(name, format!("`{secs}` is not a number of seconds")))
}

fn parse_bool(var: &impl Fn(&str) -> Option<String>, name: &str) -> Result<Option<bool>> {
    var(name)
        .map(|raw| match raw.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(Error::config(
                name,
                format!(
                    "`{}` is not a boolean (true/false, 1/0, yes/no, on/off)",
                    raw.trim()
                ),
            )),
        })
        .transpose()
}
