//! The reports of the SQLAlchemy tutorial, and raw SQL.

use diesel::prelude::*;
use diesel::QueryableByName;

use super::dispatch::dispatch;
use super::Repo;
use crate::connection::MultiBackend;
use crate::error::Result;
use crate::models::UserWithLocations;
use crate::models::{location, user, user_location, Location, LocationCount, User};
use crate::models::{LocationWithUsername, UserLocationCount};
use crate::validate;

impl Repo<'_> {
    /// Every user with their locations, users ordered by id and locations by id, loaded in
    /// exactly two queries (the tutorial's `selectinload`). The second one selects the links by
    /// a range of user ids, not a list of binds, so it works at any number of users.
    ///
    /// # Errors
    ///
    /// [`Error::Query`](crate::Error::Query) when the database fails.
    #[doc(alias = "get_users_with_locations")]
    pub fn users_with_locations(&mut self) -> Result<Vec<UserWithLocations>> {
        op!(self, UsersWithLocations, {
            let users = self.run(|c| dispatch!(c => user::all().load(c)))?;
            self.attach_locations(users)
        })
    }

    /// Loads the locations of `users` (ordered by id) in one query and pairs them up: the links
    /// of users from the first id to the last, so no id list is sent.
    pub(super) fn attach_locations(&mut self, users: Vec<User>) -> Result<Vec<UserWithLocations>> {
        let (Some(first), Some(last)) = (users.first(), users.last()) else {
            return Ok(Vec::new());
        };
        let (first, last) = (first.user_id, last.user_id);
        let links: Vec<(i64, Location)> =
            self.run(|c| dispatch!(c => location::of_user_range(first, last).load(c)))?;
        let mut links = links.into_iter().peekable();
        Ok(users
            .into_iter()
            .map(|user| {
                // Links of users inserted since the first query belong to no one here.
                while links.next_if(|(id, _)| *id < user.user_id).is_some() {}
                let mut locations = Vec::new();
                while let Some((_, location)) = links.next_if(|(id, _)| *id == user.user_id) {
                    locations.push(location);
                }
                UserWithLocations { user, locations }
            })
            .collect())
    }

    /// Users linked to location `location_id`, ordered by id.
    ///
    /// # Errors
    ///
    /// [`Error::Query`](crate::Error::Query) when the database fails.
    #[doc(alias = "get_users_by_location")]
    pub fn users_by_location(&mut self, location_id: i32) -> Result<Vec<User>> {
        op!(self, UsersByLocation, {
            self.run(|c| dispatch!(c => user::by_location(location_id).load(c)))
        })
    }

    /// The locations of user `user_id`, each with the user's username, ordered by location id.
    ///
    /// # Errors
    ///
    /// [`Error::Query`](crate::Error::Query) when the database fails.
    #[doc(alias = "get_all_user_locations_relationships")]
    pub fn user_locations_with_username(
        &mut self,
        user_id: i64,
    ) -> Result<Vec<LocationWithUsername>> {
        op!(self, UserLocationsWithUsername, {
            self.run(|c| dispatch!(c => location::of_user_with_username(user_id).load(c)))
        })
    }

    /// How many locations user `user_id` has (0 for an unknown user).
    ///
    /// # Errors
    ///
    /// [`Error::Query`](crate::Error::Query) when the database fails.
    #[doc(alias = "get_user_total_number_of_locations")]
    pub fn count_user_locations(&mut self, user_id: i64) -> Result<i64> {
        op!(self, CountUserLocations, {
            self.run(|c| dispatch!(c => user_location::count_for_user(user_id).get_result(c)))
        })
    }

    /// `{ quantity, user_id }` for every user with locations, ordered by user id.
    ///
    /// # Errors
    ///
    /// [`Error::Query`](crate::Error::Query) when the database fails.
    #[doc(alias = "get_total_number_of_locations_by_user")]
    pub fn location_counts_by_user(&mut self) -> Result<Vec<UserLocationCount>> {
        op!(self, LocationCountsByUser, {
            self.run(|c| dispatch!(c => user_location::counts_by_user().load(c)))
        })
    }

    /// `{ quantity, name }` for every user with locations, ordered by user id.
    ///
    /// # Errors
    ///
    /// [`Error::Query`](crate::Error::Query) when the database fails.
    #[doc(alias = "get_total_number_of_locations_by_user_with_labels")]
    pub fn location_counts_by_user_named(&mut self) -> Result<Vec<LocationCount>> {
        op!(self, LocationCountsByUserNamed, {
            self.run(|c| dispatch!(c => user_location::counts_by_user_named().load(c)))
        })
    }

    /// The tutorial's raw `SELECT * FROM users` (ordered by id) as raw SQL
    /// ([`SELECT_ALL_SQL`](user::SELECT_ALL_SQL), the columns spelled out), rows read by
    /// position.
    ///
    /// # Errors
    ///
    /// [`Error::Query`](crate::Error::Query) when the database fails.
    pub fn users_raw(&mut self) -> Result<Vec<User>> {
        op!(self, UsersRaw, {
            self.run(|c| dispatch!(c => user::all_raw().load(c)))
        })
    }

    /// Runs raw SQL (no bind parameters) and maps its rows by column name into `T`.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`](crate::Error::Validation) for blank SQL or a NUL byte in it;
    /// [`Error::Query`](crate::Error::Query) when the SQL fails or a column of `T` is missing
    /// from its result.
    pub fn load_sql<T>(&mut self, sql: &str) -> Result<Vec<T>>
    where
        T: QueryableByName<MultiBackend> + 'static,
    {
        op!(self, LoadSql, {
            validate::sql(sql)?;
            crate::engine::expect_raw_sql(self.conn);
            self.run(|c| diesel::sql_query(sql).load(c))
        })
    }
}
