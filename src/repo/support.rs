//! Helpers the Repo's concerns share: bind limits and chunking, naming the missing parent of
//! SQLite's foreign-key errors, and small row types for raw SQL.

use std::collections::{BTreeSet, HashSet};

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Timestamp};
use diesel::QueryableByName;

use super::dispatch::dispatch;
use super::Repo;
use crate::config::Backend;
use crate::connection::AnyConnection;
use crate::error::{Error, Result};
use crate::models::{NewUser, UserLocation};
use crate::schema::{locations, users};

/// Largest bind-parameter count of one PostgreSQL statement.
const POSTGRES_MAX_BINDS: usize = 65_535;
/// Largest bind-parameter count of one SQLite statement (`SQLITE_MAX_VARIABLE_NUMBER`).
pub(super) const SQLITE_MAX_BINDS: usize = 32_766;

/// How many rows of `columns` columns fit in one statement under `backend`'s bind limit.
pub(super) fn chunk_rows(backend: Backend, columns: usize) -> usize {
    let max_binds = match backend {
        Backend::Postgres => POSTGRES_MAX_BINDS,
        Backend::Sqlite => SQLITE_MAX_BINDS,
    };
    (max_binds / columns).max(1)
}

/// Runs `insert` over `rows` in chunks of at most `per_chunk` rows; returns the rows inserted.
pub(super) fn insert_chunks<C, R>(
    conn: &mut C,
    rows: &[R],
    per_chunk: usize,
    mut insert: impl FnMut(&mut C, &[R]) -> QueryResult<usize>,
) -> QueryResult<usize> {
    let mut inserted = 0;
    for chunk in rows.chunks(per_chunk) {
        inserted += insert(conn, chunk)?;
    }
    Ok(inserted)
}

/// The first two bind placeholders of raw SQL on `backend`.
pub(super) fn placeholders(backend: Backend) -> (&'static str, &'static str) {
    match backend {
        Backend::Postgres => ("$1", "$2"),
        Backend::Sqlite => ("?", "?"),
    }
}

/// `Ok` when one row was deleted, [`Error::NotFound`] when none was.
pub(super) fn delete_one(deleted: usize) -> Result<()> {
    if deleted == 0 {
        Err(Error::NotFound)
    } else {
        Ok(())
    }
}

/// A `count(*) AS n` row of raw SQL.
#[derive(QueryableByName)]
pub(super) struct CountRow {
    #[diesel(sql_type = BigInt)]
    pub(super) n: i64,
}

/// A `… AS now` row of raw SQL.
#[derive(QueryableByName)]
pub(super) struct NowRow {
    #[diesel(sql_type = Timestamp)]
    pub(super) now: NaiveDateTime,
}

/// PostgreSQL's names of the foreign keys, used for SQLite's errors too.
const REFERRER_FKEY: &str = "users_referrer_id_fkey";
pub(super) const LINK_USER_FKEY: &str = "userlocations_user_id_fkey";
const LINK_LOCATION_FKEY: &str = "userlocations_location_id_fkey";

/// The references a write made, to name the one that failed when SQLite names none.
#[derive(Debug, Default)]
pub(super) struct References {
    /// `users.referrer_id` values, ordered, without the ids of users written with them.
    referrers: Vec<i64>,
    /// Links written.
    links: Vec<UserLocation>,
}

impl References {
    /// The referrers of `users` that are not among them.
    pub(super) fn referrers(users: &[NewUser<'_>]) -> Self {
        let written: HashSet<i64> = users.iter().map(|u| u.user_id).collect();
        let referrers: BTreeSet<i64> = users
            .iter()
            .filter_map(|u| u.referrer_id)
            .filter(|id| !written.contains(id))
            .collect();
        References {
            referrers: referrers.into_iter().collect(),
            ..References::default()
        }
    }

    /// One referrer id, or none.
    pub(super) fn referrer(referrer_id: Option<i64>) -> Self {
        References {
            referrers: referrer_id.into_iter().collect(),
            ..References::default()
        }
    }

    /// The links written.
    pub(super) fn links(links: &[UserLocation]) -> Self {
        References {
            links: links.to_vec(),
            ..References::default()
        }
    }
}

impl Repo<'_> {
    /// SQLite's foreign-key errors name no constraint and no row ("FOREIGN KEY constraint
    /// failed"): the Repo knows what it wrote, so it looks for the missing parent and reports it
    /// as PostgreSQL does (constraint name, `Key (column)=(value) is not present in table`).
    ///
    /// `references` is only built when there is such an error to name (a batch's set of
    /// referrers is not free).
    pub(super) fn name_reference<T>(
        &mut self,
        result: Result<T>,
        references: impl FnOnce() -> References,
    ) -> Result<T> {
        match result {
            Err(Error::ForeignKeyViolation {
                constraint: None,
                message,
            }) => Err(self
                .missing_reference(&references())
                .ok()
                .flatten()
                .unwrap_or(Error::ForeignKeyViolation {
                    constraint: None,
                    message,
                })),
            other => other,
        }
    }

    /// The first reference of `references` whose parent does not exist, as an error. Reads on
    /// the raw connection: the failed statement refuses further ones through [`Repo::run`], but
    /// SQLite still answers them.
    fn missing_reference(&mut self, references: &References) -> Result<Option<Error>> {
        if let Some(id) = first_missing_user(self.conn, &references.referrers)? {
            return Ok(Some(missing_parent(
                "users",
                REFERRER_FKEY,
                "referrer_id",
                id,
                "users",
            )));
        }
        let locations: BTreeSet<i32> = references.links.iter().map(|l| l.location_id).collect();
        let locations: Vec<i32> = locations.into_iter().collect();
        let per_chunk = chunk_rows(self.conn.backend(), 1);
        let mut found = HashSet::new();
        for chunk in locations.chunks(per_chunk) {
            let c = &mut *self.conn;
            found.extend(dispatch!(c => locations::table
                .filter(locations::location_id.eq_any(chunk))
                .select(locations::location_id)
                .load::<i32>(c))?);
        }
        // PostgreSQL checks the location's key before the user's (constraints in name order).
        if let Some(id) = locations.into_iter().find(|id| !found.contains(id)) {
            return Ok(Some(missing_parent(
                "userlocations",
                LINK_LOCATION_FKEY,
                "location_id",
                id,
                "locations",
            )));
        }
        let users: BTreeSet<i64> = references.links.iter().map(|l| l.user_id).collect();
        let users: Vec<i64> = users.into_iter().collect();
        Ok(first_missing_user(self.conn, &users)?
            .map(|id| missing_parent("userlocations", LINK_USER_FKEY, "user_id", id, "users")))
    }
}

/// The first of `ids` (ordered) with no user, in queries under the bind limit.
fn first_missing_user(c: &mut AnyConnection, ids: &[i64]) -> Result<Option<i64>> {
    let per_chunk = chunk_rows(c.backend(), 1);
    let mut found = HashSet::new();
    for chunk in ids.chunks(per_chunk) {
        let c = &mut *c;
        found.extend(dispatch!(c => users::table
            .filter(users::user_id.eq_any(chunk))
            .select(users::user_id)
            .load::<i64>(c))?);
    }
    Ok(ids.iter().copied().find(|id| !found.contains(id)))
}

/// A foreign-key error worded as PostgreSQL words it.
pub(super) fn missing_parent(
    table: &str,
    constraint: &str,
    column: &str,
    value: impl std::fmt::Display,
    parent: &str,
) -> Error {
    Error::ForeignKeyViolation {
        constraint: Some(constraint.to_owned()),
        message: format!(
            "insert or update on table \"{table}\" violates foreign key constraint \"{constraint}\" \
             (Key ({column})=({value}) is not present in table \"{parent}\".)"
        ),
    }
}
