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
    /// Behind a pooler that shares server connections between transactions (pgbouncer's
    /// transaction mode), on a pool with deadlines and outside a transaction, the users are
    /// read in keyset pages of 1 000 instead, each page a statement in a transaction of its own
    /// begun with the deadlines (a stream cannot keep one transaction open at the caller's pace
    /// without holding the pooler's server connection): each page is bounded, and a user
    /// inserted or deleted while the rows are read may show or not, as with
    /// [`each_user`](Repo::each_user). Inside a transaction it streams as above.
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
        if crate::transaction::before_statement(self.conn, self.own.get())? {
            return Ok(Box::new(UserPages {
                repo: self,
                from: Some(i64::MIN),
                page: Vec::new().into_iter(),
            }));
        }
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

/// The users of [`Repo::users_iter`] read in keyset pages of [`STREAM_PAGE`], each page through
/// [`Repo::run`] (so in a transaction of its own where the deadlines need one).
struct UserPages<'r, 'c> {
    repo: &'r mut Repo<'c>,
    /// The first id of the next page; `None`: no page left (or a page failed).
    from: Option<i64>,
    page: std::vec::IntoIter<User>,
}

/// The page size of [`UserPages`].
const STREAM_PAGE: i64 = 1_000;

impl Iterator for UserPages<'_, '_> {
    type Item = Result<User>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(user) = self.page.next() {
            return Some(Ok(user));
        }
        let from = self.from.take()?;
        match self
            .repo
            .run(|c| dispatch!(c => user::page(from, STREAM_PAGE).load(c)))
        {
            Ok(page) => {
                if page.len() as i64 == STREAM_PAGE {
                    self.from = page.last().and_then(|last| last.user_id.checked_add(1));
                }
                self.page = page.into_iter();
                self.page.next().map(Ok)
            }
            Err(error) => Some(Err(error)),
        }
    }
}
