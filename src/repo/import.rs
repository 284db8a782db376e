//! Bulk loads: many rows in one transaction, chunked under the backend's bind-parameter limit,
//! or through PostgreSQL's `COPY`.

use std::collections::HashMap;

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::dispatch::dispatch;
use super::locations::LINK_COLUMNS;
use super::support::{chunk_rows, insert_chunks, NowRow, References, SQLITE_MAX_BINDS};
use super::Repo;
use crate::config::Backend;
use crate::connection::AnyConnection;
use crate::error::{Error, Result};
use crate::models::location::LocationRow;
use crate::models::user::{insert_users, sqlite_timestamp_text, SqliteUserRow, UserRow};
use crate::models::{NewLocation, NewUser, UserLocation};
use crate::schema::{locations, userlocations, users};

/// Columns of a user row, for chunking under the bind limit.
const USER_COLUMNS: usize = 8;
/// Columns of a location row (the id is generated).
const LOCATION_COLUMNS: usize = 4;

/// How users are written on PostgreSQL (SQLite always inserts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ImportMethod {
    /// Chunked multi-row `INSERT`s.
    Insert,
    /// Binary `COPY FROM STDIN`.
    Copy,
}

/// The temporary tables PostgreSQL's imports `COPY` into before one `INSERT … SELECT`: dropped
/// when the transaction ends, emptied after each use (an enclosing transaction may import
/// again).
mod stage {
    diesel::table! {
        userbase_links_stage (location_id, user_id) {
            location_id -> Int4,
            user_id -> Int8,
        }
    }

    diesel::table! {
        userbase_locations_stage (ord) {
            ord -> Int8,
            location_id -> Nullable<Int4>,
            location_name -> Text,
            address -> Text,
            has_solarium -> Bool,
            created_at -> Timestamp,
        }
    }
}

const CREATE_LINKS_STAGE: &str = "CREATE TEMPORARY TABLE IF NOT EXISTS userbase_links_stage \
     (location_id INTEGER NOT NULL, user_id BIGINT NOT NULL) ON COMMIT DROP";

/// The staged links not stored yet, as a plain `INSERT`: the stage holds each link once (the
/// input is deduplicated before it is staged), so only a link stored meanwhile by a concurrent
/// writer can make it fail (see [`Repo::store_links`]). No `ORDER BY`: the stage is written in
/// primary-key order, and `ON CONFLICT`'s per-row probe and confirmation are what this saves
/// (a tenth of the server's time for links into an empty table).
const INSERT_NEW_STAGED_LINKS: &str = "INSERT INTO userlocations (location_id, user_id) \
     SELECT location_id, user_id FROM userbase_links_stage AS s WHERE NOT EXISTS \
     (SELECT 1 FROM userlocations AS u \
      WHERE u.location_id = s.location_id AND u.user_id = s.user_id)";

/// The staged links, skipping those stored: what [`INSERT_NEW_STAGED_LINKS`] falls back to when a
/// concurrent writer stored one of them.
const INSERT_STAGED_LINKS: &str = "INSERT INTO userlocations (location_id, user_id) \
     SELECT location_id, user_id FROM userbase_links_stage ON CONFLICT DO NOTHING";

const CREATE_LOCATIONS_STAGE: &str = "CREATE TEMPORARY TABLE IF NOT EXISTS \
     userbase_locations_stage (ord BIGINT NOT NULL, location_id INTEGER, \
     location_name TEXT NOT NULL, address TEXT NOT NULL, has_solarium BOOLEAN NOT NULL, \
     created_at TIMESTAMP NOT NULL) ON COMMIT DROP";

/// Generated ids are taken in the order of the input (PostgreSQL evaluates the select list's
/// `nextval` after the sort).
const INSERT_STAGED_LOCATIONS: &str = "INSERT INTO locations \
     (location_id, location_name, address, has_solarium, created_at) \
     SELECT coalesce(location_id, CAST(nextval('locations_location_id_seq') AS INTEGER)), \
     location_name, address, has_solarium, created_at \
     FROM userbase_locations_stage ORDER BY ord";

/// Moves the id sequence of `locations` past the largest stored id (never back).
const ADVANCE_LOCATION_IDS: &str = "SELECT setval('locations_location_id_seq', m) \
     FROM (SELECT max(location_id) AS m FROM locations) AS stored, \
     (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END AS n \
      FROM locations_location_id_seq) AS seq \
     WHERE m > n";

/// A location as its import writes it: with an id, or without one for a generated one.
#[derive(Debug, Clone, Copy)]
struct LocationImportRow<'a> {
    location_id: Option<i32>,
    location_name: &'a str,
    address: &'a str,
    has_solarium: bool,
    created_at: NaiveDateTime,
}

impl<'a> LocationImportRow<'a> {
    fn new(location_id: Option<i32>, row: LocationRow<'a>) -> Self {
        LocationImportRow {
            location_id,
            location_name: row.location_name,
            address: row.address,
            has_solarium: row.has_solarium,
            created_at: row.created_at,
        }
    }

    /// The row without its id, for a generated one.
    fn generated(&self) -> LocationRow<'a> {
        LocationRow {
            location_name: self.location_name,
            address: self.address,
            has_solarium: self.has_solarium,
            created_at: self.created_at,
        }
    }

    /// The row with its id.
    fn with_id(&self, location_id: i32) -> LocationWithIdRow<'a> {
        LocationWithIdRow {
            location_id,
            location_name: self.location_name,
            address: self.address,
            has_solarium: self.has_solarium,
            created_at: self.created_at,
        }
    }
}

/// A location row with its id, for SQLite's inserts.
#[derive(Debug, Clone, Copy, Insertable)]
#[diesel(table_name = locations, treat_none_as_default_value = false)]
struct LocationWithIdRow<'a> {
    location_id: i32,
    location_name: &'a str,
    address: &'a str,
    has_solarium: bool,
    created_at: NaiveDateTime,
}

/// A row of `userbase_locations_stage`.
#[derive(Debug, Clone, Copy, Insertable)]
#[diesel(table_name = stage::userbase_locations_stage, treat_none_as_default_value = false)]
struct LocationStageRow<'a> {
    ord: i64,
    location_id: Option<i32>,
    location_name: &'a str,
    address: &'a str,
    has_solarium: bool,
    created_at: NaiveDateTime,
}

impl<'a> LocationStageRow<'a> {
    fn new(ord: i64, row: &LocationImportRow<'a>) -> Self {
        LocationStageRow {
            ord,
            location_id: row.location_id,
            location_name: row.location_name,
            address: row.address,
            has_solarium: row.has_solarium,
            created_at: row.created_at,
        }
    }
}

/// A row of `userbase_links_stage`.
#[derive(Debug, Clone, Copy, Insertable)]
#[diesel(table_name = stage::userbase_links_stage, treat_none_as_default_value = false)]
struct LinkStageRow {
    location_id: i32,
    user_id: i64,
}

impl From<&UserLocation> for LinkStageRow {
    fn from(link: &UserLocation) -> Self {
        LinkStageRow {
            location_id: link.location_id,
            user_id: link.user_id,
        }
    }
}

impl Repo<'_> {
    /// Inserts many users in one transaction, in chunks under the backend's bind-parameter limit
    /// (65,535 binds a statement on PostgreSQL, 32,766 on SQLite); returns how many were
    /// inserted. Every row is validated first; defaults (`language`, `active`, `created_at`) are
    /// filled in with the database's values.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] naming the field of the first bad row, before anything is
    /// written; [`Error::ReferralCycle`] when the batch's referrals make a cycle; a constraint
    /// error (duplicate id, missing referrer) rolls back every chunk.
    pub fn import_users(&mut self, users: &[NewUser<'_>]) -> Result<usize> {
        op!(self, ImportUsers, {
            self.import_users_by(users, ImportMethod::Insert)
        })
    }

    /// As [`import_users`](Repo::import_users), through PostgreSQL's `COPY FROM STDIN` (binary),
    /// the fastest way in; on SQLite the same as `import_users`.
    ///
    /// # Errors
    ///
    /// As [`import_users`](Repo::import_users).
    pub fn copy_users(&mut self, users: &[NewUser<'_>]) -> Result<usize> {
        op!(self, CopyUsers, {
            self.import_users_by(users, ImportMethod::Copy)
        })
    }

    fn import_users_by(&mut self, users: &[NewUser<'_>], method: ImportMethod) -> Result<usize> {
        let users = users
            .iter()
            .map(NewUser::checked)
            .collect::<Result<Vec<_>>>()?;
        check_batch_referrals(&users)?;
        let users = &users;
        self.transaction(|repo| {
            // Serialized with referral changes (see `Repo::lock_referrals`).
            repo.lock_referrals_for(users)?;
            repo.write_users(users, method)
        })
    }

    /// Writes `users` (validated, without a referral cycle among them) in the open transaction:
    /// defaults filled in with the database's now, `COPY` or chunked inserts by `method`.
    pub(super) fn write_users(
        &mut self,
        users: &[NewUser<'_>],
        method: ImportMethod,
    ) -> Result<usize> {
        let now = self.database_now()?;
        let rows: Vec<_> = users.iter().map(|u| u.to_row(now)).collect();
        let per_chunk = chunk_rows(self.backend(), USER_COLUMNS);
        let written = self.run(|c| match (c, method) {
            (AnyConnection::Pg(c), ImportMethod::Copy) => diesel::copy_from(users::table)
                .from_insertable(&rows)
                .execute(c),
            (AnyConnection::Pg(c), ImportMethod::Insert) => {
                insert_chunks(c, &rows, per_chunk, |c, chunk| {
                    diesel::insert_into(users::table).values(chunk).execute(c)
                })
            }
            // SQLite has no COPY: both methods insert in chunks.
            (AnyConnection::Sqlite(c), _) => insert_users_sqlite(c, &rows, now),
        });
        self.name_reference(written, || References::referrers(users))
    }

    /// Inserts many locations in one transaction (PostgreSQL: `COPY` into a temporary table,
    /// then one `INSERT … SELECT`; SQLite: chunked like [`import_users`](Repo::import_users));
    /// returns how many were inserted. Ids are generated in the order of `locations`.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] before anything is written; [`Error::UniqueViolation`] for a taken
    /// name (nothing is kept).
    pub fn import_locations(&mut self, locations: &[NewLocation<'_>]) -> Result<usize> {
        op!(self, ImportLocations, {
            let locations = locations
                .iter()
                .map(|l| Ok((None, l.checked()?)))
                .collect::<Result<Vec<_>>>()?;
            self.transaction(|repo| repo.write_locations(&locations))
        })
    }

    /// Writes `locations` (validated; each with the id to store it under, or `None` for a
    /// generated one) in the open transaction. With explicit ids on PostgreSQL, the id sequence
    /// is moved past the largest id stored, so later generated ids do not collide.
    pub(super) fn write_locations(
        &mut self,
        locations: &[(Option<i32>, NewLocation<'_>)],
    ) -> Result<usize> {
        let now = self.database_now()?;
        let rows: Vec<LocationImportRow<'_>> = locations
            .iter()
            .map(|(id, l)| LocationImportRow::new(*id, l.to_row(now)))
            .collect();
        let explicit_ids = rows.iter().any(|r| r.location_id.is_some());
        let per_chunk = chunk_rows(self.backend(), LOCATION_COLUMNS + 1);
        self.run(|c| match c {
            AnyConnection::Pg(c) => {
                diesel::sql_query(CREATE_LOCATIONS_STAGE).execute(c)?;
                let staged: Vec<LocationStageRow<'_>> = rows
                    .iter()
                    .zip(0_i64..)
                    .map(|(row, ord)| LocationStageRow::new(ord, row))
                    .collect();
                diesel::copy_from(stage::userbase_locations_stage::table)
                    .from_insertable(&staged)
                    .execute(c)?;
                let inserted = diesel::sql_query(INSERT_STAGED_LOCATIONS).execute(c)?;
                diesel::sql_query("TRUNCATE userbase_locations_stage").execute(c)?;
                if explicit_ids {
                    diesel::sql_query(ADVANCE_LOCATION_IDS).execute(c)?;
                }
                Ok(inserted)
            }
            // Runs of rows with ids and without, in input order (ids are generated in it).
            AnyConnection::Sqlite(c) => {
                let mut inserted = 0;
                for run in rows.chunk_by(|a, b| a.location_id.is_some() == b.location_id.is_some())
                {
                    let with_ids: Vec<_> = run
                        .iter()
                        .filter_map(|r| r.location_id.map(|id| r.with_id(id)))
                        .collect();
                    inserted += if with_ids.is_empty() {
                        let generated: Vec<_> =
                            run.iter().map(LocationImportRow::generated).collect();
                        insert_chunks(c, &generated, per_chunk, |c, chunk| {
                            diesel::insert_into(locations::table)
                                .values(chunk)
                                .execute(c)
                        })?
                    } else {
                        insert_chunks(c, &with_ids, per_chunk, |c, chunk| {
                            diesel::insert_into(locations::table)
                                .values(chunk)
                                .execute(c)
                        })?
                    };
                }
                Ok(inserted)
            }
        })
    }

    /// Inserts many links in one transaction; links that exist (or come twice) are skipped.
    /// Returns how many were made. PostgreSQL: `COPY` into a temporary table, the rows of the
    /// links' users locked in one statement (as every transaction writing a user's links does,
    /// so it never deadlocks with them), then one `INSERT … SELECT` of the links not stored
    /// yet (`ON CONFLICT DO NOTHING` when a concurrent writer stored one meanwhile); SQLite:
    /// chunked `INSERT OR IGNORE`.
    ///
    /// # Errors
    ///
    /// [`Error::ForeignKeyViolation`] when a user or location does not exist (nothing is kept).
    pub fn import_links(&mut self, links: &[UserLocation]) -> Result<usize> {
        op!(self, ImportLinks, {
            self.transaction(|repo| repo.store_links(links))
        })
    }

    /// Writes `links` in the open transaction, skipping those that exist; returns how many
    /// were made.
    ///
    /// On PostgreSQL the links are deduplicated and sorted by primary key, copied into a
    /// temporary table, and the rows of their users locked (see
    /// [`Repo::lock_link_users`]); then the links not stored yet go in with a plain `INSERT …
    /// SELECT … WHERE NOT EXISTS`, in a savepoint. A writer that takes no user lock (a
    /// [`link`](Repo::link) outside a transaction) may store one of them meanwhile: the
    /// `INSERT` then fails with a unique violation, its savepoint is rolled back and the links
    /// go in with `ON CONFLICT DO NOTHING` instead, so the result is the same either way.
    pub(super) fn store_links(&mut self, links: &[UserLocation]) -> Result<usize> {
        let written = match self.backend() {
            Backend::Postgres => self.store_links_pg(links),
            // SQLite has no multi-row insert with ON CONFLICT; INSERT OR IGNORE is its form.
            Backend::Sqlite => {
                let per_chunk = chunk_rows(self.backend(), LINK_COLUMNS);
                self.run(|c| match c {
                    AnyConnection::Sqlite(c) => insert_chunks(c, links, per_chunk, |c, chunk| {
                        diesel::insert_or_ignore_into(userlocations::table)
                            .values(chunk)
                            .execute(c)
                    }),
                    AnyConnection::Pg(_) => Ok(0),
                })
            }
        };
        self.name_reference(written, || References::links(links))
    }

    /// [`store_links`](Repo::store_links) on PostgreSQL.
    fn store_links_pg(&mut self, links: &[UserLocation]) -> Result<usize> {
        let mut staged: Vec<LinkStageRow> = links.iter().map(LinkStageRow::from).collect();
        staged.sort_unstable_by_key(|l| (l.location_id, l.user_id));
        staged.dedup_by_key(|l| (l.location_id, l.user_id));
        let pg = |c: &mut AnyConnection, sql: &str| match c {
            AnyConnection::Pg(c) => diesel::sql_query(sql).execute(c),
            AnyConnection::Sqlite(_) => Ok(0),
        };
        self.run(|c| pg(c, CREATE_LINKS_STAGE))?;
        self.run(|c| match c {
            AnyConnection::Pg(c) => diesel::copy_from(stage::userbase_links_stage::table)
                .from_insertable(&staged)
                .execute(c),
            AnyConnection::Sqlite(_) => Ok(0),
        })?;
        // Serialized with other writes of these users' links.
        self.lock_link_users(links)?;
        let inserted = match self.transaction(|repo| repo.run(|c| pg(c, INSERT_NEW_STAGED_LINKS))) {
            Err(Error::UniqueViolation { .. }) => self.run(|c| pg(c, INSERT_STAGED_LINKS))?,
            other => other?,
        };
        self.run(|c| pg(c, "TRUNCATE userbase_links_stage"))?;
        Ok(inserted)
    }

    /// The database's current time as its `created_at` default would store it.
    fn database_now(&mut self) -> Result<NaiveDateTime> {
        let sql = match self.backend() {
            Backend::Postgres => "SELECT CAST(now() AS TIMESTAMP) AS now",
            Backend::Sqlite => "SELECT strftime('%Y-%m-%d %H:%M:%f', 'now') AS now",
        };
        let row: NowRow = self.run(|c| dispatch!(c => diesel::sql_query(sql).get_result(c)))?;
        Ok(row.now)
    }
}

/// Rows a full chunk of [`insert_users_sqlite`] holds: as many as SQLite's bind limit allows.
const SQLITE_USER_CHUNK: usize = 4_095;
const _: () = assert!(SQLITE_USER_CHUNK * USER_COLUMNS <= SQLITE_MAX_BINDS);
const _: () = assert!((SQLITE_USER_CHUNK + 1) * USER_COLUMNS > SQLITE_MAX_BINDS);

/// Inserts `rows` on SQLite in statements Diesel's statement cache keeps prepared.
///
/// A multi-row `INSERT` of a slice has no static query id, so Diesel parses it again on every
/// call (SQLite's parser was the largest cost of an import); [`insert_users`] has one: each row
/// count `N` is one SQL text, prepared once per connection. The rows go in
/// full chunks of [`SQLITE_USER_CHUNK`], then the rest in chunks of 2048, 1024, … 1 rows (its
/// binary digits): at most 13 shapes are ever cached, and a batch takes at most 12 statements
/// beyond its full chunks. SQLite checks foreign keys at the end of each statement, and one
/// `INSERT` of the whole batch let a row refer to a later row of the batch: so a referrer of the
/// batch goes in before the users it referred (see [`referrers_first`]); other rows keep their
/// order. `created_at` is formatted once per distinct value (a batch mostly shares the
/// database's now) instead of once a row.
fn insert_users_sqlite(
    c: &mut SqliteConnection,
    rows: &[UserRow<'_>],
    now: NaiveDateTime,
) -> QueryResult<usize> {
    let now_text = sqlite_timestamp_text(now);
    let own_texts: Vec<Option<String>> = rows
        .iter()
        .map(|r| (r.created_at != now).then(|| sqlite_timestamp_text(r.created_at)))
        .collect();
    let row = |i: usize| {
        let text = own_texts.get(i).and_then(Option::as_deref);
        rows[i].with_timestamp_text(text.unwrap_or(&now_text))
    };
    let rows: Vec<SqliteUserRow<'_>> = match referrers_first(rows) {
        Some(order) => order.into_iter().map(row).collect(),
        None => (0..rows.len()).map(row).collect(),
    };
    let mut rest = rows.as_slice();
    let mut inserted = 0;
    macro_rules! shapes {
        ($($n:expr),*) => {
            $(inserted += insert_users_in::<{ $n }>(c, &mut rest)?;)*
        };
    }
    shapes!(
        SQLITE_USER_CHUNK,
        2048,
        1024,
        512,
        256,
        128,
        64,
        32,
        16,
        8,
        4,
        2,
        1
    );
    debug_assert!(rest.is_empty());
    Ok(inserted)
}

/// The order to insert `rows` in so that each row's referrer, when it is in `rows`, comes before
/// it: `None` when `rows` already is (the common case, checked without allocating for a batch
/// without referrals), else the indices, stable otherwise. `rows` has no referral cycle
/// ([`check_batch_referrals`]); a walk is cut short anyway where it would meet itself.
fn referrers_first(rows: &[UserRow<'_>]) -> Option<Vec<usize>> {
    if rows.iter().all(|r| r.referrer_id.is_none()) {
        return None;
    }
    let mut index: HashMap<i64, usize> = HashMap::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        index.entry(row.user_id).or_insert(i);
    }
    let referrer_of = |i: usize| {
        rows.get(i)
            .and_then(|r| r.referrer_id)
            .and_then(|id| index.get(&id).copied())
    };
    if (0..rows.len()).all(|i| referrer_of(i).is_none_or(|j| j < i)) {
        return None;
    }
    // Each row's state: 0 not reached, 1 on the current walk, 2 placed.
    let mut state = vec![0_u8; rows.len()];
    let mut order = Vec::with_capacity(rows.len());
    let mut walk = Vec::new();
    for start in 0..rows.len() {
        let mut node = Some(start);
        while let Some(i) = node.filter(|&i| state[i] == 0) {
            state[i] = 1;
            walk.push(i);
            node = referrer_of(i);
        }
        while let Some(i) = walk.pop() {
            state[i] = 2;
            order.push(i);
        }
    }
    Some(order)
}

/// Inserts the leading `N`-row chunks of `rows` (as many as there are), one cached statement
/// each, and leaves the rest in `rows`.
fn insert_users_in<const N: usize>(
    c: &mut SqliteConnection,
    rows: &mut &[SqliteUserRow<'_>],
) -> QueryResult<usize> {
    let mut inserted = 0;
    while let Some((chunk, rest)) = rows.split_first_chunk::<N>() {
        inserted += insert_users(chunk).execute(c)?;
        *rows = rest;
    }
    Ok(inserted)
}

/// Refuses a batch of new users whose referrals make a cycle (A refers B, B refers A, or
/// longer), before anything is written.
///
/// Only the batch can close a cycle: stored users cannot refer to users not written yet (the
/// foreign key forbids it), and a batch user that exists already fails as a duplicate.
pub(super) fn check_batch_referrals(users: &[NewUser<'_>]) -> Result<()> {
    let referrer_of: HashMap<i64, i64> = users
        .iter()
        .filter_map(|u| u.referrer_id.map(|r| (u.user_id, r)))
        .collect();
    if referrer_of.is_empty() {
        return Ok(());
    }
    // Each user has at most one referrer: walk each chain once. 1: on the walk, 2: done. A
    // user without a referrer in the batch starts no cycle, so walks start at those with one.
    let mut state: HashMap<i64, u8> = HashMap::with_capacity(referrer_of.len());
    let mut walk = Vec::new();
    for user in users.iter().filter(|u| u.referrer_id.is_some()) {
        let mut node = user.user_id;
        loop {
            match state.get(&node) {
                Some(2) => break,
                Some(_) => {
                    let user_id = walk.last().copied().unwrap_or(node);
                    return Err(Error::ReferralCycle {
                        user_id,
                        referrer_id: node,
                    });
                }
                None => {}
            }
            state.insert(node, 1);
            walk.push(node);
            match referrer_of.get(&node) {
                Some(&next) => node = next,
                None => break,
            }
        }
        for node in walk.drain(..) {
            state.insert(node, 2);
        }
    }
    Ok(())
}
