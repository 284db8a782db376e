//! Streaming imports: rows from any iterator, written in batches of bounded size, in one
//! transaction or one per batch (see [`bulk`](crate::bulk)).

use std::collections::{BTreeSet, HashSet};

use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt};

use super::dispatch::dispatch;
use super::import::{check_batch_referrals, ImportMethod};
use super::support::chunk_rows;
use super::Repo;
use crate::bulk::{
    AsNewLocation, AsNewUser, Commit, ImportCause, ImportError, ImportOptions, Imported, Reporter,
};
use crate::config::Backend;
use crate::connection::AnyConnection;
use crate::error::Error;
use crate::models::{NewUser, UserLocation};
use crate::schema::users;

/// Why a streaming import stopped, inside its transactions.
enum Failure<E> {
    /// The source's item `row` (counted from 1) was an error.
    Source { row: u64, error: E },
    /// Validation or the database refused the import (at source row `row`, when one row was at
    /// fault).
    Refused { row: Option<u64>, error: Error },
}

impl<E> From<Error> for Failure<E> {
    fn from(error: Error) -> Self {
        Failure::Refused { row: None, error }
    }
}

/// Counts of a running import.
#[derive(Default)]
struct Counts {
    read: u64,
    inserted: u64,
    batches: u64,
    committed: u64,
}

impl<E> Failure<E> {
    fn into_error(self, committed: u64) -> ImportError<E> {
        let (row, cause) = match self {
            Failure::Source { row, error } => (Some(row), ImportCause::Source(error)),
            Failure::Refused { row, error } => (row, ImportCause::Database(error)),
        };
        ImportError {
            committed,
            row,
            cause,
        }
    }
}

/// Reads the next batch of at most `size` rows into `batch` (emptied first).
fn fill<R, E>(
    rows: &mut impl Iterator<Item = Result<R, E>>,
    size: usize,
    batch: &mut Vec<R>,
    read: &mut u64,
) -> Result<(), Failure<E>> {
    batch.clear();
    while batch.len() < size {
        match rows.next() {
            None => break,
            Some(Ok(row)) => {
                *read += 1;
                batch.push(row);
            }
            Some(Err(error)) => {
                return Err(Failure::Source {
                    row: *read + 1,
                    error,
                })
            }
        }
    }
    Ok(())
}

/// Referrals a PostgreSQL `UPDATE` of [`Repo::apply_referrals`] sets.
const REFERRALS_PER_UPDATE: usize = 10_000;

/// A `… AS start` row of raw SQL.
#[derive(QueryableByName)]
struct StartRow {
    #[diesel(sql_type = BigInt)]
    start: i64,
}

/// Referrals of imported users whose referrer was not stored yet when their batch was written:
/// the users went in without a referrer, and get it once the referrer's batch is written (or
/// at the end of the input, where a referrer still missing fails the import).
#[derive(Default)]
struct Pending {
    /// `(user_id, referrer_id)`, in input order.
    referrals: Vec<(i64, i64)>,
}

impl Repo<'_> {
    /// Imports the users of `rows`, in batches of [`ImportOptions::batch_size`] rows: memory is
    /// bounded by the batch, not the input. On PostgreSQL each batch goes in by binary `COPY`
    /// (as [`copy_users`](Repo::copy_users)); on SQLite by the inserts of
    /// [`import_users`](Repo::import_users).
    ///
    /// Every row is validated as by [`import_users`](Repo::import_users), before its batch is
    /// written. A user may be referred by a user of any batch, earlier or later, as in one
    /// slice: a user whose referrer is not stored yet is written without it, and gets it as
    /// soon as the referrer's batch is written (with the cycle check of
    /// [`set_referrer`](Repo::set_referrer), on PostgreSQL for all the batch's referrals in
    /// one walk); a referrer that never comes fails the import.
    /// Those pending referrals are the one part of the memory that grows with the input (16
    /// bytes each).
    ///
    /// [`ImportOptions::commit`] chooses one transaction for the whole input (the default:
    /// any failure leaves nothing) or one per batch (a failure leaves the batches before it,
    /// counted in [`ImportError::committed`]; a pending referral of theirs stays unset).
    ///
    /// ```no_run
    /// use userbase::bulk::{Commit, ImportOptions, UserRecord};
    /// use userbase::Database;
    ///
    /// let db = Database::from_env()?;
    /// let rows = (1..=1_000_000).map(|id| {
    ///     Ok::<_, std::io::Error>(UserRecord {
    ///         user_id: id,
    ///         full_name: format!("User {id}"),
    ///         ..UserRecord::default()
    ///     })
    /// });
    /// let options = ImportOptions::default().commit(Commit::PerBatch);
    /// let imported = db.session()?.repo().import_users_from(rows, options)?;
    /// assert_eq!(imported.inserted, 1_000_000);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ImportError`], with [`ImportCause::Source`] for an error of `rows`, and
    /// [`ImportCause::Database`] for the errors of [`import_users`](Repo::import_users)
    /// ([`Error::Validation`] with the row, [`Error::ReferralCycle`],
    /// [`Error::UniqueViolation`], [`Error::ForeignKeyViolation`] for a referrer that is
    /// nowhere).
    pub fn import_users_from<I, R, E>(
        &mut self,
        rows: I,
        options: ImportOptions<'_>,
    ) -> Result<Imported, ImportError<E>>
    where
        I: IntoIterator<Item = Result<R, E>>,
        R: AsNewUser,
    {
        op!(self, ImportUsersFrom, typed ImportError<E> {
            let write = |repo: &mut Repo<'_>, pending: &mut Pending, batch: &[R], first_row: u64| {
                let mut users = batch
                    .iter()
                    .zip(first_row..)
                    .map(|(row, number)| {
                        row.as_new_user()
                            .checked()
                            .map_err(|error| Failure::Refused {
                                row: Some(number),
                                error,
                            })
                    })
                    .collect::<Result<Vec<NewUser<'_>>, Failure<E>>>()?;
                check_batch_referrals(&users)?;
                // Serialized with referral changes (see `Repo::lock_referrals`), in every
                // transaction of the import.
                repo.lock_referrals_for(&users)?;
                let ids: HashSet<i64> = users.iter().map(|u| u.user_id).collect();
                repo.defer_unknown_referrers(&mut users, &ids, pending)?;
                let written = repo.write_users(&users, ImportMethod::Copy)?;
                let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut pending.referrals)
                    .into_iter()
                    .partition(|(_, referrer_id)| ids.contains(referrer_id));
                pending.referrals = waiting;
                repo.apply_referrals(&ready)?;
                Ok(written)
            };
            // Referrers still missing at the end: setting them fails the import with the
            // foreign-key error naming the first.
            let finish = |repo: &mut Repo<'_>, pending: &mut Pending| {
                let referrals = std::mem::take(&mut pending.referrals);
                Ok(repo.apply_referrals(&referrals)?)
            };
            self.stream(rows, options, Pending::default(), write, finish)
        })
    }

    /// Imports the locations of `rows` in batches, as
    /// [`import_users_from`](Repo::import_users_from) does users: validated as by
    /// [`import_locations`](Repo::import_locations), written by `COPY` into a temporary table
    /// and one `INSERT … SELECT` a batch on PostgreSQL. A row with an id
    /// ([`AsNewLocation::location_id`]) is stored under it, and PostgreSQL's id sequence is
    /// moved past it; the others get generated ids, in input order.
    ///
    /// # Errors
    ///
    /// [`ImportError`]: the source's errors, [`Error::Validation`] with the row,
    /// [`Error::UniqueViolation`] for a taken name or id.
    pub fn import_locations_from<I, R, E>(
        &mut self,
        rows: I,
        options: ImportOptions<'_>,
    ) -> Result<Imported, ImportError<E>>
    where
        I: IntoIterator<Item = Result<R, E>>,
        R: AsNewLocation,
    {
        op!(self, ImportLocationsFrom, typed ImportError<E> {
            let write = |repo: &mut Repo<'_>, _: &mut (), batch: &[R], first_row: u64| {
                let locations = batch
                    .iter()
                    .zip(first_row..)
                    .map(|(row, number)| match row.as_new_location().checked() {
                        Ok(location) => Ok((row.location_id(), location)),
                        Err(error) => Err(Failure::Refused {
                            row: Some(number),
                            error,
                        }),
                    })
                    .collect::<Result<Vec<_>, Failure<E>>>()?;
                Ok(repo.write_locations(&locations)?)
            };
            self.stream(rows, options, (), write, |_, _| Ok(()))
        })
    }

    /// Imports the links of `rows` in batches, as [`import_links`](Repo::import_links) does
    /// (PostgreSQL: `COPY` into a temporary table, then one `INSERT … SELECT` of the links not
    /// stored yet): links that exist or come twice are skipped, and not counted in
    /// [`Imported::inserted`].
    ///
    /// # Errors
    ///
    /// [`ImportError`]: the source's errors, [`Error::ForeignKeyViolation`] for a user or
    /// location that does not exist.
    pub fn import_links_from<I, E>(
        &mut self,
        rows: I,
        options: ImportOptions<'_>,
    ) -> Result<Imported, ImportError<E>>
    where
        I: IntoIterator<Item = Result<UserLocation, E>>,
    {
        op!(self, ImportLinksFrom, typed ImportError<E> {
            let write = |repo: &mut Repo<'_>, _: &mut (), batch: &[UserLocation], _: u64| {
                Ok(repo.store_links(batch)?)
            };
            self.stream(rows, options, (), write, |_, _| Ok(()))
        })
    }

    /// Drives a streaming import: reads batches from `rows`, writes each with `write` (given
    /// the import's `state`, the batch and the number of its first row), ends with `finish`,
    /// in the transactions `options` asks for, reporting progress after each batch.
    fn stream<I, R, E, S, W, F>(
        &mut self,
        rows: I,
        options: ImportOptions<'_>,
        mut state: S,
        mut write: W,
        mut finish: F,
    ) -> Result<Imported, ImportError<E>>
    where
        I: IntoIterator<Item = Result<R, E>>,
        W: FnMut(&mut Repo<'_>, &mut S, &[R], u64) -> Result<usize, Failure<E>>,
        F: FnMut(&mut Repo<'_>, &mut S) -> Result<(), Failure<E>>,
    {
        let ImportOptions {
            batch_size,
            commit,
            mut reporter,
        } = options;
        reporter.start();
        let mut rows = rows.into_iter();
        let mut counts = Counts::default();
        let mut batch = Vec::with_capacity(batch_size);
        // One batch: `Ok(None)` at the end of the input, else whether the batch was full (so
        // more rows may follow).
        let mut step = |repo: &mut Repo<'_>,
                        state: &mut S,
                        counts: &mut Counts,
                        reporter: &mut Reporter<'_>|
         -> Result<Option<bool>, Failure<E>> {
            let first_row = counts.read + 1;
            fill(&mut rows, batch_size, &mut batch, &mut counts.read)?;
            if batch.is_empty() {
                return Ok(None);
            }
            let inserted = write(repo, state, &batch, first_row)?;
            counts.inserted += inserted as u64;
            counts.batches += 1;
            reporter.tick(counts.read, None);
            Ok(Some(batch.len() == batch_size))
        };
        let result = match commit {
            Commit::Whole => self.transaction(|repo| {
                while let Some(true) = step(repo, &mut state, &mut counts, &mut reporter)? {}
                finish(repo, &mut state)
            }),
            Commit::PerBatch => loop {
                let stepped =
                    self.transaction(|repo| step(repo, &mut state, &mut counts, &mut reporter));
                match stepped {
                    Ok(Some(full)) => {
                        counts.committed = counts.read;
                        if !full {
                            break self.transaction(|repo| finish(repo, &mut state));
                        }
                    }
                    Ok(None) => break self.transaction(|repo| finish(repo, &mut state)),
                    Err(failure) => break Err(failure),
                }
            },
        };
        match result {
            Ok(()) => {
                reporter.finish(counts.read, None);
                Ok(Imported {
                    rows: counts.read,
                    inserted: counts.inserted,
                    batches: counts.batches,
                })
            }
            Err(failure) => Err(failure.into_error(counts.committed)),
        }
    }

    /// Sets the referrer of each `(user_id, referrer_id)` of `referrals` (users written by this
    /// import), refusing one that closes a referral cycle.
    ///
    /// SQLite: one [`set_referrer`](Repo::set_referrer) each. PostgreSQL: one `UPDATE … FROM
    /// unnest(…)` a chunk, then one recursive walk up the chains of the updated users; as the
    /// stored referrals had no cycle, a cycle now passes through an updated user, and the walk
    /// from that user comes back to it.
    fn apply_referrals(&mut self, referrals: &[(i64, i64)]) -> Result<(), Error> {
        if referrals.is_empty() {
            return Ok(());
        }
        // Serialized with referral changes (see `Repo::lock_referrals`).
        self.lock_referrals()?;
        if self.backend() == Backend::Sqlite || referrals.len() < 4 {
            for &(user_id, referrer_id) in referrals {
                self.set_referrer(user_id, Some(referrer_id))?;
            }
            return Ok(());
        }
        for chunk in referrals.chunks(REFERRALS_PER_UPDATE) {
            let (ids, referrers): (Vec<i64>, Vec<i64>) = chunk.iter().copied().unzip();
            let update = diesel::sql_query(
                "UPDATE users SET referrer_id = v.referrer_id \
                 FROM unnest($1, $2) AS v(user_id, referrer_id) WHERE users.user_id = v.user_id",
            )
            .bind::<Array<BigInt>, _>(&ids)
            .bind::<Array<BigInt>, _>(&referrers);
            // SQLite took the branch above.
            self.run(|c| match c {
                AnyConnection::Pg(c) => update.execute(c),
                AnyConnection::Sqlite(_) => Ok(0),
            })?;
            let walk = diesel::sql_query(
                "WITH RECURSIVE walk(start, id) AS ( \
                     SELECT user_id, referrer_id FROM users WHERE user_id = ANY($1) \
                     UNION \
                     SELECT w.start, u.referrer_id FROM walk w JOIN users u ON u.user_id = w.id \
                     WHERE u.referrer_id IS NOT NULL AND w.id <> w.start) \
                 SELECT start FROM walk WHERE id = start ORDER BY start LIMIT 1",
            )
            .bind::<Array<BigInt>, _>(&ids);
            let cycle: Option<StartRow> = self.run(|c| match c {
                AnyConnection::Pg(c) => walk.get_result(c).optional(),
                AnyConnection::Sqlite(_) => Ok(None),
            })?;
            if let Some(StartRow { start }) = cycle {
                let referrer_id = chunk
                    .iter()
                    .find(|(user_id, _)| *user_id == start)
                    .map_or(start, |&(_, referrer_id)| referrer_id);
                return Err(Error::ReferralCycle {
                    user_id: start,
                    referrer_id,
                });
            }
        }
        Ok(())
    }

    /// Clears the referrer of each of `users` whose referrer is neither among them (`ids`) nor
    /// stored, and keeps the referral in `pending`.
    fn defer_unknown_referrers(
        &mut self,
        users: &mut [NewUser<'_>],
        ids: &HashSet<i64>,
        pending: &mut Pending,
    ) -> Result<(), Error> {
        let outside: BTreeSet<i64> = users
            .iter()
            .filter_map(|u| u.referrer_id)
            .filter(|id| !ids.contains(id))
            .collect();
        if outside.is_empty() {
            return Ok(());
        }
        let outside: Vec<i64> = outside.into_iter().collect();
        let mut stored = HashSet::with_capacity(outside.len());
        for chunk in outside.chunks(chunk_rows(self.backend(), 1)) {
            stored.extend(self.run(|c| {
                dispatch!(c => users::table
                    .filter(users::user_id.eq_any(chunk))
                    .select(users::user_id)
                    .load::<i64>(c))
            })?);
        }
        for user in users.iter_mut() {
            if let Some(referrer_id) = user.referrer_id {
                if !ids.contains(&referrer_id) && !stored.contains(&referrer_id) {
                    pending.referrals.push((user.user_id, referrer_id));
                    user.referrer_id = None;
                }
            }
        }
        Ok(())
    }
}
