//! [`DbUrl`]: a database URL built from parts or parsed, rendered with or without its secrets.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::error::{Error, Result};

/// libpq settings added to PostgreSQL URLs that do not set them, so that a dropped network cannot
/// hang a checkout or a query forever: connect within 10 s, TCP keepalives after 30 s idle every
/// 10 s (3 probes), and give up on unacknowledged data after 30 s.
pub const LIBPQ_SAFETY_DEFAULTS: [(&str, &str); 6] = [
    ("connect_timeout", "10"),
    ("keepalives", "1"),
    ("keepalives_idle", "30"),
    ("keepalives_interval", "10"),
    ("keepalives_count", "3"),
    ("tcp_user_timeout", "30000"),
];

/// Names the in-memory databases of this process apart.
static MEMORY_DATABASES: AtomicUsize = AtomicUsize::new(0);

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

impl DbUrl {
    /// The string the driver opens: for PostgreSQL the URL with its password and the
    /// [`LIBPQ_SAFETY_DEFAULTS`] it does not set; for SQLite the file path, or a shared `memdb`
    /// database for `:memory:`. Never printed.
    pub(crate) fn driver_target(&self) -> String {
        match self.backend() {
            Backend::Postgres => {
                let mut with_defaults = self.clone();
                for (key, value) in LIBPQ_SAFETY_DEFAULTS {
                    if with_defaults.query_value(key).is_none() {
                        with_defaults = with_defaults.with_query_param(key, value);
                    }
                }
                with_defaults.render(false)
            }
            // `memdb` with a name starting with `/` is one database shared by every connection
            // of the process (unlike plain `:memory:`, one per connection), with normal locking.
            Backend::Sqlite if self.is_memory() => format!(
                "file:/userbase-{}-{}?vfs=memdb",
                std::process::id(),
                MEMORY_DATABASES.fetch_add(1, Ordering::Relaxed)
            ),
            Backend::Sqlite => self.database().unwrap_or_default().to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_safety_defaults_are_added_unless_the_url_sets_them() {
        let url = DbUrl::parse("postgres://bot:pw@db:5432/app?connect_timeout=3").unwrap();
        assert_eq!(
            url.driver_target(),
            "postgres://bot:pw@db:5432/app?connect_timeout=3&keepalives=1&keepalives_idle=30\
             &keepalives_interval=10&keepalives_count=3&tcp_user_timeout=30000"
        );
    }

    #[test]
    fn sqlite_targets_are_the_path_or_a_shared_memdb() {
        assert_eq!(DbUrl::sqlite("data/app.db").driver_target(), "data/app.db");
        let memory = DbUrl::sqlite(":memory:").driver_target();
        assert!(memory.starts_with("file:/userbase-"), "{memory}");
        assert!(memory.ends_with("?vfs=memdb"), "{memory}");
        assert_ne!(
            memory,
            DbUrl::sqlite(":memory:").driver_target(),
            "one database per engine"
        );
    }
}
