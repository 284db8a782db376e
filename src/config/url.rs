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
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// Names the in-memory databases of this process apart.
static MEMORY_DATABASES: AtomicUsize = AtomicUsize::new(0);

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
/// The builder methods store exactly what they are given (only `[…]` around an IPv6 host is
/// dropped, on every path alike) and never fail, so they chain; [`DbUrl::validate`] is the one
/// gate that says whether the parts make a URL that means what they say. Everything that uses a
/// URL passes through it: [`parse`](DbUrl::parse),
/// [`Settings::from_lookup`](crate::Settings::from_lookup) and
/// [`Database::new`](crate::Database::new) (for the URL, the migration URL and every replica)
/// refuse what it refuses, with the same [`Error::Config`] naming the part. What it refuses is
/// exactly what could not survive rendering: an empty user name, password, host or database
/// (libpq reads an empty part as absent), a NUL anywhere, port 0, a host that is not a name, an
/// address or a socket directory, an empty query parameter name, and on SQLite any part but the
/// path. For every URL that passes, `DbUrl::parse(&url.render(Secrets::Shown))` gives back an
/// equal `DbUrl`, and libpq reads the rendered string as exactly these parts: no user, password,
/// host, database or query value can end up as another part, whatever characters it holds.
///
/// ```
/// use userbase::config::Secrets;
/// use userbase::DbUrl;
///
/// let url = DbUrl::postgres()
///     .with_username("testuser")
///     .with_password("test p@ss")
///     .with_host("localhost")
///     .with_port(5432)
///     .with_database("testuser");
/// url.validate()?;
/// assert_eq!(
///     url.render(Secrets::Shown),
///     "postgres://testuser:test%20p%40ss@localhost:5432/testuser"
/// );
/// assert_eq!(url.to_string(), "postgres://testuser:***@localhost:5432/testuser");
/// assert_eq!(DbUrl::parse(&url.render(Secrets::Shown))?, url);
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
    /// An empty PostgreSQL URL (`postgres://`) to fill with the builder methods.
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
    pub fn sqlite(path: impl Into<String>) -> Self {
        DbUrl {
            backend: Backend::Sqlite,
            scheme: "sqlite".to_owned(),
            database: Some(path.into()),
            ..DbUrl::postgres()
        }
    }

    /// Sets the user name: any characters but NUL, not empty ([`validate`](DbUrl::validate)
    /// refuses the empty name, which libpq would read as no user, and a NUL).
    pub fn with_username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// Sets the password (hidden by `Display` and `Debug`): any characters but NUL, not empty
    /// ([`validate`](DbUrl::validate) refuses the empty password, which libpq would read as no
    /// password, and a NUL).
    pub fn with_password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Sets the (first) host: a name (`db.internal`), an IPv4 address, an IPv6 address with or without
    /// brackets (`::1` and `[::1]` alike, stored without), optionally with a zone id
    /// (`fe80::1%eth0`), or the absolute path of a Unix-socket directory
    /// (`/var/run/postgresql`). Anything else is refused by [`validate`](DbUrl::validate).
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.first_host().host = Some(unbracketed(host.into()));
        self
    }

    /// Sets the port of the first host: 1 to 65535 ([`validate`](DbUrl::validate) refuses 0).
    pub fn with_port(mut self, port: u16) -> Self {
        self.first_host().port = Some(port);
        self
    }

    /// Adds a host to try after the ones already set, with its own port or libpq's default:
    /// libpq's multi-host URLs (`postgres://h1:5432,h2:5433/db?target_session_attrs=read-write`).
    /// The host is normalised and validated like [`with_host`](DbUrl::with_host)'s, the port
    /// like [`with_port`](DbUrl::with_port)'s.
    pub fn with_additional_host(mut self, host: impl Into<String>, port: Option<u16>) -> Self {
        self.hosts.push(HostPort {
            host: Some(unbracketed(host.into())),
            port,
        });
        self
    }

    /// The first host, created when there is none yet.
    fn first_host(&mut self) -> &mut HostPort {
        if self.hosts.is_empty() {
            self.hosts.push(HostPort::default());
        }
        &mut self.hosts[0]
    }

    /// Sets the database name (PostgreSQL) or file path (SQLite): any characters but NUL, not
    /// empty ([`validate`](DbUrl::validate) refuses the empty name, which libpq would read as no
    /// database, and a NUL).
    pub fn with_database(mut self, database: impl Into<String>) -> Self {
        self.database = Some(database.into());
        self
    }

    /// Adds a query parameter (`?sslmode=require`, `?application_name=bot`, …); PostgreSQL only.
    /// The name is not empty; neither name nor value holds a NUL (an empty value is a value);
    /// [`validate`](DbUrl::validate) refuses the rest.
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
    /// unclosed `[`, a port that is not 1 to 65535) or the parts do not pass
    /// [`validate`](DbUrl::validate). The message names the part and never contains the
    /// password.
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

    /// This URL with query parameter `key` set to `value`, replacing any value it had.
    pub(crate) fn with_query_param_replaced(mut self, key: &str, value: String) -> Self {
        self.query.retain(|(k, _)| k != key);
        self.query.push((key.to_owned(), value));
        self
    }

    /// Checks that the parts make a URL that means exactly what they say.
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
    ///
    /// # Errors
    ///
    /// [`Error::Config`] whose `variable` names the part (`URL host`, `URL port`, `URL user`,
    /// `URL password`, `URL database`, `URL query`, `URL path`); the message never contains the
    /// password or a query value.
    pub fn validate(&self) -> Result<()> {
        self.check().map_err(Invalid::into_part_error)
    }

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
                if self.hosts.iter().any(|h| h.port == Some(0)) {
                    return Err(Invalid::new(
                        Part::Port,
                        "port 0 is not a port: use 1 to 65535",
                    ));
                }
                if let Some(database) = &self.database {
                    check_text(database, Part::Database)?;
                }
                for (key, value) in &self.query {
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
                    return Err(Invalid::new(
                        part,
                        format!(
                            "an SQLite URL takes no {} (it would be ignored)",
                            part.name()
                        ),
                    ));
                }
                let path = self.database.as_deref().unwrap_or_default();
                check_text(path, Part::Path)?;
                if path.starts_with("file:") {
                    return Err(Invalid::new(
                        Part::Path,
                        format!(
                            "the SQLite path `{}` would be read by SQLite as a `file:` URI; write \
                             `./{}` for a file of that name",
                            path.escape_debug(),
                            path.escape_debug()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The string the driver opens: for PostgreSQL the URL with its password, the
    /// [`LIBPQ_SAFETY_DEFAULTS`] it does not set and the default `sslmode` (`config::tls`); for SQLite the file path (a relative path
    /// starting with `file:` prefixed with `./`, so that SQLite never reads it as a URI), or a
    /// shared `memdb` database for `:memory:`. Never printed.
    pub(crate) fn driver_target(&self) -> String {
        match self.backend() {
            Backend::Postgres => {
                let mut with_defaults = self.clone();
                for (key, value) in LIBPQ_SAFETY_DEFAULTS {
                    if with_defaults.query_value(key).is_none() {
                        with_defaults = with_defaults.with_query_param(key, value);
                    }
                }
                if let Some(mode) = super::tls::default_sslmode(self) {
                    with_defaults = with_defaults.with_query_param("sslmode", mode);
                }
                with_defaults.render(Secrets::Shown)
            }
            // `memdb` with a name starting with `/` is one database shared by every connection
            // of the process (unlike plain `:memory:`, one per connection), with normal locking.
            Backend::Sqlite if self.is_memory() => format!(
                "file:/userbase-{}-{}?vfs=memdb",
                std::process::id(),
                MEMORY_DATABASES.fetch_add(1, Ordering::Relaxed)
            ),
            Backend::Sqlite => {
                let path = self.database().unwrap_or_default();
                if path.starts_with("file:") {
                    format!("./{path}")
                } else {
                    path.to_owned()
                }
            }
        }
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

    /// The `Error::Config` variable of [`DbUrl::validate`].
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
        return Ok(DbUrl::sqlite(":memory:"));
    }
    if let Some(query) = input.strip_prefix("sqlite::memory:?") {
        let mut url = DbUrl::sqlite(":memory:");
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
    Ok(DbUrl::sqlite(input))
}

fn parse_sqlite(rest: &str) -> std::result::Result<DbUrl, Invalid> {
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    let mut url = DbUrl::sqlite(decode(path, Part::Path)?);
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
    fn libpq_safety_defaults_are_added_unless_the_url_sets_them() {
        let url = DbUrl::parse("postgres://bot:pw@db:5432/app?connect_timeout=3").unwrap();
        assert_eq!(
            url.driver_target(),
            "postgres://bot:pw@db:5432/app?connect_timeout=3&keepalives=1&keepalives_idle=30\
             &keepalives_interval=10&keepalives_count=3&tcp_user_timeout=30000&sslmode=require"
        );
    }

    #[test]
    fn sqlite_targets_are_the_path_or_a_shared_memdb() {
        assert_eq!(DbUrl::sqlite("data/app.db").driver_target(), "data/app.db");
        // A relative path starting with `file:` is never handed over as a URI.
        assert_eq!(
            DbUrl::sqlite("file:app.db?mode=ro").driver_target(),
            "./file:app.db?mode=ro"
        );
        let memory = DbUrl::sqlite(":memory:").driver_target();
        assert!(memory.starts_with("file:/userbase-"), "{memory}");
        assert!(memory.ends_with("?vfs=memdb"), "{memory}");
        assert_ne!(
            memory,
            DbUrl::sqlite(":memory:").driver_target(),
            "one database per engine"
        );
    }

    /// The string handed to libpq for a host that tries to pick the port, the database and
    /// `sslmode`: the whole value stays the host (encoded inside the brackets), and libpq's own
    /// grammar, which `parse_unchecked` follows, reads back exactly the parts that were set.
    #[test]
    fn an_injecting_host_stays_one_host_in_the_libpq_string() {
        let evil = "::1]:6000/otherdb?sslmode=disable&x=";
        let url = DbUrl::postgres()
            .with_username("bot")
            .with_host(evil)
            .with_port(5432)
            .with_database("app");
        assert!(url.validate().is_err());
        let target = url.driver_target();
        assert_eq!(
            target,
            "postgres://bot@[::1%5D:6000%2Fotherdb%3Fsslmode%3Ddisable%26x%3D]:5432/app\
             ?connect_timeout=10&keepalives=1&keepalives_idle=30&keepalives_interval=10\
             &keepalives_count=3&tcp_user_timeout=30000&sslmode=require"
        );
        let read = parse_unchecked(&target).unwrap();
        assert_eq!(read.host(), Some(evil));
        assert_eq!(read.port(), Some(5432));
        assert_eq!(read.database(), Some("app"));
        // The host is a name, not this machine: TLS is required (`config::tls`).
        assert_eq!(read.query_value("sslmode"), Some("require"));
        assert_eq!(read.query().len(), LIBPQ_SAFETY_DEFAULTS.len() + 1);
    }
}
