//! Referrals: who referred whom, changed only under the referral lock and after a cycle check.
//!
//! Every change of a stored referral goes through [`change_referral`](Repo::change_referral): in
//! one transaction (a savepoint inside an open one) it takes the referral lock, writes, then checks
//! that the new referrer's chain does not lead back to the user, rolling the write back when it
//! does. The lock serializes referral changes, so two of them (A refers B, B refers A) cannot each
//! pass a check that does not see the other; checking after the write means the check reads every
//! referral committed before the write, including those of users inserted meanwhile. In a
//! transaction whose snapshot may predate the lock (PostgreSQL's `REPEATABLE READ` and
//! `SERIALIZABLE`), the check locks the chain's rows instead, which fails (retryably) on any row
//! changed since the snapshot.

use std::collections::HashSet;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use super::dispatch::dispatch;
use super::support::{placeholders, CountRow, References};
use super::Repo;
use crate::connection::AnyConnection;
use crate::error::{Error, Result};
use crate::models::user::UserUpdate;
use crate::models::{user, NewUser, ReferralCount, User, UserWithReferrer};
use crate::schema::users;

/// Key of the PostgreSQL transaction-scoped advisory lock that serializes referral changes: the
/// bytes of `"userrefs"` (8463219666979219059).
const REFERRAL_LOCK_KEY: i64 = 0x7573_6572_7265_6673;

/// What a transaction's reads see once it holds the referral lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reads {
    /// Every referral committed before the lock (each statement takes a new snapshot, or the
    /// write lock is held).
    Latest,
    /// The transaction's snapshot, which may be older than the lock.
    Snapshot,
}

/// The isolation level the lock statement reports (its `locked` column, `void`, is not read).
#[derive(QueryableByName)]
struct IsolationRow {
    #[diesel(sql_type = Text)]
    isolation: String,
}

impl Repo<'_> {
    /// Sets (or with `None` clears) the referrer of user `user_id`; returns the stored row.
    ///
    /// Safe under concurrency by itself, on both backends: the write and the cycle check run in
    /// one transaction (a savepoint inside an open one) that first takes the referral lock, held
    /// until that transaction ends (PostgreSQL: the transaction-scoped advisory lock
    /// `pg_advisory_xact_lock(8463219666979219059)`; SQLite: the database's write lock). So two
    /// concurrent calls (A refers B, B refers A) run one after the other and the second fails
    /// with [`Error::ReferralCycle`]; [`upsert_user_with`](Repo::upsert_user_with) overwriting the
    /// referrer and bulk imports of users with referrers take the same lock. Nothing changes when
    /// it fails. No retry loop is needed.
    ///
    /// Inside a `REPEATABLE READ` or `SERIALIZABLE` transaction of your own (as
    /// [`Database::transaction_with_retry`](crate::Database::transaction_with_retry) runs on
    /// PostgreSQL), whose snapshot may be older than the lock, the chain is read row by row with
    /// `FOR SHARE`: a referral changed since the snapshot fails the call with a retryable
    /// [`Error::SerializationFailure`], and the retry sees it.
    ///
    /// # Errors
    ///
    /// [`Error::ReferralCycle`] when the user would refer themselves, directly or through
    /// others; [`Error::NotFound`] when there is no such user; [`Error::ForeignKeyViolation`]
    /// when the referrer does not exist; [`Error::SerializationFailure`] (retryable) inside a
    /// `REPEATABLE READ` or `SERIALIZABLE` transaction when a referral of the chain changed since
    /// its snapshot.
    pub fn set_referrer(&mut self, user_id: i64, referrer_id: Option<i64>) -> Result<User> {
        op!(self, SetReferrer, {
            let update = UserUpdate {
                referrer_id: Some(referrer_id),
                ..UserUpdate::default()
            };
            let updated = self.change_referral(user_id, referrer_id, |repo| {
                repo.update_user_returning(user_id, &update)
            });
            self.name_reference(updated, || References::referrer(referrer_id))?
                .ok_or(Error::NotFound)
        })
    }

    /// Runs `write`, which makes `referrer_id` the referrer of user `user_id`, as a referral
    /// change: in a transaction (a savepoint inside an open one) that first takes the referral
    /// lock and, after `write`, refuses the change with [`Error::ReferralCycle`] (rolling it back)
    /// when `referrer_id`'s chain of referrers now leads to `user_id`. A self-referral is refused
    /// before anything runs.
    pub(super) fn change_referral<T>(
        &mut self,
        user_id: i64,
        referrer_id: Option<i64>,
        write: impl FnOnce(&mut Repo<'_>) -> Result<T>,
    ) -> Result<T> {
        if referrer_id == Some(user_id) {
            return Err(Error::ReferralCycle {
                user_id,
                referrer_id: user_id,
            });
        }
        self.transaction(|repo| {
            let reads = repo.lock_referrals()?;
            let written = write(repo)?;
            if let Some(referrer_id) = referrer_id {
                match reads {
                    Reads::Latest => repo.check_referral(user_id, referrer_id)?,
                    Reads::Snapshot => repo.check_referral_locking(user_id, referrer_id)?,
                }
            }
            Ok(written)
        })
    }

    /// Takes the referral lock until the open transaction ends: every change of a stored
    /// referral takes it, and so does every bulk import of users with referrers, before reading
    /// or writing any referral. Returns what the transaction's reads see from then on.
    ///
    /// On PostgreSQL it is the transaction-scoped advisory lock `pg_advisory_xact_lock` with key
    /// 8463219666979219059 (the bytes of `"userrefs"`; an application taking advisory locks of
    /// its own should keep clear of it). On SQLite it takes nothing: a transaction that writes
    /// holds the database's write lock until it ends (this crate's transactions begin `IMMEDIATE`), and a
    /// referral change writes before it checks.
    ///
    /// Call it inside a transaction: outside one, PostgreSQL releases the lock at once.
    pub(super) fn lock_referrals(&mut self) -> Result<Reads> {
        let lock = diesel::sql_query(
            "SELECT pg_advisory_xact_lock($1) AS locked, \
             current_setting('transaction_isolation') AS isolation",
        )
        .bind::<BigInt, _>(REFERRAL_LOCK_KEY);
        let isolation = self.run(|c| match c {
            AnyConnection::Pg(c) => lock.get_result::<IsolationRow>(c).map(Some),
            AnyConnection::Sqlite(_) => Ok(None),
        })?;
        Ok(match isolation {
            Some(IsolationRow { isolation })
                if isolation == "repeatable read" || isolation == "serializable" =>
            {
                Reads::Snapshot
            }
            _ => Reads::Latest,
        })
    }

    /// [`lock_referrals`](Repo::lock_referrals) when one of `users` has a referrer (a batch
    /// without referrals cannot close a cycle, and does not wait for the lock).
    pub(super) fn lock_referrals_for(&mut self, users: &[NewUser<'_>]) -> Result<()> {
        if users.iter().any(|u| u.referrer_id.is_some()) {
            self.lock_referrals().map(drop)
        } else {
            Ok(())
        }
    }

    /// Refuses `referrer_id` for `user_id` when `user_id` is `referrer_id` or one of its
    /// referrers (walking up the chain in one recursive query; `UNION` ends the walk on a
    /// cycle).
    fn check_referral(&mut self, user_id: i64, referrer_id: i64) -> Result<()> {
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

    /// [`check_referral`](Repo::check_referral) for a transaction that reads a snapshot older
    /// than the referral lock (PostgreSQL's `REPEATABLE READ` and `SERIALIZABLE`): walks up the
    /// chain one user at a time, locking each row `FOR SHARE`, which fails with a retryable
    /// [`Error::SerializationFailure`] when a row of the chain changed since the snapshot, instead
    /// of trusting a referral that is no longer the stored one.
    fn check_referral_locking(&mut self, user_id: i64, referrer_id: i64) -> Result<()> {
        let mut seen = HashSet::new();
        let mut next = Some(referrer_id);
        while let Some(id) = next {
            if id == user_id {
                return Err(Error::ReferralCycle {
                    user_id,
                    referrer_id,
                });
            }
            if !seen.insert(id) {
                // A cycle that does not pass through `user_id`: not this change's.
                break;
            }
            let query = users::table.find(id).select(users::referrer_id);
            let referrer: Option<Option<i64>> = self.run(|c| match c {
                AnyConnection::Pg(c) => query.for_share().first(c).optional(),
                AnyConnection::Sqlite(c) => query.first(c).optional(),
            })?;
            next = referrer.flatten();
        }
        Ok(())
    }

    /// The users `referrer_id` referred, ordered by id.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    pub fn referrals(&mut self, referrer_id: i64) -> Result<Vec<User>> {
        op!(self, Referrals, {
            self.run(|c| dispatch!(c => user::referred_by(referrer_id).load(c)))
        })
    }

    /// Every user with their referrer's full name (`None` without one), ordered by id, in one
    /// query (a self-join through [`REFERRERS`](const@crate::models::user::REFERRERS)).
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    pub fn users_with_referrer_names(&mut self) -> Result<Vec<UserWithReferrer>> {
        op!(self, UsersWithReferrerNames, {
            self.run(|c| dispatch!(c => user::with_referrer_names().load(c)))
        })
    }

    /// How many users each referrer referred, ordered by referrer id.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    pub fn referral_counts(&mut self) -> Result<Vec<ReferralCount>> {
        op!(self, ReferralCounts, {
            self.run(|c| dispatch!(c => user::referral_counts().load(c)))
        })
    }
}
