//! Reading [`Settings`] from `.env` and the environment.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::url::Invalid;
use super::{DbUrl, PoolConfig, Settings};
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
                let mut url = DbUrl::postgres()
                    .with_host(var("DB_HOST").unwrap_or_else(|| DEFAULT_HOST.to_owned()))
                    .with_port(parse_var(&var, "DB_PORT")?.unwrap_or(DEFAULT_PORT))
                    .with_database(var("DB_NAME").unwrap_or_else(|| user.clone()))
                    .with_username(user);
                if let Some(password) = lookup("DB_PASS").filter(|p| !p.is_empty()) {
                    url = url.with_password(password);
                }
                url.check().map_err(Invalid::in_env_variable)?;
                url
            }
            None => DbUrl::sqlite(DEFAULT_SQLITE_PATH),
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
