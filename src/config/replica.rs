//! Read replicas: where they are and how reads are routed to them.

use std::time::Duration;

use super::knobs::{
    Source, DEFAULT_MAX_REPLICA_LAG, DEFAULT_REPLICA_CHECK_INTERVAL, DEFAULT_REPLICA_WAIT,
    MAX_REPLICA_LAG, REPLICA_CHECK, REPLICA_WAIT,
};
#[cfg(doc)]
use super::knobs::{MAX_DURATION, MIN_REPLICA_CHECK_INTERVAL};
use super::url::DbUrl;
use super::Backend;
use crate::error::{Error, Result};

/// PostgreSQL streaming replicas that serve [`Database::read`](crate::Database::read) and
/// [`Database::read_session`](crate::Database::read_session); writes, transactions and
/// migrations stay on the primary.
///
/// Each replica gets its own pool with the primary's [`PoolConfig`](crate::PoolConfig), and its
/// connections are read-only (`default_transaction_read_only=on`). See [`crate::replica`] for the
/// routing rules.
///
/// ```
/// use std::time::Duration;
/// use userbase::config::ReplicaConfig;
/// use userbase::DbUrl;
///
/// let replicas = ReplicaConfig::default()
///     .with_url(DbUrl::parse("postgres://app@replica1:5432/app")?)
///     .with_max_lag(Duration::from_secs(2));
/// replicas.validate()?;
/// # Ok::<(), userbase::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicaConfig {
    /// The replicas, PostgreSQL only. Default none: every read goes to the primary (env
    /// `DATABASE_REPLICA_URLS`, comma-separated; each URL starts with `postgres://` or
    /// `postgresql://`, and may itself be a multi-host URL).
    pub urls: Vec<DbUrl>,
    /// How long a read that must see a write (its [`WalPosition`](crate::replica::WalPosition))
    /// waits for a replica to replay that far before it goes to the primary. Default
    /// [`DEFAULT_REPLICA_WAIT`]; 0 (check once, never wait) to [`MAX_DURATION`] (env
    /// `DB_REPLICA_WAIT_MS`).
    pub wait: Duration,
    /// Replicas lagging more than this are skipped. Default [`DEFAULT_MAX_REPLICA_LAG`];
    /// above 0, at most [`MAX_DURATION`] (env `DB_MAX_REPLICA_LAG_MS`). Lag is
    /// `now() - pg_last_xact_replay_timestamp()` on the replica, and 0 when it has replayed
    /// everything it received (an idle primary).
    pub max_lag: Duration,
    /// How often a background thread measures each replica's lag and re-checks a replica that
    /// is down: every interval during an outage, the wait doubling (up to 30 s) only for a
    /// replica that goes down again within 30 s of coming back. Default [`DEFAULT_REPLICA_CHECK_INTERVAL`];
    /// [`MIN_REPLICA_CHECK_INTERVAL`] to [`MAX_DURATION`] (env
    /// `DB_REPLICA_CHECK_MS`).
    pub check_interval: Duration,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            urls: Vec::new(),
            wait: DEFAULT_REPLICA_WAIT,
            max_lag: DEFAULT_MAX_REPLICA_LAG,
            check_interval: DEFAULT_REPLICA_CHECK_INTERVAL,
        }
    }
}

impl ReplicaConfig {
    /// Adds a replica.
    #[must_use]
    pub fn with_url(mut self, url: DbUrl) -> Self {
        self.urls.push(url);
        self
    }

    /// Sets [`wait`](ReplicaConfig::wait) (its default and bounds are there).
    #[must_use]
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Sets [`max_lag`](ReplicaConfig::max_lag) (its default and bounds are there).
    #[must_use]
    pub fn with_max_lag(mut self, max_lag: Duration) -> Self {
        self.max_lag = max_lag;
        self
    }

    /// Sets [`check_interval`](ReplicaConfig::check_interval) (its default and bounds are there).
    #[must_use]
    pub fn with_check_interval(mut self, interval: Duration) -> Self {
        self.check_interval = interval;
        self
    }

    /// Checks the bounds named on each field, and that every replica is a PostgreSQL URL.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the field (`ReplicaConfig::urls`, `ReplicaConfig::wait`, …).
    pub fn validate(&self) -> Result<()> {
        for url in &self.urls {
            if url.backend() != Backend::Postgres {
                return Err(Error::config(
                    "ReplicaConfig::urls",
                    format!("{url} is not a PostgreSQL URL: replicas are PostgreSQL only"),
                ));
            }
        }
        self.check(Source::Code)
    }

    /// Checks the knobs (not the URLs) against the settings table.
    pub(crate) fn check(&self, source: Source) -> Result<()> {
        REPLICA_WAIT.check_duration(self.wait, source)?;
        MAX_REPLICA_LAG.check_duration(self.max_lag, source)?;
        REPLICA_CHECK.check_duration(self.check_interval, source)
    }
}

/// Splits `DATABASE_REPLICA_URLS` into URLs: a comma starts a new URL only where a
/// `postgres://` or `postgresql://` follows, so multi-host URLs (`h1:5432,h2:5433`) stay whole.
pub(crate) fn split_replica_urls(raw: &str) -> Result<Vec<DbUrl>> {
    const VARIABLE: &str = "DATABASE_REPLICA_URLS";
    let starts_url = |s: &str| {
        let s = s.trim_start();
        s.starts_with("postgres://") || s.starts_with("postgresql://")
    };
    let mut items: Vec<String> = Vec::new();
    for piece in raw.split(',') {
        match items.last_mut() {
            Some(last) if !starts_url(piece) => {
                last.push(',');
                last.push_str(piece);
            }
            _ => items.push(piece.to_owned()),
        }
    }
    items
        .iter()
        .map(|item| {
            if !starts_url(item) {
                return Err(Error::config(
                    VARIABLE,
                    "every replica URL starts with postgres:// or postgresql://",
                ));
            }
            DbUrl::parse_in(item, VARIABLE)
        })
        .collect()
}
