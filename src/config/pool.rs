//! [`PoolConfig`]: the engine's pool knobs, their defaults and their bounds.

use std::time::Duration;

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
