//! A longer (or shorter) statement deadline for one piece of work: the report that may run long.

use std::time::Duration;

use diesel::sql_types::Text;
use diesel::{QueryableByName, RunQueryDsl};

use super::Repo;
use crate::config::knobs::STATEMENT_TIMEOUT;
use crate::connection::AnyConnection;
use crate::error::{Error, Result};

/// A `current_setting(…) AS setting` row.
#[derive(QueryableByName)]
struct Setting {
    #[diesel(sql_type = Text)]
    setting: String,
}

/// `set_config('statement_timeout', value, true)`: `SET LOCAL`, with the value bound.
fn set_local_statement_timeout(conn: &mut AnyConnection, value: &str) -> diesel::QueryResult<()> {
    if let AnyConnection::Pg(pg) = conn {
        diesel::sql_query("SELECT set_config('statement_timeout', $1, true) AS setting")
            .bind::<Text, _>(value)
            .get_result::<Setting>(pg)?;
    }
    Ok(())
}

impl Repo<'_> {
    /// Runs `f` in a transaction (a savepoint when one is open) whose statements may each run
    /// for `timeout` instead of the pool's
    /// [`statement_timeout`](crate::PoolConfig::statement_timeout): the one report that may run
    /// long, or a call that must give up sooner. `Duration::ZERO` lifts the limit. The pool's
    /// deadline applies again once `f` returns (in an enclosing transaction too).
    ///
    /// On PostgreSQL this is `SET LOCAL statement_timeout`, so it holds behind pgbouncer in
    /// transaction mode. On SQLite, which cannot bound a statement's running time, `f` just runs
    /// in a transaction.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use userbase::{Database, Error};
    ///
    /// let db = Database::from_env()?; // DB_STATEMENT_TIMEOUT_MS=2000
    /// let counts = db.session()?.repo().with_statement_timeout(Duration::from_secs(60), |repo| {
    ///     repo.location_counts_by_user()
    /// })?;
    /// # Ok::<(), Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a `timeout` above [`MAX_DURATION`](crate::config::MAX_DURATION) or not a
    /// whole number of milliseconds;
    /// [`Error::StatementTimeout`] (converted into `E`) from a statement that ran past `timeout`;
    /// `f`'s own error; as [`Repo::transaction`].
    pub fn with_statement_timeout<T, E, F>(&mut self, timeout: Duration, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Repo<'_>) -> Result<T, E>,
        E: From<Error>,
    {
        STATEMENT_TIMEOUT
            .check_override("Repo::with_statement_timeout", timeout)
            .map_err(E::from)?;
        let nested = crate::transaction::is_open(self.conn).map_err(E::from)?;
        self.transaction(|repo| {
            let is_pg = matches!(repo.conn, AnyConnection::Pg(_));
            // In an enclosing transaction, `SET LOCAL` would outlive the savepoint: note what
            // to put back.
            let previous = if nested && is_pg {
                Some(
                    repo.run(|c| match c {
                        AnyConnection::Pg(pg) => diesel::sql_query(
                            "SELECT current_setting('statement_timeout') AS setting",
                        )
                        .get_result::<Setting>(pg)
                        .map(|row| row.setting),
                        AnyConnection::Sqlite(_) => Ok(String::new()),
                    })
                    .map_err(E::from)?,
                )
            } else {
                None
            };
            let millis = timeout.as_millis().to_string();
            repo.run(|c| set_local_statement_timeout(c, &millis))
                .map_err(E::from)?;
            let value = f(repo)?;
            if let Some(previous) = previous {
                repo.run(|c| set_local_statement_timeout(c, &previous))
                    .map_err(E::from)?;
            }
            Ok(value)
        })
    }
}
