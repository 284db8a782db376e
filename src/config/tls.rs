//! TLS by default to PostgreSQL servers that are not on this machine.
//!
//! libpq's own default, `sslmode=prefer`, encrypts only when the server offers TLS and never
//! checks who answered: a man in the middle who offers no TLS reads everything, the password
//! exchange included. The driver is therefore given, when the URL sets no `sslmode` (and
//! `PGSSLMODE` is unset):
//!
//! - `verify-full` when the URL names an `sslrootcert` (env `DB_SSLROOTCERT`): the server's
//!   certificate must be signed by that CA and name the host;
//! - `require` when a host is not this machine: encrypted, and refused when the server offers
//!   no TLS;
//! - nothing for hosts that are this machine (a loopback address, `localhost`, a socket
//!   directory): libpq's default.
//!
//! An explicit `sslmode` (in the URL, env `DB_SSLMODE`, or libpq's `PGSSLMODE`) is honoured; one
//! weaker than `require` for a host that is not this machine is logged once, at `warn`.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, PoisonError};

use super::url::DbUrl;
use super::Backend;
use crate::error::{Error, Result};

/// The `sslmode` values libpq knows, weakest first.
pub const SSLMODES: [&str; 6] = [
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// The `sslmode`s that send data (and the password exchange) in clear to a server offering no
/// TLS.
const WEAK: [&str; 3] = ["disable", "allow", "prefer"];

/// URLs whose weak `sslmode` was already logged.
static WARNED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// Whether `host` (as libpq reads a `host` entry) is this machine: a socket directory (an
/// absolute path, or `@` for Linux's abstract namespace), `localhost`, an empty host (libpq's
/// default socket), or a loopback address (`127.0.0.0/8`, `::1`, `::ffff:127.x.x.x`; brackets
/// and a zone id allowed). Any other name counts as remote, even one that resolves to loopback.
pub(crate) fn is_local_host(host: &str) -> bool {
    let host = host.trim();
    if host.is_empty() || host.starts_with('/') || host.starts_with('@') {
        return true;
    }
    if host.eq_ignore_ascii_case("localhost") || host.eq_ignore_ascii_case("localhost.") {
        return true;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let bare = bare
        .split_once('%')
        .map_or(bare, |(address, _zone)| address);
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.is_loopback(),
        Ok(IpAddr::V6(v6)) => {
            v6 == Ipv6Addr::LOCALHOST || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

impl DbUrl {
    /// Whether every host this PostgreSQL URL connects to is this machine (see the rules of
    /// [`effective_sslmode`](DbUrl::effective_sslmode)): the URL's hosts, or its `host` query
    /// parameter, or its `hostaddr` parameter when set (the addresses libpq connects to); no
    /// host at all means libpq's default socket (or `PGHOST`). Always `true` for SQLite.
    ///
    /// ```
    /// use userbase::DbUrl;
    ///
    /// assert!(DbUrl::parse("postgres://app@127.0.0.1/app")?.is_local());
    /// assert!(DbUrl::parse("postgres://app@[::1]:5433/app")?.is_local());
    /// assert!(DbUrl::parse("postgres:///app?host=/var/run/postgresql")?.is_local());
    /// assert!(!DbUrl::parse("postgres://app@localhost,db.internal/app")?.is_local());
    /// # Ok::<(), userbase::Error>(())
    /// ```
    pub fn is_local(&self) -> bool {
        if self.backend() == Backend::Sqlite {
            return true;
        }
        let list = |value: &str| value.split(',').all(is_local_host);
        if let Some(addresses) = self.query_value("hostaddr") {
            return list(addresses);
        }
        if let Some(hosts) = self.query_value("host") {
            return list(hosts);
        }
        let hosts = self.hosts();
        if hosts.iter().all(|(host, _)| host.is_none()) {
            return std::env::var("PGHOST").map_or(true, |hosts| list(&hosts));
        }
        hosts.iter().all(|(host, _)| host.is_none_or(is_local_host))
    }

    /// The `sslmode` the driver is given for this PostgreSQL URL: its own `sslmode` when set;
    /// else `None` when libpq's `PGSSLMODE` is set (libpq uses it); else `verify-full` when the
    /// URL names an `sslrootcert`; else `require` when a host is not this machine
    /// ([`is_local`](DbUrl::is_local)); else `None` (libpq's default, `prefer`). `None` for
    /// SQLite.
    ///
    /// ```
    /// use userbase::DbUrl;
    ///
    /// let remote = DbUrl::parse("postgres://app@db.internal/app")?;
    /// assert_eq!(remote.effective_sslmode().as_deref(), Some("require"));
    /// let pinned = DbUrl::parse("postgres://app@db.internal/app?sslrootcert=/etc/ca.pem")?;
    /// assert_eq!(pinned.effective_sslmode().as_deref(), Some("verify-full"));
    /// let local = DbUrl::parse("postgres://app@localhost/app")?;
    /// assert_eq!(local.effective_sslmode(), None);
    /// # Ok::<(), userbase::Error>(())
    /// ```
    pub fn effective_sslmode(&self) -> Option<String> {
        if self.backend() == Backend::Sqlite {
            return None;
        }
        if let Some(mode) = self.query_value("sslmode") {
            return Some(mode.to_owned());
        }
        if std::env::var_os("PGSSLMODE").is_some() {
            None
        } else if self.query_value("sslrootcert").is_some() {
            Some("verify-full".to_owned())
        } else if !self.is_local() {
            Some("require".to_owned())
        } else {
            None
        }
    }
}

/// The `sslmode` to add to the driver's URL (none when the URL sets one); logs, once per URL,
/// an explicit weak `sslmode` for a host that is not this machine.
pub(crate) fn default_sslmode(url: &DbUrl) -> Option<String> {
    let explicit = url
        .query_value("sslmode")
        .map(str::to_owned)
        .or_else(|| std::env::var("PGSSLMODE").ok());
    if let Some(mode) = explicit {
        if WEAK.contains(&mode.as_str()) && !url.is_local() {
            let shown = url.to_string();
            let mut warned = WARNED.lock().unwrap_or_else(PoisonError::into_inner);
            if warned
                .get_or_insert_with(HashSet::new)
                .insert(shown.clone())
            {
                tracing::warn!(
                    target: "userbase::pool",
                    url = %shown,
                    sslmode = %mode,
                    "sslmode {mode} to a host that is not this machine: the connection may be \
                     unencrypted and the server is not verified"
                );
            }
        }
        return None;
    }
    url.effective_sslmode()
}

/// Checks an `sslmode` value read from `variable`.
pub(crate) fn check_sslmode(variable: &str, mode: &str) -> Result<()> {
    if SSLMODES.contains(&mode) {
        Ok(())
    } else {
        Err(Error::config(
            variable,
            format!(
                "`{}` is not an sslmode; allowed: {}",
                mode.escape_debug(),
                SSLMODES.join(", ")
            ),
        ))
    }
}
