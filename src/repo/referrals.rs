//! Referrals: who referred whom, changed only after a cycle check.

use diesel::prelude::*;
use diesel::sql_types::BigInt;

use super::dispatch::dispatch;
use super::support::{placeholders, CountRow, References};
use super::Repo;
use crate::error::{Error, Result};
use crate::models::user::UserUpdate;
use crate::models::{user, ReferralCount, User, UserWithReferrer};

impl Repo<'_> {
    /// Sets (or with `None` clears) the referrer of user `user_id`; returns the stored row.
    ///
    /// The cycle check and the update are two statements: on PostgreSQL at `READ COMMITTED`, two
    /// concurrent calls (A refers B, B refers A) can each pass their check and together make a
    /// cycle. When referral changes may run concurrently, run them in
    /// [`Database::transaction_with_retry`](crate::Database::transaction_with_retry)
    /// (`SERIALIZABLE`, retried). SQLite's transactions are serialized already.
    ///
    /// # Errors
    ///
    /// [`Error::ReferralCycle`] when the user would refer themselves, directly or through
    /// others; [`Error::NotFound`] when there is no such user; [`Error::ForeignKeyViolation`]
    /// when the referrer does not exist.
    pub fn set_referrer(&mut self, user_id: i64, referrer_id: Option<i64>) -> Result<User> {
        if let Some(referrer_id) = referrer_id {
            self.check_referral(user_id, referrer_id)?;
        }
        let update = UserUpdate {
            referrer_id: Some(referrer_id),
            ..UserUpdate::default()
        };
        let updated = self.update_user_returning(user_id, &update);
        self.name_reference(updated, || References::referrer(referrer_id))?
            .ok_or(Error::NotFound)
    }

    /// Refuses `referrer_id` for `user_id` when `user_id` is `referrer_id` or one of its
    /// referrers (walking up the chain in one recursive query).
    pub(super) fn check_referral(&mut self, user_id: i64, referrer_id: i64) -> Result<()> {
        let cycle = Error::ReferralCycle {
            user_id,
            referrer_id,
        };
        if user_id == referrer_id {
            return Err(cycle);
        }
        let (first, second) = placeholders(self.backend());
        let sql = format!(
            "WITH RECURSIVE chain(id) AS ( \
                 SELECT CAST({first} AS BIGINT) \
                 UNION \
                 SELECT u.referrer_id FROM users u JOIN chain c ON u.user_id = c.id \
                 WHERE u.referrer_id IS NOT NULL) \
             SELECT count(*) AS n FROM chain WHERE id = {second}"
        );
        let query = diesel::sql_query(sql)
            .bind::<BigInt, _>(referrer_id)
            .bind::<BigInt, _>(user_id);
        let found: CountRow = self.run(|c| dispatch!(c => query.get_result(c)))?;
        if found.n > 0 {
            Err(cycle)
        } else {
            Ok(())
        }
    }

    /// The users `referrer_id` referred, ordered by id.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    pub fn referrals(&mut self, referrer_id: i64) -> Result<Vec<User>> {
        self.run(|c| dispatch!(c => user::referred_by(referrer_id).load(c)))
    }

    /// Every user with their referrer's full name (`None` without one), ordered by id, in one
    /// query (a self-join through [`REFERRERS`](const@crate::models::user::REFERRERS)).
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    pub fn users_with_referrer_names(&mut self) -> Result<Vec<UserWithReferrer>> {
        self.run(|c| dispatch!(c => user::with_referrer_names().load(c)))
    }

    /// How many users each referrer referred, ordered by referrer id.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    pub fn referral_counts(&mut self) -> Result<Vec<ReferralCount>> {
        self.run(|c| dispatch!(c => user::referral_counts().load(c)))
    }
}
