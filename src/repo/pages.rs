//! Large reads: keyset pages and row-by-row streaming.

use diesel::connection::DefaultLoadingMode;
use diesel::pg::PgRowByRowLoadingMode;
use diesel::prelude::*;

use super::dispatch::dispatch;
use super::Repo;
use crate::connection::AnyConnection;
use crate::error::{Error, Result};
use crate::metrics::{Op, Stream};
use crate::models::{location, user, Location, User, UserWithLocations};
use crate::validate;

impl Repo<'_> {
    /// At most `limit` users with an id above `after` (from the very first row, `i64::MIN`
    /// included, when `None`), ordered by id: keyset pagination. Pass the last id of a page as
    /// `after` for the next one.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] when `limit` is not between 1 and
    /// [`PAGE_LIMIT_MAX`](validate::PAGE_LIMIT_MAX).
    pub fn users_page(&mut self, after: Option<i64>, limit: i64) -> Result<Vec<User>> {
        op!(self, UsersPage, {
            let limit = validate::limit(limit)?;
            match after.map_or(Some(i64::MIN), |after| after.checked_add(1)) {
                Some(from) => self.run(|c| dispatch!(c => user::page(from, limit).load(c))),
                None => self.check_usable().map(|()| Vec::new()),
            }
        })
    }

    /// At most `limit` locations with an id above `after` (from the very first row when
    /// `None`), ordered by id.
    ///
    /// # Errors
    ///
    /// As [`users_page`](Repo::users_page).
    pub fn locations_page(&mut self, after: Option<i32>, limit: i64) -> Result<Vec<Location>> {
        op!(self, LocationsPage, {
            let limit = validate::limit(limit)?;
            match after.map_or(Some(i32::MIN), |after| after.checked_add(1)) {
                Some(from) => self.run(|c| dispatch!(c => location::page(from, limit).load(c))),
                None => self.check_usable().map(|()| Vec::new()),
            }
        })
    }

    /// A page of [`users_with_locations`](Repo::users_with_locations): at most `limit` users
    /// with an id above `after`, each with their locations, in two queries. Walks any number of
    /// users in bounded memory.
    ///
    /// # Errors
    ///
    /// As [`users_page`](Repo::users_page).
    pub fn users_with_locations_page(
        &mut self,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<UserWithLocations>> {
        op!(self, UsersWithLocationsPage, {
            let users = self.users_page(after, limit)?;
            self.attach_locations(users)
        })
    }

    /// Every user, ordered by id, streamed row by row (PostgreSQL's single-row mode, SQLite's
    /// statement stepping) instead of loaded at once.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the query cannot start; each item carries a row's own error.
    pub fn users_iter(&mut self) -> Result<Box<dyn Iterator<Item = Result<User>> + '_>> {
        let stream = Stream::start(self.conn, Op::UsersIter, self.in_op);
        let rows = self.users_rows();
        Stream::wrap(stream, rows)
    }

    /// The rows of [`users_iter`](Repo::users_iter).
    ///
    /// Failures go into the Repo's own failure record too: on a connection the application
    /// opened, nothing else sees them (on a pooled one the pool's instrumentation records what
    /// Diesel reports).
    fn users_rows(&mut self) -> Result<Box<dyn Iterator<Item = Result<User>> + '_>> {
        self.check_usable()?;
        let own = self.own.get();
        let rows: QueryResult<Box<dyn Iterator<Item = QueryResult<User>> + '_>> =
            match &mut *self.conn {
                AnyConnection::Pg(c) => user::all()
                    .load_iter::<User, PgRowByRowLoadingMode>(c)
                    .map(|rows| Box::new(rows) as Box<dyn Iterator<Item = _>>),
                AnyConnection::Sqlite(c) => user::all()
                    .load_iter::<User, DefaultLoadingMode>(c)
                    .map(|rows| Box::new(rows) as Box<dyn Iterator<Item = _>>),
            };
        match rows {
            Ok(rows) => Ok(Box::new(rows.map(move |row| {
                row.map_err(|error| {
                    own.record(&error);
                    Error::from(error)
                })
            }))),
            Err(error) => {
                own.record(&error);
                Err(error.into())
            }
        }
    }
}
