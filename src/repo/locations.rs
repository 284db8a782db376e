//! Locations, and the links between users and locations.

use diesel::connection::TransactionManager;
use diesel::prelude::*;

use super::dispatch::dispatch;
use super::support::{
    chunk_rows, delete_one, insert_chunks, missing_parent, References, LINK_USER_FKEY,
};
use super::Repo;
use crate::config::Backend;
use crate::connection::AnyConnection;
use crate::error::{Error, Result};
use crate::models::{location, user_location, Location, NewLocation, UserLocation};
use crate::schema::{locations, userlocations, users};
use crate::validate;

/// Columns of a link row, for chunking under the bind limit.
pub(super) const LINK_COLUMNS: usize = 2;

impl Repo<'_> {
    /// The location with id `location_id`.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is none.
    pub fn location(&mut self, location_id: i32) -> Result<Location> {
        op!(self, Location, {
            self.run(|c| dispatch!(c => location::by_id(location_id).first(c)))
        })
    }

    /// The location named `name`, or `None`.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] for a name no location can have (blank, a NUL byte, too long).
    pub fn find_location_by_name(&mut self, name: &str) -> Result<Option<Location>> {
        op!(self, FindLocationByName, {
            validate::text("location_name", name, validate::NAME_MAX)?;
            self.run(|c| dispatch!(c => location::by_name(name).first(c).optional()))
        })
    }

    /// Every location, ordered by id.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    pub fn locations(&mut self) -> Result<Vec<Location>> {
        op!(self, Locations, {
            self.run(|c| dispatch!(c => location::all().load(c)))
        })
    }

    /// Inserts a location and returns the stored row (with its generated id).
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] for a bad value; [`Error::UniqueViolation`] when the name is taken.
    pub fn insert_location(&mut self, new: &NewLocation<'_>) -> Result<Location> {
        op!(self, InsertLocation, {
            let new = new.checked()?;
            self.run(|c| {
                dispatch!(c => diesel::insert_into(locations::table)
                    .values(&new)
                    .returning(Location::as_returning())
                    .get_result(c))
            })
        })
    }

    /// Renames location `location_id`; returns the stored row.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] for a bad name; [`Error::UniqueViolation`] naming the constraint
    /// when the name is taken; [`Error::NotFound`] when there is no such location.
    pub fn rename_location(&mut self, location_id: i32, new_name: &str) -> Result<Location> {
        op!(self, RenameLocation, {
            validate::text("location_name", new_name, validate::NAME_MAX)?;
            let renamed = self.run(|c| {
                dispatch!(c => diesel::update(locations::table.find(location_id))
                    .set(locations::location_name.eq(new_name))
                    .returning(Location::as_returning())
                    .get_result(c)
                    .optional())
            })?;
            renamed.ok_or(Error::NotFound)
        })
    }

    /// Deletes location `location_id` and, by `CASCADE`, its links.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is no such location.
    pub fn delete_location(&mut self, location_id: i32) -> Result<()> {
        op!(self, DeleteLocation, {
            delete_one(self.run(
                |c| dispatch!(c => diesel::delete(locations::table.find(location_id)).execute(c)),
            )?)
        })
    }

    /// Every link, ordered by user id then location id.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    pub fn user_locations(&mut self) -> Result<Vec<UserLocation>> {
        op!(self, UserLocations, {
            self.run(|c| dispatch!(c => user_location::all().load(c)))
        })
    }

    /// Links user `user_id` to location `location_id`. Linking twice is not an error: returns
    /// whether a new link was made.
    ///
    /// Never deadlocks with another write of the user's links: on its own it is one statement
    /// that holds no lock another such write waits for; inside a transaction it runs in a
    /// savepoint that first locks the user's row, as
    /// [`replace_user_locations`](Repo::replace_user_locations) does. When it fails inside a
    /// transaction, only its savepoint is rolled back.
    ///
    /// # Errors
    ///
    /// [`Error::ForeignKeyViolation`] when the user or the location does not exist.
    pub fn link(&mut self, user_id: i64, location_id: i32) -> Result<bool> {
        op!(self, Link, {
            let link = UserLocation {
                location_id,
                user_id,
            };
            let inserted = self.write_links(user_id, |repo| {
                repo.run(|c| {
                    dispatch!(c => diesel::insert_into(userlocations::table)
                        .values(&link)
                        .on_conflict_do_nothing()
                        .execute(c))
                })
            });
            Ok(self.name_reference(inserted, || References::links(&[link]))? == 1)
        })
    }

    /// Inserts a link, failing if it exists. Never deadlocks with another write of the user's
    /// links, as [`link`](Repo::link).
    ///
    /// # Errors
    ///
    /// [`Error::UniqueViolation`] when the link exists; [`Error::ForeignKeyViolation`] when the
    /// user or the location does not.
    pub fn insert_user_location(&mut self, link: &UserLocation) -> Result<UserLocation> {
        op!(self, InsertUserLocation, {
            let inserted = self.write_links(link.user_id, |repo| {
                repo.run(|c| {
                    dispatch!(c => diesel::insert_into(userlocations::table)
                        .values(link)
                        .execute(c))
                })
            });
            self.name_reference(inserted, || References::links(&[*link]))?;
            Ok(*link)
        })
    }

    /// Removes the link between user `user_id` and location `location_id`; returns whether
    /// there was one. Never deadlocks with another write of the user's links, as
    /// [`link`](Repo::link).
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    pub fn unlink(&mut self, user_id: i64, location_id: i32) -> Result<bool> {
        op!(self, Unlink, {
            let link = UserLocation {
                location_id,
                user_id,
            };
            let deleted = self.write_links(user_id, |repo| {
                repo.run(|c| dispatch!(c => diesel::delete(&link).execute(c)))
            })?;
            Ok(deleted == 1)
        })
    }

    /// Makes `location_ids` the exact set of user `user_id`'s locations, in one transaction
    /// (a savepoint inside an open one): links not in the set go, missing ones are made.
    ///
    /// Atomic, and deadlock-free against concurrent writes of the user's links: it first locks
    /// the user's row (`SELECT … FOR NO KEY UPDATE` on PostgreSQL, which foreign-key checks,
    /// taking `FOR KEY SHARE`, do not wait for; SQLite's transactions hold the write lock), as
    /// every transaction writing the user's links does ([`link`](Repo::link),
    /// [`unlink`](Repo::unlink), [`insert_user_location`](Repo::insert_user_location) inside a
    /// transaction, [`import_links`](Repo::import_links)), so those run one after another. It
    /// touches links in location-id order; a link made meanwhile by a `link` outside a
    /// transaction stays. Any number of ids works: deletes and inserts are chunked under the
    /// bind limit.
    ///
    /// # Errors
    ///
    /// [`Error::ForeignKeyViolation`] when the user or a location does not exist; nothing
    /// changes then.
    pub fn replace_user_locations(&mut self, user_id: i64, location_ids: &[i32]) -> Result<()> {
        op!(self, ReplaceUserLocations, {
            let mut wanted = location_ids.to_vec();
            wanted.sort_unstable();
            wanted.dedup();
            let replaced = self.transaction(|repo| {
                if !repo.lock_user(user_id)? {
                    return Err(missing_parent(
                        "userlocations",
                        LINK_USER_FKEY,
                        "user_id",
                        user_id,
                        "users",
                    ));
                }
                let current: Vec<i32> =
                    repo.run(|c| dispatch!(c => user_location::location_ids_of(user_id).load(c)))?;
                let gone: Vec<i32> = current
                    .iter()
                    .copied()
                    .filter(|id| wanted.binary_search(id).is_err())
                    .collect();
                let made: Vec<UserLocation> = wanted
                    .iter()
                    .filter(|id| current.binary_search(id).is_err())
                    .map(|&location_id| UserLocation {
                        location_id,
                        user_id,
                    })
                    .collect();
                let per_chunk = chunk_rows(repo.backend(), 1).saturating_sub(1).max(1);
                for chunk in gone.chunks(per_chunk) {
                    repo.run(|c| {
                        dispatch!(c => diesel::delete(
                            userlocations::table
                                .filter(userlocations::user_id.eq(user_id))
                                .filter(userlocations::location_id.eq_any(chunk)),
                        )
                        .execute(c))
                    })?;
                }
                let per_chunk = chunk_rows(repo.backend(), LINK_COLUMNS);
                repo.run(|c| match c {
                    // A link made meanwhile by a call outside a transaction (which takes no lock) is
                    // kept, as if that call came just after this one.
                    AnyConnection::Pg(c) => insert_chunks(c, &made, per_chunk, |c, chunk| {
                        diesel::insert_into(userlocations::table)
                            .values(chunk)
                            .on_conflict_do_nothing()
                            .execute(c)
                    }),
                    // SQLite's write lock keeps every other writer out since the read.
                    AnyConnection::Sqlite(c) => insert_chunks(c, &made, per_chunk, |c, chunk| {
                        diesel::insert_into(userlocations::table)
                            .values(chunk)
                            .execute(c)
                    }),
                })?;
                Ok(())
            });
            let links: Vec<UserLocation> = wanted
                .iter()
                .map(|&location_id| UserLocation {
                    location_id,
                    user_id,
                })
                .collect();
            self.name_reference(replaced, || References::links(&links))
        })
    }

    /// Runs `write`, a write of one link of user `user_id` (one statement), so that it never
    /// deadlocks with another write of the user's links.
    ///
    /// Outside a transaction the statement runs on its own: it waits for at most one lock while
    /// holding none that another writer of the user's links waits for (its foreign-key check
    /// takes `FOR KEY SHARE` on the user's row, which the `FOR NO KEY UPDATE` of
    /// [`lock_user`](Repo::lock_user) does not block), so it cannot close a cycle of waits.
    ///
    /// Inside a transaction, whose earlier and later statements may hold and wait for other
    /// locks, it runs in a savepoint that on PostgreSQL first locks the user's row, as
    /// [`replace_user_locations`](Repo::replace_user_locations) does: every transaction writing
    /// the user's links then takes that lock first. With no such user, `write` runs unlocked and
    /// reports what is missing as the database does. A write that fails rolls back its
    /// savepoint only, as a failed `replace_user_locations` does, on both backends. On SQLite
    /// the transaction's write lock serializes the writes already.
    fn write_links<T>(
        &mut self,
        user_id: i64,
        write: impl FnOnce(&mut Repo<'_>) -> Result<T>,
    ) -> Result<T> {
        if !self.in_transaction()? {
            return write(self);
        }
        self.transaction(|repo| {
            if matches!(repo.backend(), Backend::Postgres) {
                repo.lock_user(user_id)?;
            }
            write(repo)
        })
    }

    /// Whether a transaction is open on the connection.
    fn in_transaction(&mut self) -> Result<bool> {
        let status =
            <AnyConnection as Connection>::TransactionManager::transaction_manager_status_mut(
                self.conn,
            );
        Ok(status.transaction_depth()?.is_some())
    }

    /// Locks the rows of the users of `links` until the transaction ends, in user-id order (on
    /// PostgreSQL, `FOR NO KEY UPDATE` as [`lock_user`](Repo::lock_user); nothing on SQLite): what
    /// a bulk write of links takes first, so it cannot deadlock with the writes of one user's
    /// links, nor with another bulk write (both take their user locks in the same order).
    /// One statement, each user once (the ids are one array parameter, not one bind each); users
    /// that do not exist are skipped (the insert then reports them).
    pub(super) fn lock_link_users(&mut self, links: &[UserLocation]) -> Result<()> {
        if matches!(self.backend(), Backend::Sqlite) {
            return Ok(());
        }
        let mut user_ids: Vec<i64> = links.iter().map(|l| l.user_id).collect();
        user_ids.sort_unstable();
        user_ids.dedup();
        let query = users::table
            .filter(users::user_id.eq_any(&user_ids))
            .order(users::user_id)
            .select(users::user_id);
        self.run(|c| match c {
            AnyConnection::Pg(c) => query.for_no_key_update().load::<i64>(c).map(drop),
            AnyConnection::Sqlite(_) => Ok(()),
        })
    }

    /// Locks user `user_id`'s row until the transaction ends (`FOR NO KEY UPDATE` on
    /// PostgreSQL: it excludes the other writers of the user's links, not foreign-key checks;
    /// on SQLite the transaction holds the database's write lock already); returns whether
    /// there is such a user.
    fn lock_user(&mut self, user_id: i64) -> Result<bool> {
        let query = users::table.find(user_id).select(users::user_id);
        let found: Option<i64> = self.run(|c| match c {
            AnyConnection::Pg(c) => query.for_no_key_update().first(c).optional(),
            AnyConnection::Sqlite(c) => query.first(c).optional(),
        })?;
        Ok(found.is_some())
    }
}
