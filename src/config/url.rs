//! [`DbUrl`]: a database URL built from parts or parsed, rendered with or without its secrets.
//!
//! The PostgreSQL side reads URLs the way libpq does (`conninfo_uri_parse_options` in
//! `fe-connect.c`): credentials up to the first `@` before any `/`, a host in `[…]` or up to
//! `:`/`/`/`?`/`,`, the port up to `/`/`?`/`,`, the database up to `?`, then `key=value` pairs
//! split on `&`; every piece is percent-decoded on its own and `+` stays a `+`. Rendering encodes
//! every character of every part that could end it, so what libpq reads back is exactly the parts.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

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

/// The libpq connection parameters that carry a secret, hidden like the password when given as
/// query parameters (`?sslpassword=…`): `password`, `sslpassword` (the client key's passphrase),
/// `scram_client_key` and `scram_server_key` (SCRAM keys, PostgreSQL 18) and `oauth_client_secret`
/// (PostgreSQL 18). Matched without regard to case; any key containing `password` or `secret` is
/// hidden too. Paths to secrets (`sslkey`, `sslcert`, `passfile`, `sslrootcert`) are not secrets
/// and stay visible, as do `user`, `host` and `application_name`.
pub const SECRET_QUERY_PARAMS: [&str; 5] = [
    "password",
    "sslpassword",
    "scram_client_key",
    "scram_server_key",
    "oauth_client_secret",
];

/// Whether the value of query parameter `key` is hidden (see [`SECRET_QUERY_PARAMS`]).
fn is_secret_param(key: &str) -> bool {
    let key = key.to_lowercase();
    SECRET_QUERY_PARAMS.contains(&key.as_str())
        || key.contains("password")
        || key.contains("secret")
}

/// What is percent-encoded in user names, passwords, hosts, database names and query parameters:
/// everything but RFC 3986's unreserved characters.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// What is percent-encoded in a bracketed IPv6 host: as [`COMPONENT`], but `:` stays (a zone
/// id's `%` becomes `%25`).
const IPV6: &AsciiSet = &COMPONENT.remove(b':');

/// What is percent-encoded in an SQLite path: as [`COMPONENT`], but `/` stays.
const PATH: &AsciiSet = &COMPONENT.remove(b'/');

/// The database engines userbase speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
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

/// Whether [`DbUrl::render`] writes the URL's secrets (the password and the
/// [`SECRET_QUERY_PARAMS`]) or `***` in their place.
///
/// SQLAlchemy's `render_as_string(hide_password=True)` is `render(Secrets::Hidden)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Secrets {
    /// The password and secret query parameters as they are: the string a driver needs.
    Shown,
    /// `***` in place of the password and of every secret query parameter's value.
    Hidden,
}

/// A database URL built from parts or parsed from a string: SQLAlchemy's `URL`.
///
/// Its [`Display`](fmt::Display) and [`Debug`] hide the password and the value of every secret
/// query parameter ([`SECRET_QUERY_PARAMS`]: `?password=…`, `?sslpassword=…`, …); only
/// [`render(Secrets::Shown)`](DbUrl::render) shows them. Everything that prints a URL (the
/// `Debug` of [`Settings`](crate::Settings) and [`Database`](crate::Database), the `url` of
/// [`Error::Connect`], the pool's warnings) prints it that way.
///
/// # Exactness
///
/// Every `DbUrl` means exactly what its parts say: each way of making one refuses, with an
/// [`Error::Config`] naming the part (`URL user`, `URL password`, `URL host`, `URL port`,
/// `URL database`, `URL query`, `URL path`), exactly what could not survive rendering, so there
/// is nothing left to check afterwards. The builder methods ([`sqlite`](DbUrl::sqlite) and the
/// `with_*` setters) refuse a part when it is set, and otherwise store exactly what they are given
/// (only `[…]` around an IPv6 host is dropped, on every path alike); [`parse`](DbUrl::parse)
/// refuses the same parts. What they refuse: an empty user name, password, host or database
/// (libpq reads an empty part as absent), a NUL anywhere, port 0, a host that is not a name, an
/// address or a socket directory, an empty query parameter name, on SQLite any part but the path,
/// and an SQLite path that starts with `file:`. The message never contains the password or a
/// query value. For every `DbUrl`, `DbUrl::parse(&url.render(Secrets::Shown))` gives back an
/// equal `DbUrl`, and libpq reads the rendered string as exactly these parts: no user, password,
/// host, database or query value can end up as another part, whatever characters it holds.
///
/// ```
/// use userbase::config::Secrets;
/// use userbase::{DbUrl, Error};
///
/// let url = DbUrl::postgres()
///     .with_username("testuser")?
///     .with_password("test p@ss")?
///     .with_host("localhost")?
///     .with_port(5432)?
///     .with_database("testuser")?;
/// assert_eq!(
///     url.render(Secrets::Shown),
///     "postgres://testuser:test%20p%40ss@localhost:5432/testuser"
/// );
/// assert_eq!(url.to_string(), "postgres://testuser:***@localhost:5432/testuser");
/// assert_eq!(DbUrl::parse(&url.render(Secrets::Shown))?, url);
/// let refused = DbUrl::postgres().with_host("db:6000/other");
/// assert!(matches!(
///     refused,
///     Err(Error::Config { variable: Some(part), .. }) if part == "URL host"
/// ));
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
    /// libpq's host list, in order (`h1:5432,h2:5433`); empty when no host or port is set.
    hosts: Vec<HostPort>,
    /// PostgreSQL: database name. SQLite: file path, or `:memory:`.
    database: Option<String>,
    query: Vec<(String, String)>,
}

/// One entry of libpq's host list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct HostPort {
    /// Without brackets for IPv6; `None`: libpq's default host.
    host: Option<String>,
    /// `None`: libpq's default port.
    port: Option<u16>,
}

impl DbUrl {
    /// An empty PostgreSQL URL (`postgres://`) to fill with the builder methods: libpq's default
    /// host, port, user and database until they are set.
    #[doc(alias = "create")]
    pub fn postgres() -> Self {
        DbUrl {
            backend: Backend::Postgres,
            scheme: "postgres".to_owned(),
            username: None,
            password: None,
            hosts: Vec::new(),
            database: None,
            query: Vec::new(),
        }
    }

    /// An SQLite URL for a file path, or for `:memory:` (an in-memory database).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `URL path` when the path is empty, holds a NUL, or starts with
    /// `file:` (SQLite would read it as a URI: write `./file:…` for a file of that name).
    pub fn sqlite(path: impl Into<String>) -> Result<Self> {
        let path = path.into();
        check_path(&path).map_err(Invalid::into_part_error)?;
        Ok(DbUrl::sqlite_unchecked(path))
    }

    /// The SQLite URL of [`DEFAULT_SQLITE_PATH`](crate::config::DEFAULT_SQLITE_PATH), a path
    /// [`sqlite`](DbUrl::sqlite) accepts (a unit test holds it to that).
    pub(crate) fn default_sqlite() -> Self {
        DbUrl::sqlite_unchecked(super::DEFAULT_SQLITE_PATH.to_owned())
    }

    /// An SQLite URL for `path` as given: for the parser, which checks the whole URL after.
    fn sqlite_unchecked(path: String) -> Self {
        DbUrl {
            backend: Backend::Sqlite,
            scheme: "sqlite".to_owned(),
            database: Some(path),
            ..DbUrl::postgres()
        }
    }

    /// Sets the user name: any characters but NUL, not empty (libpq would read an empty name as
    /// no user). PostgreSQL only.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `URL user` when the name is empty or holds a NUL, or when this is
    /// an SQLite URL (which takes no user name).
    pub fn with_username(self, username: impl Into<String>) -> Result<Self> {
        self.set_username(username.into())
            .map_err(Invalid::into_part_error)
    }

    /// [`with_username`](DbUrl::with_username), refusing with the part.
    pub(crate) fn set_username(mut self, username: String) -> std::result::Result<Self, Invalid> {
        self.postgres_only(Part::User)?;
        check_text(&username, Part::User)?;
        self.username = Some(username);
        Ok(self)
    }

    /// Sets the password (hidden by `Display` and `Debug`): any characters but NUL, not empty
    /// (libpq would read an empty password as none). PostgreSQL only.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `URL password` when the password is empty or holds a NUL, or when
    /// this is an SQLite URL (which takes no password). The message never contains the password.
    pub fn with_password(self, password: impl Into<String>) -> Result<Self> {
        self.set_password(password.into())
            .map_err(Invalid::into_part_error)
    }

    /// [`with_password`](DbUrl::with_password), refusing with the part.
    pub(crate) fn set_password(mut self, password: String) -> std::result::Result<Self, Invalid> {
        self.postgres_only(Part::Password)?;
        check_text(&password, Part::Password)?;
        self.password = Some(password);
        Ok(self)
    }

    /// Sets the (first) host: a name of ASCII letters, digits, `-`, `.` and `_` (`db.internal`,
    /// at most 253 of them), an IPv4 address, an IPv6 address with or without brackets (`::1`
    /// and `[::1]` alike, stored without), optionally with a zone id of name characters
    /// (`fe80::1%eth0`), or the absolute path of a Unix-socket directory without `,`
    /// (`/var/run/postgresql`). PostgreSQL only.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `URL host` when the host is none of these (an empty host, a NUL, a
    /// host that would carry a port, a database or a parameter, …) or when this is an SQLite
    /// URL (which takes no host).
    pub fn with_host(self, host: impl Into<String>) -> Result<Self> {
        self.set_host(host.into()).map_err(Invalid::into_part_error)
    }

    /// [`with_host`](DbUrl::with_host), refusing with the part.
    pub(crate) fn set_host(mut self, host: String) -> std::result::Result<Self, Invalid> {
        self.postgres_only(Part::Host)?;
        let host = unbracketed(host);
        check_host(&host)?;
        self.first_host().host = Some(host);
        Ok(self)
    }

    /// Sets the port of the first host: 1 to 65535. PostgreSQL only.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `URL port` when the port is 0 or when this is an SQLite URL (which
    /// takes no port).
    pub fn with_port(self, port: u16) -> Result<Self> {
        self.set_port(port).map_err(Invalid::into_part_error)
    }

    /// [`with_port`](DbUrl::with_port), refusing with the part.
    pub(crate) fn set_port(mut self, port: u16) -> std::result::Result<Self, Invalid> {
        self.postgres_only(Part::Port)?;
        check_port(port)?;
        self.first_host().port = Some(port);
        Ok(self)
    }

    /// Adds a host to try after the ones already set, with its own port or libpq's default:
    /// libpq's multi-host URLs (`postgres://h1:5432,h2:5433/db?target_session_attrs=read-write`).
    /// The host is normalised and checked like [`with_host`](DbUrl::with_host)'s, the port like
    /// [`with_port`](DbUrl::with_port)'s. PostgreSQL only.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `URL host` when the host is refused (checked first) or this is an
    /// SQLite URL, for `URL port` when the port is 0.
    pub fn with_additional_host(self, host: impl Into<String>, port: Option<u16>) -> Result<Self> {
        self.add_host(host.into(), port)
            .map_err(Invalid::into_part_error)
    }

    /// [`with_additional_host`](DbUrl::with_additional_host), refusing with the part.
    fn add_host(mut self, host: String, port: Option<u16>) -> std::result::Result<Self, Invalid> {
        self.postgres_only(Part::Host)?;
        let host = unbracketed(host);
        check_host(&host)?;
        if let Some(port) = port {
            check_port(port)?;
        }
        self.hosts.push(HostPort {
            host: Some(host),
            port,
        });
        Ok(self)
    }

    /// The first host, created when there is none yet.
    fn first_host(&mut self) -> &mut HostPort {
        if self.hosts.is_empty() {
            self.hosts.push(HostPort::default());
        }
        &mut self.hosts[0]
    }

    /// Refuses `part` on an SQLite URL, which would ignore it.
    fn postgres_only(&self, part: Part) -> std::result::Result<(), Invalid> {
        match self.backend {
            Backend::Postgres => Ok(()),
            Backend::Sqlite => Err(not_on_sqlite(part)),
        }
    }

    /// Sets the database name (PostgreSQL: any characters but NUL, not empty, since libpq would
    /// read an empty name as no database) or the file path (SQLite: as
    /// [`sqlite`](DbUrl::sqlite)'s path).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `URL database` when a PostgreSQL database name is empty or holds a
    /// NUL; for `URL path` when an SQLite path is empty, holds a NUL or starts with `file:`.
    pub fn with_database(self, database: impl Into<String>) -> Result<Self> {
        self.set_database(database.into())
            .map_err(Invalid::into_part_error)
    }

    /// [`with_database`](DbUrl::with_database), refusing with the part.
    pub(crate) fn set_database(mut self, database: String) -> std::result::Result<Self, Invalid> {
        match self.backend {
            Backend::Postgres => check_text(&database, Part::Database)?,
            Backend::Sqlite => check_path(&database)?,
        }
        self.database = Some(database);
        Ok(self)
    }

    /// Adds a query parameter (`?sslmode=require`, `?application_name=bot`, …) after the ones
    /// already set; PostgreSQL only. The name is not empty; neither name nor value holds a NUL
    /// (an empty value is a value).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `URL query` when the name is empty or holds a NUL, the value holds
    /// a NUL, or this is an SQLite URL (which takes no query parameter). The message names the
    /// parameter, never its value.
    pub fn with_query_param(
        self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self> {
        self.set_query_param(key.into(), value.into())
            .map_err(Invalid::into_part_error)
    }

    /// [`with_query_param`](DbUrl::with_query_param), refusing with the part.
    pub(crate) fn set_query_param(
        self,
        key: String,
        value: String,
    ) -> std::result::Result<Self, Invalid> {
        self.postgres_only(Part::Query)?;
        check_query_param(&key, &value)?;
        Ok(self.push_query_param(key, value))
    }

    /// Adds a query parameter known to pass [`with_query_param`](DbUrl::with_query_param)'s
    /// checks (a PostgreSQL URL, a name from a constant, a value without NUL).
    pub(super) fn push_query_param(
        mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
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

    /// Whether a password is set (the password itself is only in
    /// [`render(Secrets::Shown)`](DbUrl::render)).
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    /// The (first) host, if any (IPv6 without brackets).
    pub fn host(&self) -> Option<&str> {
        self.hosts.first().and_then(|h| h.host.as_deref())
    }

    /// The port of the (first) host, if any.
    pub fn port(&self) -> Option<u16> {
        self.hosts.first().and_then(|h| h.port)
    }

    /// Every host with its port, in the order libpq tries them (`None`: libpq's default).
    pub fn hosts(&self) -> Vec<(Option<&str>, Option<u16>)> {
        self.hosts
            .iter()
            .map(|h| (h.host.as_deref(), h.port))
            .collect()
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

    /// Renders the URL as a string, with its secrets or with `***` in their place.
    ///
    /// SQLAlchemy's `url.render_as_string(hide_password=…)`. Every part is percent-encoded, so
    /// that none can be read as another; an IPv6 host is written in brackets.
    #[doc(alias = "render_as_string")]
    pub fn render(&self, secrets: Secrets) -> String {
        let hide = secrets == Secrets::Hidden;
        let mut out = String::new();
        match self.backend {
            Backend::Sqlite => match self.database.as_deref() {
                Some(":memory:") => out.push_str("sqlite::memory:"),
                path => {
                    out.push_str("sqlite://");
                    out.extend(utf8_percent_encode(path.unwrap_or_default(), PATH));
                }
            },
            Backend::Postgres => {
                out.push_str(&self.scheme);
                out.push_str("://");
                if let Some(user) = &self.username {
                    out.extend(utf8_percent_encode(user, COMPONENT));
                }
                if let Some(password) = &self.password {
                    out.push(':');
                    if hide {
                        out.push_str("***");
                    } else {
                        out.extend(utf8_percent_encode(password, COMPONENT));
                    }
                }
                if self.username.is_some() || self.password.is_some() {
                    out.push('@');
                }
                for (i, HostPort { host, port }) in self.hosts.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    if let Some(host) = host {
                        if is_ipv6_like(host) {
                            out.push('[');
                            out.extend(utf8_percent_encode(host, IPV6));
                            out.push(']');
                        } else {
                            out.extend(utf8_percent_encode(host, COMPONENT));
                        }
                    }
                    if let Some(port) = port {
                        out.push(':');
                        out.push_str(&port.to_string());
                    }
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
            if hide && is_secret_param(key) {
                out.push_str("***");
            } else {
                out.extend(utf8_percent_encode(value, COMPONENT));
            }
        }
        out
    }

    /// Parses a URL: `postgres://` / `postgresql://` (read as libpq reads it), `sqlite://path`,
    /// `sqlite::memory:`, or a bare file path (`./app.db`, `/var/lib/app.db`, `app.sqlite3`),
    /// which means SQLite. Surrounding whitespace is ignored.
    ///
    /// A bare path must not look like a URL gone wrong: `postgres//host/db`, `postgres:/host`,
    /// `sqlite:app.db`, anything with `//` or `?`, or a first directory named `postgres` /
    /// `postgresql` are refused (write `sqlite://…` or `./…` for such files).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `DATABASE_URL` when the input is empty, the scheme is not one of
    /// these (the message names it), the syntax is broken (bad percent-encoding, a raw space, an
    /// unclosed `[`, a port that is not 1 to 65535) or a part is one the builder methods refuse
    /// (an empty user, a host that is not a host, an SQLite URL with a query, …). The message
    /// names the part and never contains the password.
    pub fn parse(input: &str) -> Result<Self> {
        let url = parse_unchecked(input.trim()).map_err(|e| e.in_variable("DATABASE_URL"))?;
        url.check().map_err(|e| e.in_variable("DATABASE_URL"))?;
        Ok(url)
    }

    /// [`parse`](DbUrl::parse), with errors naming `variable` (`DATABASE_REPLICA_URLS`, …).
    pub(crate) fn parse_in(input: &str, variable: &str) -> Result<Self> {
        let url = parse_unchecked(input.trim()).map_err(|e| e.in_variable(variable))?;
        url.check().map_err(|e| e.in_variable(variable))?;
        Ok(url)
    }

    /// This URL with query parameter `key` set to `value`, replacing any value it had. For a
    /// PostgreSQL URL, a `key` from a constant and a `value` without NUL: the checks of
    /// [`with_query_param`](DbUrl::with_query_param), which this skips.
    pub(crate) fn with_query_param_replaced(mut self, key: &str, value: String) -> Self {
        self.query.retain(|(k, _)| k != key);
        self.query.push((key.to_owned(), value));
        self
    }

    /// Checks that parsed parts make a URL that means exactly what they say: the builder's
    /// checks, applied to the whole URL (every [`DbUrl`] passes them, since every way of making
    /// one checks them).
    ///
    /// PostgreSQL: a user name, password or database name is not empty (libpq would ignore it)
    /// and holds no NUL; the host is a name (ASCII letters, digits, `-`, `.`, `_`), an IPv4
    /// address, an IPv6 address (with an optional zone id of name characters) or an absolute
    /// Unix-socket directory without `,`; the port is not 0; query keys are not empty; no query
    /// key or value holds a NUL. A user or port without a host is fine (libpq's default host).
    ///
    /// SQLite: a non-empty path without NUL that does not start with `file:` (SQLite would read it
    /// as a URI; write `./file:…`), and no user, password, host, port or query parameter (they
    /// would be ignored).
    pub(crate) fn check(&self) -> std::result::Result<(), Invalid> {
        match self.backend {
            Backend::Postgres => {
                if let Some(user) = &self.username {
                    check_text(user, Part::User)?;
                }
                if let Some(password) = &self.password {
                    check_text(password, Part::Password)?;
                }
                for HostPort { host, .. } in &self.hosts {
                    if let Some(host) = host {
                        check_host(host)?;
                    }
                }
                for HostPort { port, .. } in &self.hosts {
                    if let Some(port) = port {
                        check_port(*port)?;
                    }
                }
                if let Some(database) = &self.database {
                    check_text(database, Part::Database)?;
                }
                for (key, value) in &self.query {
                    check_query_param(key, value)?;
                }
            }
            Backend::Sqlite => {
                let extra = [
                    (Part::User, self.username.is_some()),
                    (Part::Password, self.password.is_some()),
                    (Part::Host, self.hosts.iter().any(|h| h.host.is_some())),
                    (Part::Port, self.hosts.iter().any(|h| h.port.is_some())),
                    (Part::Query, !self.query.is_empty()),
                ];
                if let Some((part, _)) = extra.into_iter().find(|(_, set)| *set) {
                    return Err(not_on_sqlite(part));
                }
                check_path(self.database.as_deref().unwrap_or_default())?;
            }
        }
        Ok(())
    }
}

/// A part of a URL, for errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// The URL as a whole (scheme, syntax).
    Url,
    User,
    Password,
    Host,
    Port,
    Database,
    Query,
    /// An SQLite file path.
    Path,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Url => "URL",
            Part::User => "user name",
            Part::Password => "password",
            Part::Host => "host",
            Part::Port => "port",
            Part::Database => "database name",
            Part::Query => "query parameter",
            Part::Path => "path",
        }
    }

    /// The environment variable that sets this part of a URL built from the `DB_*` parts.
    pub(crate) fn env_variable(self) -> &'static str {
        match self {
            Part::User => "DB_USER",
            Part::Password => "DB_PASS",
            Part::Host => "DB_HOST",
            Part::Port => "DB_PORT",
            Part::Database => "DB_NAME",
            Part::Url | Part::Query | Part::Path => "DATABASE_URL",
        }
    }

    /// The `Error::Config` variable of the builder's refusals.
    fn label(self) -> &'static str {
        match self {
            Part::Url => "URL",
            Part::User => "URL user",
            Part::Password => "URL password",
            Part::Host => "URL host",
            Part::Port => "URL port",
            Part::Database => "URL database",
            Part::Query => "URL query",
            Part::Path => "URL path",
        }
    }
}

/// Why a URL or one of its parts is refused: the part and a message that never holds a secret.
#[derive(Debug)]
pub(crate) struct Invalid {
    part: Part,
    message: String,
}

impl Invalid {
    fn new(part: Part, message: impl Into<String>) -> Self {
        Invalid {
            part,
            message: message.into(),
        }
    }

    /// An error about `variable` (which holds the whole URL).
    pub(crate) fn in_variable(self, variable: &str) -> Error {
        Error::config(variable, self.message)
    }

    /// An error naming the `DB_*` variable that sets the part.
    pub(crate) fn in_env_variable(self) -> Error {
        Error::config(self.part.env_variable(), self.message)
    }

    /// An error naming the part.
    fn into_part_error(self) -> Error {
        Error::config(self.part.label(), self.message)
    }
}

fn check_text(value: &str, part: Part) -> std::result::Result<(), Invalid> {
    let shown = |value: &str| match part {
        Part::Password => String::new(),
        _ => format!(" `{}`", value.escape_debug()),
    };
    if value.is_empty() {
        return Err(Invalid::new(
            part,
            format!("the {} is empty: leave it unset instead", part.name()),
        ));
    }
    if value.contains('\0') {
        return Err(Invalid::new(
            part,
            format!("the {}{} holds a NUL character", part.name(), shown(value)),
        ));
    }
    Ok(())
}

/// `part` set on an SQLite URL.
fn not_on_sqlite(part: Part) -> Invalid {
    Invalid::new(
        part,
        format!(
            "an SQLite URL takes no {} (it would be ignored)",
            part.name()
        ),
    )
}

/// An SQLite path: not empty, no NUL, not starting with `file:` (SQLite would read it as a URI).
fn check_path(path: &str) -> std::result::Result<(), Invalid> {
    check_text(path, Part::Path)?;
    if path.starts_with("file:") {
        return Err(Invalid::new(
            Part::Path,
            format!(
                "the SQLite path `{}` would be read by SQLite as a `file:` URI; write `./{}` for \
                 a file of that name",
                path.escape_debug(),
                path.escape_debug()
            ),
        ));
    }
    Ok(())
}

fn check_port(port: u16) -> std::result::Result<(), Invalid> {
    if port == 0 {
        return Err(Invalid::new(
            Part::Port,
            "port 0 is not a port: use 1 to 65535",
        ));
    }
    Ok(())
}

/// A query parameter: a name that is not empty, no NUL in the name or the value. The message
/// names the parameter, never its value.
fn check_query_param(key: &str, value: &str) -> std::result::Result<(), Invalid> {
    if key.is_empty() || key.contains('\0') {
        return Err(Invalid::new(
            Part::Query,
            format!(
                "the query parameter name `{}` is empty or holds a NUL",
                key.escape_debug()
            ),
        ));
    }
    if value.contains('\0') {
        return Err(Invalid::new(
            Part::Query,
            format!(
                "the value of query parameter `{}` holds a NUL",
                key.escape_debug()
            ),
        ));
    }
    Ok(())
}

/// `host` without the brackets around an IPv6 address (`[::1]` → `::1`); other hosts as given.
fn unbracketed(host: String) -> String {
    let inner = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .filter(|h| h.contains(':'))
        .map(str::to_owned);
    inner.unwrap_or(host)
}

/// An IPv6 address (rendered in brackets) rather than a name or a socket directory.
fn is_ipv6_like(host: &str) -> bool {
    host.contains(':') && !host.starts_with('/')
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')
}

fn check_host(host: &str) -> std::result::Result<(), Invalid> {
    let ok = if let Some(dir) = host.strip_prefix('/') {
        !dir.contains(['\0', ','])
    } else if is_ipv6_like(host) {
        let (address, zone) = match host.split_once('%') {
            Some((address, zone)) => (address, Some(zone)),
            None => (host, None),
        };
        address.parse::<Ipv6Addr>().is_ok()
            && zone.is_none_or(|z| !z.is_empty() && z.bytes().all(is_name_char))
    } else {
        host.parse::<Ipv4Addr>().is_ok()
            || (!host.is_empty() && host.len() <= 253 && host.bytes().all(is_name_char))
    };
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(
            Part::Host,
            format!(
                "the host `{}` is not a host name, an IPv4 address, an IPv6 address or a \
                 Unix-socket directory",
                host.escape_debug()
            ),
        ))
    }
}

/// Strict percent-decoding: `%` must start two hex digits; the result must be UTF-8.
fn decode(raw: &str, part: Part) -> std::result::Result<String, Invalid> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = |at: usize| bytes.get(at).and_then(|d| char::from(*d).to_digit(16));
            match (hex(i + 1), hex(i + 2)) {
                (Some(hi), Some(lo)) => {
                    out.push(u8::try_from(hi * 16 + lo).unwrap_or_default());
                    i += 3;
                }
                _ => {
                    return Err(Invalid::new(
                        part,
                        format!(
                            "the {} has a `%` that does not start a percent-encoded byte (write \
                             `%25` for `%`)",
                            part.name()
                        ),
                    ))
                }
            }
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| {
        Invalid::new(
            part,
            format!("the {} is not valid UTF-8 once decoded", part.name()),
        )
    })
}

fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

fn unsupported_scheme(scheme: &str) -> Invalid {
    Invalid::new(
        Part::Url,
        format!(
            "unsupported URL scheme `{}`: use postgres://, postgresql://, sqlite:// or a file path \
             (`./{}:…` for a file of that name)",
            scheme.escape_debug(),
            scheme.escape_debug()
        ),
    )
}

/// Whether `s` is written like a URL scheme (RFC 3986: a letter, then letters, digits, `+-.`).
fn is_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// Parses without [`DbUrl::check`]; the input is trimmed.
fn parse_unchecked(input: &str) -> std::result::Result<DbUrl, Invalid> {
    if input.is_empty() {
        return Err(Invalid::new(Part::Url, "the URL is empty"));
    }
    if input == "sqlite::memory:" || input == ":memory:" {
        return Ok(DbUrl::sqlite_unchecked(":memory:".to_owned()));
    }
    if let Some(query) = input.strip_prefix("sqlite::memory:?") {
        let mut url = DbUrl::sqlite_unchecked(":memory:".to_owned());
        url.query = parse_query(query)?;
        return Ok(url);
    }
    match input.split_once("://") {
        Some(("sqlite", rest)) => parse_sqlite(rest),
        Some((scheme @ ("postgres" | "postgresql"), rest)) => parse_postgres(scheme, rest),
        Some((scheme, _)) if is_scheme(scheme) => Err(unsupported_scheme(scheme)),
        _ => parse_bare_path(input),
    }
}

/// A bare file path, unless it looks like a URL gone wrong.
fn parse_bare_path(input: &str) -> std::result::Result<DbUrl, Invalid> {
    let bytes = input.as_bytes();
    let windows_drive = bytes.len() > 2
        && bytes[0].is_ascii_alphabetic()
        && bytes[1] == b':'
        && matches!(bytes[2], b'/' | b'\\');
    if !windows_drive {
        if let Some((scheme, _)) = input.split_once(':').filter(|(s, _)| is_scheme(s)) {
            return Err(match scheme {
                "postgres" | "postgresql" | "sqlite" => Invalid::new(
                    Part::Url,
                    format!("`{scheme}:` must be followed by `//`: write {scheme}://…"),
                ),
                other => unsupported_scheme(other),
            });
        }
    }
    let first_segment = input.split(['/', '\\']).next().unwrap_or_default();
    if input.contains("//") || matches!(first_segment, "postgres" | "postgresql") {
        return Err(Invalid::new(
            Part::Url,
            "the URL looks like a postgres:// URL with its `:` missing; write postgres://… (or \
             sqlite://… / ./… for a file path)",
        ));
    }
    if input.contains('?') {
        return Err(Invalid::new(
            Part::Path,
            "a bare file path cannot hold `?`: write sqlite://… with `%3F` for a file of that name",
        ));
    }
    Ok(DbUrl::sqlite_unchecked(input.to_owned()))
}

fn parse_sqlite(rest: &str) -> std::result::Result<DbUrl, Invalid> {
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    let mut url = DbUrl::sqlite_unchecked(decode(path, Part::Path)?);
    if let Some(query) = query {
        url.query = parse_query(query)?;
    }
    Ok(url)
}

/// libpq's URI grammar (see the module docs).
fn parse_postgres(scheme: &str, rest: &str) -> std::result::Result<DbUrl, Invalid> {
    if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Invalid::new(
            Part::Url,
            "the URL holds a space or control character: percent-encode it (`%20` for a space)",
        ));
    }
    let mut url = DbUrl {
        scheme: scheme.to_owned(),
        ..DbUrl::postgres()
    };
    let mut p = rest;
    // Credentials: up to the first `@`, when it comes before any `/`.
    if let Some(at) = p.find(['@', '/']).filter(|&i| p.as_bytes()[i] == b'@') {
        let credentials = &p[..at];
        p = &p[at + 1..];
        let (user, password) = match credentials.split_once(':') {
            Some((user, password)) => (user, Some(password)),
            None => (credentials, None),
        };
        url.username = non_empty(decode(user, Part::User)?);
        url.password = password
            .map(|password| decode(password, Part::Password))
            .transpose()?
            .and_then(non_empty);
    }
    // Hosts, separated by `,`: each `[IPv6]` or up to `:`, `/`, `?` or `,`, then `:port`.
    loop {
        let (entry, rest) = parse_host_port(p)?;
        url.hosts.push(entry);
        match rest.strip_prefix(',') {
            Some(next) => p = next,
            None => {
                p = rest;
                break;
            }
        }
    }
    // A lone empty host (`postgres:///db`, `postgres://u@/db`) is no host at all.
    if url.hosts.len() == 1 && url.hosts[0] == HostPort::default() {
        url.hosts.clear();
    }
    if let Some(after_slash) = p.strip_prefix('/') {
        let end = after_slash.find('?').unwrap_or(after_slash.len());
        url.database = non_empty(decode(&after_slash[..end], Part::Database)?);
        p = &after_slash[end..];
    }
    if let Some(query) = p.strip_prefix('?') {
        url.query = parse_query(query)?;
    }
    Ok(url)
}

/// One `host[:port]` of libpq's host list; returns it and what follows it.
fn parse_host_port(mut p: &str) -> std::result::Result<(HostPort, &str), Invalid> {
    let host_raw;
    if let Some(bracketed) = p.strip_prefix('[') {
        let Some(end) = bracketed.find(']') else {
            return Err(Invalid::new(Part::Host, "the IPv6 host has no closing `]`"));
        };
        host_raw = &bracketed[..end];
        if host_raw.is_empty() {
            return Err(Invalid::new(Part::Host, "the IPv6 host `[]` is empty"));
        }
        p = &bracketed[end + 1..];
        if !(p.is_empty() || p.starts_with([':', '/', '?', ','])) {
            return Err(Invalid::new(
                Part::Host,
                "the IPv6 host's `]` must be followed by `:`, `/`, `?`, `,` or the end",
            ));
        }
    } else {
        let end = p.find([':', '/', '?', ',']).unwrap_or(p.len());
        host_raw = &p[..end];
        p = &p[end..];
    }
    let mut entry = HostPort {
        host: non_empty(decode(host_raw, Part::Host)?),
        port: None,
    };
    if let Some(after_colon) = p.strip_prefix(':') {
        let end = after_colon
            .find(['/', '?', ','])
            .unwrap_or(after_colon.len());
        let port = &after_colon[..end];
        p = &after_colon[end..];
        if !port.is_empty() {
            let parsed = port
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| port.parse::<u16>().ok())
                .flatten();
            match parsed {
                Some(number) => entry.port = Some(number),
                None => {
                    return Err(Invalid::new(
                        Part::Port,
                        format!(
                            "the port `{}` is not a number from 1 to 65535",
                            port.escape_debug()
                        ),
                    ))
                }
            }
        }
    }
    Ok((entry, p))
}

/// `key=value` pairs split on `&` (one trailing `&` allowed, as libpq does); `+` stays `+`.
fn parse_query(query: &str) -> std::result::Result<Vec<(String, String)>, Invalid> {
    let query = query.strip_suffix('&').unwrap_or(query);
    if query.is_empty() {
        return Ok(Vec::new());
    }
    query
        .split('&')
        .map(|pair| {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                Invalid::new(Part::Query, "a query parameter has no `=` (`key=value`)")
            })?;
            if value.contains('=') {
                return Err(Invalid::new(
                    Part::Query,
                    "a query parameter has a second `=`: write `%3D` in the value",
                ));
            }
            Ok((decode(key, Part::Query)?, decode(value, Part::Query)?))
        })
        .collect()
}

impl FromStr for DbUrl {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        DbUrl::parse(s)
    }
}

impl fmt::Display for DbUrl {
    /// The URL with the password and secret query values replaced by `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(Secrets::Hidden))
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DbUrl")
            .field(&self.render(Secrets::Hidden))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_sqlite_url_is_one_the_builder_accepts() {
        assert_eq!(
            DbUrl::default_sqlite(),
            DbUrl::sqlite(super::super::DEFAULT_SQLITE_PATH).unwrap()
        );
        DbUrl::default_sqlite().check().unwrap();
    }

    /// The builder refuses a host that tries to pick the port, the database and `sslmode`; were
    /// one stored anyway, rendering would still keep the whole value the host (encoded inside the
    /// brackets), and libpq's own grammar, which `parse_unchecked` follows, would read back
    /// exactly the parts that were set.
    #[test]
    fn an_injecting_host_stays_one_host_in_the_libpq_string() {
        let evil = "::1]:6000/otherdb?sslmode=disable&x=";
        let refused = DbUrl::postgres().set_host(evil.to_owned()).unwrap_err();
        assert_eq!(refused.part, Part::Host);
        let url = DbUrl {
            username: Some("bot".to_owned()),
            hosts: vec![HostPort {
                host: Some(evil.to_owned()),
                port: Some(5432),
            }],
            database: Some("app".to_owned()),
            ..DbUrl::postgres()
        };
        assert_eq!(url.check().unwrap_err().part, Part::Host);
        let target = url.render(Secrets::Shown);
        assert_eq!(
            target,
            "postgres://bot@[::1%5D:6000%2Fotherdb%3Fsslmode%3Ddisable%26x%3D]:5432/app"
        );
        let read = parse_unchecked(&target).unwrap();
        assert_eq!(read.host(), Some(evil));
        assert_eq!(read.port(), Some(5432));
        assert_eq!(read.database(), Some("app"));
        assert!(read.query().is_empty());
    }
}
