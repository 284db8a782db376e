//! Transactions that run again when the database aborted them for a conflict: the retry policy
//! and [`Database::transaction_with_retry`].
//!
//! A leaf module: it builds on the engine, the session and the transaction helper, and nothing
//! below imports it.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use super::Database;
use crate::error::{Error, Result};
use crate::repo::Repo;
use crate::transaction::Isolation;

/// How [`Database::transaction_with_retry`] retries: at most `max_attempts` runs, waiting
/// between them an exponential backoff (`base_backoff`, doubled at each retry, at most
/// `max_backoff`) with jitter.
///
/// ```
/// use std::time::Duration;
/// use userbase::RetryPolicy;
///
/// let policy = RetryPolicy::default()
///     .with_max_attempts(10)
///     .with_backoff(Duration::from_millis(5), Duration::from_millis(500));
/// assert_eq!(policy.max_attempts, 10);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Runs of the closure at most, the first included; at least 1. Default 5.
    pub max_attempts: u32,
    /// Wait before the first retry; doubled at each further retry. Default 10 ms.
    pub base_backoff: Duration,
    /// Longest wait between two runs; at least `base_backoff`. Default 1 s.
    pub max_backoff: Duration,
    /// Wait a random time between half the backoff and the full backoff, so that transactions
    /// that collided do not collide again. Default `true`.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// This policy with at most `max_attempts` runs (at least 1).
    pub fn with_max_attempts(self, max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts,
            ..self
        }
    }

    /// This policy with the backoff starting at `base` and growing to at most `max`.
    pub fn with_backoff(self, base: Duration, max: Duration) -> Self {
        RetryPolicy {
            base_backoff: base,
            max_backoff: max,
            ..self
        }
    }

    /// This policy with jitter on or off.
    pub fn with_jitter(self, jitter: bool) -> Self {
        RetryPolicy { jitter, ..self }
    }

    /// Checks the bounds.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `max_attempts` is 0 or `base_backoff` exceeds `max_backoff`.
    pub fn validate(&self) -> Result<()> {
        if self.max_attempts == 0 {
            return Err(Error::config("max_attempts", "must be at least 1"));
        }
        if self.base_backoff > self.max_backoff {
            return Err(Error::config(
                "base_backoff",
                format!(
                    "{:?} exceeds max_backoff {:?}",
                    self.base_backoff, self.max_backoff
                ),
            ));
        }
        Ok(())
    }

    /// The wait before retry number `retry` (1 for the first retry).
    pub fn backoff(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        let full = self
            .base_backoff
            .saturating_mul(1_u32 << doublings)
            .min(self.max_backoff);
        if !self.jitter {
            return full;
        }
        let half = full / 2;
        half + (full - half).mul_f64(random_fraction())
    }
}

/// A random number in `[0, 1)`, from the standard library's randomly keyed hasher (no crate
/// needed for jitter).
fn random_fraction() -> f64 {
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    // 53 random bits: exactly representable.
    (bits >> 11) as f64 / (1_u64 << 53) as f64
}

impl Database {
    /// Runs `f` in a top-level transaction and runs it again, on a fresh session after a
    /// backoff, when it fails with a retryable error ([`Error::is_retryable`]: a deadlock or a
    /// serialization failure, also when they aborted the transaction): CockroachDB's client-side
    /// retry loop. Other errors are returned at once; after `policy.max_attempts` runs the last
    /// retryable error is returned. Each run counts in the metric `userbase.transaction.attempts`,
    /// each retry in `userbase.transaction.retries` with the error's variant as `error.type`.
    ///
    /// The transaction runs at `SERIALIZABLE` on PostgreSQL (SQLite's transactions always are),
    /// so a concurrent transaction it would race with makes it fail and run again instead of
    /// committing a result no serial order gives. `f` may run several times: keep side effects
    /// outside the database out of it.
    ///
    /// Use it for a read-then-write of your own that must not interleave with another (two
    /// transactions each deactivating a user if both are active). Single `Repo` calls need no
    /// retry loop: [`Repo::set_referrer`], for one, serializes itself with concurrent referral
    /// changes.
    ///
    /// ```no_run
    /// use userbase::{Database, RetryPolicy};
    ///
    /// let db = Database::from_env()?;
    /// db.transaction_with_retry(RetryPolicy::default(), |repo| {
    ///     if repo.users()?.iter().filter(|u| u.active).count() > 1 {
    ///         repo.deactivate_user(1824)?;
    ///     }
    ///     Ok(())
    /// })?;
    /// # Ok::<(), userbase::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a bad `policy` ([`RetryPolicy::validate`]); `f`'s error or the
    /// commit's (the last retryable one after `max_attempts` runs); a checkout error.
    pub fn transaction_with_retry<T, F>(&self, policy: RetryPolicy, mut f: F) -> Result<T>
    where
        F: FnMut(&mut Repo<'_>) -> Result<T>,
    {
        policy.validate()?;
        let mut attempt = 1;
        loop {
            let outcome = {
                let mut session = self.session()?;
                if let Some(telemetry) = crate::metrics::telemetry(session.repo_connection()) {
                    telemetry.attempt();
                }
                // `f` in a transaction, then the replicas' bookkeeping (the commit's WAL position).
                let outcome = crate::database::replica::transaction(
                    self,
                    session.repo_connection(),
                    Isolation::Serializable,
                    &mut f,
                );
                if let (Err(error), Some(telemetry)) = (
                    &outcome,
                    crate::metrics::telemetry(session.repo_connection()),
                ) {
                    if error.is_retryable() && attempt < policy.max_attempts {
                        telemetry.retry(error);
                    }
                }
                outcome
            };
            match outcome {
                Err(error) if error.is_retryable() && attempt < policy.max_attempts => {
                    let wait = policy.backoff(attempt);
                    tracing::debug!(
                        target: "userbase::sql",
                        attempt,
                        wait_us = wait.as_micros(),
                        %error,
                        "retrying transaction"
                    );
                    std::thread::sleep(wait);
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let policy = RetryPolicy::default()
            .with_backoff(Duration::from_millis(10), Duration::from_millis(50))
            .with_jitter(false);
        let waits: Vec<u128> = (1..=5).map(|r| policy.backoff(r).as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 50, 50]);
        assert_eq!(
            policy.backoff(u32::MAX),
            Duration::from_millis(50),
            "no overflow"
        );
    }

    #[test]
    fn jitter_stays_between_half_and_full() {
        let policy = RetryPolicy::default()
            .with_backoff(Duration::from_millis(100), Duration::from_millis(100));
        let waits: Vec<Duration> = (0..200).map(|_| policy.backoff(1)).collect();
        assert!(waits
            .iter()
            .all(|w| *w >= Duration::from_millis(50) && *w <= Duration::from_millis(100)));
        let distinct: std::collections::HashSet<_> = waits.iter().collect();
        assert!(distinct.len() > 100, "{} distinct waits", distinct.len());
    }

    #[test]
    fn bad_policies_are_config_errors() {
        assert!(matches!(
            RetryPolicy::default().with_max_attempts(0).validate(),
            Err(Error::Config { .. })
        ));
        assert!(matches!(
            RetryPolicy::default()
                .with_backoff(Duration::from_secs(2), Duration::from_secs(1))
                .validate(),
            Err(Error::Config { .. })
        ));
    }
}
