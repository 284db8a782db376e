//! The Repo: the one place that runs queries, over a session's connection.
//!
//! Methods mirror the seed's `Repo` under Rust names; each carries the seed's name as a doc
//! alias. Queries are built by the functions in [`models`](crate::models).

use diesel::prelude::*;
use diesel::QueryableByName;

use crate::config::Backend;
use crate::connection::{AnyConnection, MultiBackend};
use crate::error::{Error, Result};
use crate::models::{
    location, user, user_location, Location, LocationCount, NewLocation, NewUser, User,
    UserLocation, UserWithLocations,
};
use crate::schema::{locations, userlocations, users};

/// Runs `$body` with `$conn` bound to the concrete connection of either backend: the one place
/// where backend-specific query forms (upsert, `ON CONFLICT`) are dispatched.
macro_rules! on_backend {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            AnyConnection::Pg($c) => $body,
            AnyConnection::Sqlite($c) => $body,
        }
    };
}

/// Typed queries over one connection: the seed's `Repo(session)`.
///
/// Get one from [`Session::repo`](crate::Session::repo) or inside
/// [`Database::transaction`](crate::Database::transaction).
pub struct Repo<'c> {
    conn: &'c mut AnyConnection,
}

impl std::fmt::Debug for Repo<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repo")
            .field("backend", &self.conn.backend())
            .finish_non_exhaustive()
    }
}

impl<'c> Repo<'c> {
    /// A Repo over a raw connection.
    pub fn new(conn: &'c mut AnyConnection) -> Self {
        Repo { conn }
    }

    /// The backend of the connection.
    pub fn backend(&self) -> Backend {
        self.conn.backend()
    }

    /// Runs `f` in a transaction (a savepoint when one is already open): commits on `Ok`,
    /// rolls back on `Err`.
    ///
    /// # Errors
    ///
    /// `f`'s own error, or a failure to begin or commit converted into `E`.
    pub fn transaction<T, E, F>(&mut self, f: F) -> std::result::Result<T, E>
    where
        F: FnOnce(&mut Repo<'_>) -> std::result::Result<T, E>,
        E: From<Error>,
    {
        crate::session::transaction(self.conn, f)
    }

    // ---- the seed's queries -------------------------------------------------------------

    /// Every user with their locations, users ordered by id and locations by id, loaded in
    /// exactly two queries (`belonging_to` + `grouped_by`: the seed's `selectinload`).
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    #[doc(alias = "get_users_with_locations")]
    pub fn users_with_locations(&mut self) -> Result<Vec<UserWithLocations>> {
        let users = user::all().load(self.conn)?;
        self.attach_locations(users)
    }

    /// Loads the locations of `users` in one query and pairs them up.
    fn attach_locations(&mut self, users: Vec<User>) -> Result<Vec<UserWithLocations>> {
        let links: Vec<(UserLocation, Location)> = UserLocation::belonging_to(&users)
            .inner_join(locations::table)
            .order((userlocations::user_id, locations::location_id))
            .select((UserLocation::as_select(), Location::as_select()))
            .load(self.conn)?;
        let grouped = links.grouped_by(&users);
        Ok(users
            .into_iter()
            .zip(grouped)
            .map(|(user, links)| UserWithLocations {
                user,
                locations: links.into_iter().map(|(_, location)| location).collect(),
            })
            .collect())
    }

    /// Users linked to location `location_id`, ordered by id.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    #[doc(alias = "get_users_by_location")]
    pub fn users_by_location(&mut self, location_id: i32) -> Result<Vec<User>> {
        Ok(user::by_location(location_id).load(self.conn)?)
    }

    /// The locations of user `user_id`, each with the user's username, ordered by location id.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    #[doc(alias = "get_all_user_locations_relationships")]
    pub fn user_locations_with_username(
        &mut self,
        user_id: i64,
    ) -> Result<Vec<(Location, Option<String>)>> {
        Ok(location::of_user_with_username(user_id).load(self.conn)?)
    }

    /// How many locations user `user_id` has (0 for an unknown user).
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    #[doc(alias = "get_user_total_number_of_locations")]
    pub fn count_user_locations(&mut self, user_id: i64) -> Result<i64> {
        Ok(user_location::count_for_user(user_id).get_result(self.conn)?)
    }

    /// `(count, user_id)` for every user with locations, ordered by user id.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    #[doc(alias = "get_total_number_of_locations_by_user")]
    pub fn location_counts_by_user(&mut self) -> Result<Vec<(i64, i64)>> {
        Ok(user_location::counts_by_user().load(self.conn)?)
    }

    /// `{ quantity, name }` for every user with locations, ordered by user id.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    #[doc(alias = "get_total_number_of_locations_by_user_with_labels")]
    pub fn location_counts_by_user_named(&mut self) -> Result<Vec<LocationCount>> {
        Ok(user_location::counts_by_user_named().load(self.conn)?)
    }

    /// The seed's raw `SELECT * FROM users` (ordered by id), through `diesel::sql_query`.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    pub fn users_raw(&mut self) -> Result<Vec<User>> {
        self.load_sql(user::SELECT_ALL_SQL)
    }

    /// Runs raw SQL (no bind parameters) and maps its rows by column name into `T`.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the SQL fails or a column of `T` is missing from its result.
    pub fn load_sql<T>(&mut self, sql: &str) -> Result<Vec<T>>
    where
        T: QueryableByName<MultiBackend> + 'static,
    {
        Ok(diesel::sql_query(sql).load(self.conn)?)
    }

    // ---- reading single rows -------------------------------------------------------------

    /// The user with id `user_id`.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is none.
    #[doc(alias = "get_user")]
    pub fn user(&mut self, user_id: i64) -> Result<User> {
        Ok(user::by_id(user_id).first(self.conn)?)
    }

    /// The user with id `user_id`, or `None`.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    pub fn find_user(&mut self, user_id: i64) -> Result<Option<User>> {
        Ok(user::by_id(user_id).first(self.conn).optional()?)
    }

    /// Every user, ordered by id.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    pub fn users(&mut self) -> Result<Vec<User>> {
        Ok(user::all().load(self.conn)?)
    }

    /// The location with id `location_id`.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is none.
    pub fn location(&mut self, location_id: i32) -> Result<Location> {
        Ok(location::by_id(location_id).first(self.conn)?)
    }

    /// The location named `name`, or `None`.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    pub fn find_location_by_name(&mut self, name: &str) -> Result<Option<Location>> {
        Ok(location::by_name(name).first(self.conn).optional()?)
    }

    /// Every location, ordered by id.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    pub fn locations(&mut self) -> Result<Vec<Location>> {
        Ok(location::all().load(self.conn)?)
    }

    /// Every link, ordered by user id then location id.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    pub fn user_locations(&mut self) -> Result<Vec<UserLocation>> {
        Ok(userlocations::table
            .order((userlocations::user_id, userlocations::location_id))
            .select(UserLocation::as_select())
            .load(self.conn)?)
    }

    // ---- filling the tables ----------------------------------------------------------------

    /// Inserts a user and returns the stored row (with its defaults filled in).
    ///
    /// # Errors
    ///
    /// [`Error::UniqueViolation`] when the id exists; [`Error::ForeignKeyViolation`] when the
    /// referrer does not.
    pub fn insert_user(&mut self, new: &NewUser<'_>) -> Result<User> {
        let inserted = on_backend!(&mut *self.conn, |c| diesel::insert_into(users::table)
            .values(new)
            .returning(User::as_returning())
            .get_result(c))?;
        Ok(inserted)
    }

    /// Inserts a location and returns the stored row (with its generated id).
    ///
    /// # Errors
    ///
    /// [`Error::UniqueViolation`] when the name is taken.
    pub fn insert_location(&mut self, new: &NewLocation<'_>) -> Result<Location> {
        let inserted = on_backend!(&mut *self.conn, |c| diesel::insert_into(locations::table)
            .values(new)
            .returning(Location::as_returning())
            .get_result(c))?;
        Ok(inserted)
    }

    /// Links user `user_id` to location `location_id`. Linking twice is not an error: returns
    /// whether a new link was made.
    ///
    /// # Errors
    ///
    /// [`Error::ForeignKeyViolation`] when the user or the location does not exist.
    pub fn link(&mut self, user_id: i64, location_id: i32) -> Result<bool> {
        let link = UserLocation {
            location_id,
            user_id,
        };
        let inserted = on_backend!(&mut *self.conn, |c| diesel::insert_into(
            userlocations::table
        )
        .values(&link)
        .on_conflict_do_nothing()
        .execute(c))?;
        Ok(inserted == 1)
    }

    /// Inserts a link, failing if it exists.
    ///
    /// # Errors
    ///
    /// [`Error::UniqueViolation`] when the link exists; [`Error::ForeignKeyViolation`] when the
    /// user or the location does not.
    pub fn insert_user_location(&mut self, link: &UserLocation) -> Result<UserLocation> {
        diesel::insert_into(userlocations::table)
            .values(link)
            .execute(self.conn)?;
        Ok(*link)
    }

    /// Deletes user `user_id`; the users they referred keep existing with no referrer.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is no such user; [`Error::ForeignKeyViolation`] when the
    /// user still has locations (`ON DELETE RESTRICT`; the message names the blocking rows).
    pub fn delete_user(&mut self, user_id: i64) -> Result<()> {
        delete_one(diesel::delete(users::table.find(user_id)).execute(self.conn)?)
    }

    /// Deletes location `location_id` and, by `CASCADE`, its links.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is no such location.
    pub fn delete_location(&mut self, location_id: i32) -> Result<()> {
        delete_one(diesel::delete(locations::table.find(location_id)).execute(self.conn)?)
    }
}

/// `Ok` when one row was deleted, [`Error::NotFound`] when none was.
fn delete_one(deleted: usize) -> Result<()> {
    if deleted == 0 {
        Err(Error::NotFound)
    } else {
        Ok(())
    }
}
