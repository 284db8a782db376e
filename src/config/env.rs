//! Reading [`Settings`] from `.env` and the environment.

use std::fmt;
use std::str::FromStr;

use super::knobs::{
    Source, ECHO, ECHO_POOL, HIDE_PARAMETERS, IDLE_IN_TRANSACTION_TIMEOUT, LEAK_DETECTION,
    LOCK_TIMEOUT, MAX_OVERFLOW, MAX_REPLICA_LAG, OPERATION_METRICS, OVERFLOW_IDLE_TIMEOUT,
    POOL_RECYCLE, POOL_SIZE, POOL_TIMEOUT, PRE_PING, PRE_PING_BYPASS, REPLICA_CHECK, REPLICA_WAIT,
    STATEMENT_CACHE, STATEMENT_TIMEOUT,
};
use super::replica::split_replica_urls;
use super::tls::check_sslmode;
use super::url::Invalid;
use super::{Backend, DbUrl, PoolConfig, ReplicaConfig, Settings, SqliteSynchronous};
use crate::error::{Error, Result};

/// The SQLite file used when neither `DATABASE_URL` nor any `DB_*` part is set.
pub const DEFAULT_SQLITE_PATH: &str = "userbase.sqlite3";
/// Default PostgreSQL host for the `DB_*` parts.
pub const DEFAULT_HOST: &str = "localhost";
/// Default PostgreSQL port for the `DB_*` parts.
pub const DEFAULT_PORT: u16 = 5432;
/// Default PostgreSQL user for the `DB_*` parts.
pub const DEFAULT_USER: &str = "postgres";

/// The variables that build a PostgreSQL URL from parts.
const DB_PARTS: [&str; 5] = ["DB_HOST", "DB_PORT", "DB_USER", "DB_PASS", "DB_NAME"];

impl Settings {
    /// Reads the settings from `.env` and the environment (see the [module docs](crate::config)).
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
        // The secrets that may come from files (`DB_PASS_FILE`, …) are read once, here; the
        // rest of the function sees them as if the variable itself were set.
        let from_files = SECRET_FILE_VARIABLES
            .iter()
            .map(|name| Ok((*name, secret_from_file(&lookup, name)?)))
            .collect::<Result<Vec<_>>>()?;
        let lookup = |name: &str| match from_files.iter().find(|(n, _)| *n == name) {
            Some((_, Some(value))) => Some(value.clone()),
            _ => lookup(name),
        };
        let var = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let url = match lookup("DATABASE_URL") {
            Some(raw) if raw.trim().is_empty() => {
                return Err(Error::config(
                    "DATABASE_URL",
                    "is set but empty: unset it to use the DB_* parts or the SQLite file",
                ))
            }
            Some(raw) => DbUrl::parse(&raw)?,
            None if DB_PARTS.iter().any(|name| var(name).is_some()) => {
                let user = var("DB_USER").unwrap_or_else(|| DEFAULT_USER.to_owned());
                let port = parse_var(&var, "DB_PORT")?.unwrap_or(DEFAULT_PORT);
                let mut url = DbUrl::postgres().set_username(user.clone());
                if let Some(password) = lookup("DB_PASS").filter(|p| !p.is_empty()) {
                    url = url.and_then(|url| url.set_password(password));
                }
                url.and_then(|url| {
                    url.set_host(var("DB_HOST").unwrap_or_else(|| DEFAULT_HOST.to_owned()))
                })
                .and_then(|url| url.set_port(port))
                .and_then(|url| url.set_database(var("DB_NAME").unwrap_or(user)))
                .map_err(Invalid::in_env_variable)?
            }
            None => DbUrl::default_sqlite(),
        };

        let url = with_tls_env(url, &var)?;

        // Each knob: the variable's value, else the default; an `Option` knob's variable may
        // spell `None` (`DB_POOL_RECYCLE_SECS=-1`). The bounds are checked with the whole pool.
        let defaults = PoolConfig::default();
        let pool = PoolConfig {
            pool_size: POOL_SIZE.read_count(&var)?.unwrap_or(defaults.pool_size),
            max_overflow: MAX_OVERFLOW
                .read_count(&var)?
                .unwrap_or(defaults.max_overflow),
            pool_timeout: POOL_TIMEOUT
                .read_duration(&var)?
                .unwrap_or(defaults.pool_timeout),
            pool_recycle: POOL_RECYCLE
                .read_optional(&var)?
                .unwrap_or(defaults.pool_recycle),
            pre_ping: PRE_PING.read_flag(&var)?.unwrap_or(defaults.pre_ping),
            pre_ping_bypass: PRE_PING_BYPASS
                .read_duration(&var)?
                .unwrap_or(defaults.pre_ping_bypass),
            echo: ECHO.read_flag(&var)?.unwrap_or(defaults.echo),
            hide_parameters: HIDE_PARAMETERS
                .read_flag(&var)?
                .unwrap_or(defaults.hide_parameters),
            echo_pool: ECHO_POOL.read_flag(&var)?.unwrap_or(defaults.echo_pool),
            operation_metrics: OPERATION_METRICS
                .read_flag(&var)?
                .unwrap_or(defaults.operation_metrics),
            overflow_idle_timeout: OVERFLOW_IDLE_TIMEOUT
                .read_duration(&var)?
                .unwrap_or(defaults.overflow_idle_timeout),
            leak_detection_threshold: LEAK_DETECTION
                .read_optional(&var)?
                .unwrap_or(defaults.leak_detection_threshold),
            statement_cache: STATEMENT_CACHE
                .read_flag(&var)?
                .unwrap_or(defaults.statement_cache),
            statement_timeout: STATEMENT_TIMEOUT
                .read_optional(&var)?
                .unwrap_or(defaults.statement_timeout),
            lock_timeout: LOCK_TIMEOUT
                .read_optional(&var)?
                .unwrap_or(defaults.lock_timeout),
            idle_in_transaction_timeout: IDLE_IN_TRANSACTION_TIMEOUT
                .read_optional(&var)?
                .unwrap_or(defaults.idle_in_transaction_timeout),
            sqlite_synchronous: match var("DB_SQLITE_SYNCHRONOUS") {
                None => defaults.sqlite_synchronous,
                Some(raw) => sqlite_synchronous(raw.trim())?,
            },

            pool_name: var("DB_POOL_NAME")
                .map(|name| name.trim().to_owned())
                .or(defaults.pool_name),
        };
        pool.check(Source::Env)?;

        let replica_defaults = ReplicaConfig::default();
        let replicas = ReplicaConfig {
            urls: match var("DATABASE_REPLICA_URLS") {
                Some(raw) => split_replica_urls(&raw)?
                    .into_iter()
                    .map(|url| with_tls_env(url, &var))
                    .collect::<Result<_>>()?,
                None => Vec::new(),
            },
            wait: REPLICA_WAIT
                .read_duration(&var)?
                .unwrap_or(replica_defaults.wait),
            max_lag: MAX_REPLICA_LAG
                .read_duration(&var)?
                .unwrap_or(replica_defaults.max_lag),
            check_interval: REPLICA_CHECK
                .read_duration(&var)?
                .unwrap_or(replica_defaults.check_interval),
        };
        replicas.check(Source::Env)?;
        let migration_url = var("DATABASE_MIGRATION_URL")
            .map(|raw| DbUrl::parse_in(&raw, "DATABASE_MIGRATION_URL"))
            .transpose()?
            .map(|url| with_tls_env(url, &var))
            .transpose()?;
        Ok(Settings {
            url,
            pool,
            replicas,
            migration_url,
        })
    }
}

/// The variables whose value may instead be read from the file named by `<variable>_FILE` (the
/// convention of the official PostgreSQL image and of Docker and Kubernetes secrets).
pub const SECRET_FILE_VARIABLES: [&str; 3] = ["DB_PASS", "DATABASE_URL", "DATABASE_REPLICA_URLS"];

/// The value of `name` read from the file `<name>_FILE` names, when that is set (and not empty):
/// the file's content with one trailing newline (`\n` or `\r\n`) removed. `None` when
/// `<name>_FILE` is unset.
///
/// Errors name the variable and the path, never the content: both `name` and `<name>_FILE` set,
/// or a file that cannot be read as UTF-8 text.
fn secret_from_file(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &str,
) -> Result<Option<String>> {
    let file_variable = format!("{name}_FILE");
    let Some(path) = lookup(&file_variable).filter(|p| !p.trim().is_empty()) else {
        return Ok(None);
    };
    if lookup(name).is_some() {
        return Err(Error::config(
            file_variable,
            format!("{name} is set too: set either {name} or {name}_FILE, not both"),
        ));
    }
    let content = std::fs::read_to_string(&path).map_err(|e| {
        Error::config(
            file_variable.as_str(),
            format!(
                "cannot read the file `{}`: {}",
                path.escape_debug(),
                io_reason(&e)
            ),
        )
    })?;
    let value = content
        .strip_suffix("\r\n")
        .or_else(|| content.strip_suffix('\n'))
        .unwrap_or(&content);
    Ok(Some(value.to_owned()))
}

/// Why a file could not be read, without anything of its content (an invalid UTF-8 error
/// carries none, but is worded here so that no future message could).
fn io_reason(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::InvalidData => "it is not UTF-8 text".to_owned(),
        _ => error.to_string(),
    }
}

/// A PostgreSQL URL with `DB_SSLMODE` and `DB_SSLROOTCERT` as its `sslmode` and `sslrootcert`
/// where it sets none itself (the URL's own win).
fn with_tls_env(mut url: DbUrl, var: &impl Fn(&str) -> Option<String>) -> Result<DbUrl> {
    if url.backend() != Backend::Postgres {
        return Ok(url);
    }
    if let Some(mode) = var("DB_SSLMODE") {
        let mode = mode.trim();
        check_sslmode("DB_SSLMODE", mode)?;
        if url.query_value("sslmode").is_none() {
            url = url
                .set_query_param("sslmode".to_owned(), mode.to_owned())
                .map_err(|e| e.in_variable("DB_SSLMODE"))?;
        }
    }
    if let Some(root) = var("DB_SSLROOTCERT") {
        if url.query_value("sslrootcert").is_none() {
            url = url
                .set_query_param("sslrootcert".to_owned(), root.trim().to_owned())
                .map_err(|e| e.in_variable("DB_SSLROOTCERT"))?;
        }
    }
    Ok(url)
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

/// `DB_SQLITE_SYNCHRONOUS`: a [`SqliteSynchronous`] by its pragma value, in any case.
fn sqlite_synchronous(raw: &str) -> Result<SqliteSynchronous> {
    let all = SqliteSynchronous::ALL;
    all.into_iter()
        .find(|setting| setting.as_sql().eq_ignore_ascii_case(raw))
        .ok_or_else(|| {
            let names = all.map(|setting| setting.as_sql().to_ascii_lowercase());
            Error::config(
                "DB_SQLITE_SYNCHRONOUS",
                format!("`{raw}` is not allowed; allowed: {}", names.join(", ")),
            )
        })
}
