//! The Repo: the one place that runs queries, over a session's connection.
//!
//! Methods mirror the seed's `Repo` under Rust names; each carries the seed's name as a doc
//! alias. Queries are built by the functions in [`models`](crate::models).

use chrono::NaiveDateTime;
use diesel::connection::DefaultLoadingMode;
use diesel::pg::PgRowByRowLoadingMode;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Timestamp};
use diesel::QueryableByName;

use crate::config::Backend;
use crate::connection::{AnyConnection, MultiBackend};
use crate::error::{Error, Result};
use crate::models::user::UserUpdate;
use crate::models::{
    location, user, user_location, Location, LocationCount, NewLocation, NewUser, User,
    UserChanges, UserLocation, UserWithLocations,
};
use crate::schema::{locations, userlocations, users};
use crate::validate;
use std::collections::{BTreeSet, HashMap};

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

    /// The connection for the next statement: refused with [`Error::TransactionAborted`] when a
    /// statement of the open transaction level already failed (PostgreSQL would refuse it with
    /// an untyped error, SQLite would run it).
    fn db(&mut self) -> Result<&mut AnyConnection> {
        crate::transaction::check_usable(self.conn)?;
        Ok(self.conn)
    }

    /// Runs one statement on [`db`](Repo::db) and records its failure in the open transaction
    /// level. Diesel's instrumentation reports most failures already; SQLite's errors while
    /// stepping through rows (an `INSERT … RETURNING` that violates a constraint) it does not.
    fn run<T>(
        &mut self,
        statement: impl FnOnce(&mut AnyConnection) -> QueryResult<T>,
    ) -> Result<T> {
        let result = statement(self.db()?);
        if let Err(error) = &result {
            crate::transaction::record(self.conn, error);
        }
        Ok(result?)
    }

    /// Runs `f` in a transaction (a savepoint when one is already open): commits on `Ok`,
    /// rolls back on `Err`.
    ///
    /// A transaction in which a statement failed cannot commit, on PostgreSQL and SQLite alike
    /// (SQLAlchemy's `PendingRollbackError`): once a statement fails, every later statement of
    /// that transaction returns [`Error::TransactionAborted`], and so does the transaction itself
    /// even if `f` returns `Ok`, after rolling everything back. To go on after a failure you
    /// expect, run the statement that may fail in a nested transaction: a savepoint, rolled back
    /// alone when it fails.
    ///
    /// ```no_run
    /// use userbase::models::NewUser;
    /// use userbase::{Database, Error};
    ///
    /// let db = Database::from_env()?;
    /// db.transaction(|repo| {
    ///     repo.insert_user(&NewUser::new(1, "Ann"))?;
    ///     // User 2 may exist already: try it in a savepoint.
    ///     match repo.transaction(|repo| repo.insert_user(&NewUser::new(2, "Bob"))) {
    ///         Ok(_) | Err(Error::UniqueViolation { .. }) => {}
    ///         Err(other) => return Err(other),
    ///     }
    ///     // Still usable: Ann and this link are committed.
    ///     repo.link(1, 1).map(drop)
    /// })?;
    /// # Ok::<(), userbase::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// `f`'s own error; [`Error::TransactionAborted`] when one of its statements failed (or one
    /// of the enclosing level had failed already); a failure to begin or commit converted into
    /// `E`.
    pub fn transaction<T, E, F>(&mut self, f: F) -> std::result::Result<T, E>
    where
        F: FnOnce(&mut Repo<'_>) -> std::result::Result<T, E>,
        E: From<Error>,
    {
        crate::transaction::transaction(self.conn, f)
    }

    // ---- the seed's queries -------------------------------------------------------------

    /// Every user with their locations, users ordered by id and locations by id, loaded in
    /// exactly two queries (the seed's `selectinload`). The second one selects the links by a
    /// range of user ids, not a list of binds, so it works at any number of users.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    #[doc(alias = "get_users_with_locations")]
    pub fn users_with_locations(&mut self) -> Result<Vec<UserWithLocations>> {
        let users = self.run(|c| user::all().load(c))?;
        self.attach_locations(users)
    }

    /// Loads the locations of `users` (ordered by id) in one query and pairs them up: the links
    /// of users from the first id to the last, so no id list is sent.
    fn attach_locations(&mut self, users: Vec<User>) -> Result<Vec<UserWithLocations>> {
        let (Some(first), Some(last)) = (users.first(), users.last()) else {
            return Ok(Vec::new());
        };
        let as_select: diesel::dsl::AsSelect<Location, MultiBackend> = Location::as_select();
        let links = userlocations::table
            .inner_join(locations::table)
            .filter(userlocations::user_id.between(first.user_id, last.user_id))
            .order((userlocations::user_id, locations::location_id))
            .select((userlocations::user_id, as_select));
        let links: Vec<(i64, Location)> = self.run(|c| links.load(c))?;
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
    /// [`Error::Query`] when the database fails.
    #[doc(alias = "get_users_by_location")]
    pub fn users_by_location(&mut self, location_id: i32) -> Result<Vec<User>> {
        self.run(|c| user::by_location(location_id).load(c))
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
        self.run(|c| location::of_user_with_username(user_id).load(c))
    }

    /// How many locations user `user_id` has (0 for an unknown user).
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    #[doc(alias = "get_user_total_number_of_locations")]
    pub fn count_user_locations(&mut self, user_id: i64) -> Result<i64> {
        self.run(|c| user_location::count_for_user(user_id).get_result(c))
    }

    /// `(count, user_id)` for every user with locations, ordered by user id.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    #[doc(alias = "get_total_number_of_locations_by_user")]
    pub fn location_counts_by_user(&mut self) -> Result<Vec<(i64, i64)>> {
        self.run(|c| user_location::counts_by_user().load(c))
    }

    /// `{ quantity, name }` for every user with locations, ordered by user id.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    #[doc(alias = "get_total_number_of_locations_by_user_with_labels")]
    pub fn location_counts_by_user_named(&mut self) -> Result<Vec<LocationCount>> {
        self.run(|c| user_location::counts_by_user_named().load(c))
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
    /// [`Error::Validation`] for blank SQL or a NUL byte in it; [`Error::Query`] when the SQL
    /// fails or a column of `T` is missing from its result.
    pub fn load_sql<T>(&mut self, sql: &str) -> Result<Vec<T>>
    where
        T: QueryableByName<MultiBackend> + 'static,
    {
        validate::sql(sql)?;
        crate::engine::expect_raw_sql(self.conn);
        self.run(|c| diesel::sql_query(sql).load(c))
    }

    // ---- reading single rows -------------------------------------------------------------

    /// The user with id `user_id`.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is none.
    #[doc(alias = "get_user")]
    pub fn user(&mut self, user_id: i64) -> Result<User> {
        self.run(|c| user::by_id(user_id).first(c))
    }

    /// The user with id `user_id`, or `None`.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    pub fn find_user(&mut self, user_id: i64) -> Result<Option<User>> {
        self.run(|c| user::by_id(user_id).first(c).optional())
    }

    /// Every user, ordered by id.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    pub fn users(&mut self) -> Result<Vec<User>> {
        self.run(|c| user::all().load(c))
    }

    /// The location with id `location_id`.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is none.
    pub fn location(&mut self, location_id: i32) -> Result<Location> {
        self.run(|c| location::by_id(location_id).first(c))
    }

    /// The location named `name`, or `None`.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] for a name no location can have (blank, a NUL byte, too long).
    pub fn find_location_by_name(&mut self, name: &str) -> Result<Option<Location>> {
        validate::text("location_name", name, validate::NAME_MAX)?;
        self.run(|c| location::by_name(name).first(c).optional())
    }

    /// Every location, ordered by id.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    pub fn locations(&mut self) -> Result<Vec<Location>> {
        self.run(|c| location::all().load(c))
    }

    /// Every link, ordered by user id then location id.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    pub fn user_locations(&mut self) -> Result<Vec<UserLocation>> {
        let query = userlocations::table
            .order((userlocations::user_id, userlocations::location_id))
            .select(UserLocation::as_select());
        self.run(|c| query.load(c))
    }

    // ---- filling the tables ----------------------------------------------------------------

    /// Inserts a user and returns the stored row (with its defaults filled in).
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] for a bad value (see [`NewUser::validate`]);
    /// [`Error::UniqueViolation`] when the id exists; [`Error::ForeignKeyViolation`] when the
    /// referrer does not.
    pub fn insert_user(&mut self, new: &NewUser<'_>) -> Result<User> {
        let new = new.checked()?;
        let inserted = self.run(|conn| {
            on_backend!(conn, |c| diesel::insert_into(users::table)
                .values(&new)
                .returning(User::as_returning())
                .get_result(c))
        });
        self.name_reference(inserted, References::referrers(&[new]))
    }

    /// Inserts a location and returns the stored row (with its generated id).
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] for a bad value; [`Error::UniqueViolation`] when the name is taken.
    pub fn insert_location(&mut self, new: &NewLocation<'_>) -> Result<Location> {
        let new = new.checked()?;
        let inserted = self.run(|conn| {
            on_backend!(conn, |c| diesel::insert_into(locations::table)
                .values(&new)
                .returning(Location::as_returning())
                .get_result(c))
        })?;
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
        let inserted = self.run(|conn| {
            on_backend!(conn, |c| diesel::insert_into(userlocations::table)
                .values(&link)
                .on_conflict_do_nothing()
                .execute(c))
        });
        Ok(self.name_reference(inserted, References::links(&[link]))? == 1)
    }

    /// Inserts a link, failing if it exists.
    ///
    /// # Errors
    ///
    /// [`Error::UniqueViolation`] when the link exists; [`Error::ForeignKeyViolation`] when the
    /// user or the location does not.
    pub fn insert_user_location(&mut self, link: &UserLocation) -> Result<UserLocation> {
        let inserted = diesel::insert_into(userlocations::table)
            .values(link)
            .execute(self.db()?)
            .map_err(Error::from);
        self.name_reference(inserted, References::links(&[*link]))?;
        Ok(*link)
    }

    /// Deletes user `user_id`; the users they referred stay, with no referrer (`SET NULL`).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is no such user; [`Error::ForeignKeyViolation`] when the
    /// user still has locations (`ON DELETE RESTRICT`), its message naming the blocking
    /// `userlocations` rows. Inside a transaction, a refused delete leaves it usable (savepoint).
    pub fn delete_user(&mut self, user_id: i64) -> Result<()> {
        let deleted = self.transaction(|repo| {
            delete_one(diesel::delete(users::table.find(user_id)).execute(repo.db()?)?)
        });
        match deleted {
            Err(Error::ForeignKeyViolation {
                constraint,
                message,
            }) => {
                let blocking: Vec<i32> =
                    self.run(|c| user_location::location_ids_of(user_id).load(c))?;
                Err(Error::ForeignKeyViolation {
                    // SQLite names no constraint: the one PostgreSQL names.
                    constraint: constraint.or(Some(LINK_USER_FKEY.to_owned())),
                    message: format!(
                        "user {user_id} is still linked to locations {blocking:?} in userlocations; \
                         unlink them first ({message})"
                    ),
                })
            }
            other => other,
        }
    }

    /// Deletes location `location_id` and, by `CASCADE`, its links.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is no such location.
    pub fn delete_location(&mut self, location_id: i32) -> Result<()> {
        delete_one(diesel::delete(locations::table.find(location_id)).execute(self.db()?)?)
    }

    // ---- users: writes ---------------------------------------------------------------------

    /// The bot's "seen this user": inserts the user, or updates `full_name`, `username` and
    /// (when given) `language` of the existing row, leaving `created_at`, `referrer_id`,
    /// `active` and `logged_as` as they are. Returns the stored row.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] for a bad value; [`Error::ForeignKeyViolation`] when a new user's
    /// referrer does not exist.
    pub fn upsert_user(&mut self, new: &NewUser<'_>) -> Result<User> {
        self.upsert_user_with(new, UpsertOptions::default())
    }

    /// [`upsert_user`](Repo::upsert_user), also overwriting `referrer_id` and/or `created_at`
    /// of an existing row when `options` asks.
    ///
    /// Runs as one `UPDATE … RETURNING` when the user exists (the common case), else one
    /// `INSERT … ON CONFLICT DO NOTHING RETURNING`; a concurrent insert or delete between the two
    /// is retried.
    ///
    /// # Errors
    ///
    /// As [`upsert_user`](Repo::upsert_user), and [`Error::ReferralCycle`] when the new
    /// referrer would make a cycle.
    pub fn upsert_user_with(&mut self, new: &NewUser<'_>, options: UpsertOptions) -> Result<User> {
        let new = new.checked()?;
        if let (true, Some(referrer_id)) = (options.referrer, new.referrer_id) {
            self.check_referral(new.user_id, referrer_id)?;
        }
        let upserted = self.upsert_checked(&new, options);
        self.name_reference(upserted, References::referrers(&[new]))
    }

    fn upsert_checked(&mut self, new: &NewUser<'_>, options: UpsertOptions) -> Result<User> {
        for _ in 0..UPSERT_ATTEMPTS {
            if let Some(user) = self.upsert_update(new, options)? {
                return Ok(user);
            }
            let inserted = self.run(|conn| {
                on_backend!(conn, |c| diesel::insert_into(users::table)
                    .values(new)
                    .on_conflict_do_nothing()
                    .returning(User::as_returning())
                    .get_result(c)
                    .optional())
            })?;
            if let Some(user) = inserted {
                return Ok(user);
            }
        }
        Err(Error::NotFound)
    }

    /// The update half of an upsert. The usual case is one cached prepared statement
    /// ([`user::seen_again`]); other options go through the general changeset.
    fn upsert_update(&mut self, new: &NewUser<'_>, options: UpsertOptions) -> Result<Option<User>> {
        if options == UpsertOptions::default() {
            let update = user::seen_again(new);
            return self.run(|c| update.get_result::<User>(c).optional());
        }
        let changes = UserUpdate {
            changes: UserChanges {
                username: Some(new.username),
                full_name: Some(new.full_name),
                language: new.language,
                ..UserChanges::default()
            },
            referrer_id: options.referrer.then_some(new.referrer_id),
            created_at: new.created_at.filter(|_| options.created_at),
        };
        self.update_user_returning(new.user_id, &changes)
    }

    fn update_user_returning(
        &mut self,
        user_id: i64,
        changes: &UserUpdate<'_>,
    ) -> Result<Option<User>> {
        let updated = self.run(|conn| {
            on_backend!(conn, |c| diesel::update(users::table.find(user_id))
                .set(changes)
                .returning(User::as_returning())
                .get_result(c)
                .optional())
        })?;
        Ok(updated)
    }

    /// Updates the fields of user `user_id` that `changes` sets; returns the stored row.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] for a bad value or an empty change; [`Error::NotFound`] when there
    /// is no such user.
    pub fn update_user(&mut self, user_id: i64, changes: &UserChanges<'_>) -> Result<User> {
        changes.validate()?;
        let update = UserUpdate {
            changes: *changes,
            ..UserUpdate::default()
        };
        self.update_user_returning(user_id, &update)?
            .ok_or(Error::NotFound)
    }

    /// Marks user `user_id` inactive (the row and its links stay).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is no such user.
    pub fn deactivate_user(&mut self, user_id: i64) -> Result<User> {
        self.set_active(user_id, false)
    }

    /// Marks user `user_id` active again.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is no such user.
    pub fn reactivate_user(&mut self, user_id: i64) -> Result<User> {
        self.set_active(user_id, true)
    }

    fn set_active(&mut self, user_id: i64, active: bool) -> Result<User> {
        let changes = UserChanges {
            active: Some(active),
            ..UserChanges::default()
        };
        self.update_user(user_id, &changes)
    }

    // ---- referrals -----------------------------------------------------------------------

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
        let referrers = References {
            referrers: referrer_id.into_iter().collect(),
            ..References::default()
        };
        self.name_reference(updated, referrers)?
            .ok_or(Error::NotFound)
    }

    /// Refuses `referrer_id` for `user_id` when `user_id` is `referrer_id` or one of its
    /// referrers (walking up the chain in one recursive query).
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
        let found: CountRow = self.run(|c| query.get_result(c))?;
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
        self.run(|c| user::referred_by(referrer_id).load(c))
    }

    /// Every user with their referrer's full name (`None` without one), ordered by id, in one
    /// query (a self-join through [`REFERRERS`](const@crate::models::user::REFERRERS)).
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    pub fn users_with_referrer_names(&mut self) -> Result<Vec<(User, Option<String>)>> {
        self.run(|c| user::with_referrer_names().load(c))
    }

    /// `(referrer_id, number of users referred)` for every referrer, ordered by referrer id.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    pub fn referral_counts(&mut self) -> Result<Vec<(i64, i64)>> {
        self.run(|c| user::referral_counts().load(c))
    }

    // ---- locations: writes -----------------------------------------------------------------

    /// Renames location `location_id`; returns the stored row.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] for a bad name; [`Error::UniqueViolation`] naming the constraint
    /// when the name is taken; [`Error::NotFound`] when there is no such location.
    pub fn rename_location(&mut self, location_id: i32, new_name: &str) -> Result<Location> {
        validate::text("location_name", new_name, validate::NAME_MAX)?;
        let renamed = self.run(|conn| {
            on_backend!(conn, |c| diesel::update(locations::table.find(location_id))
                .set(locations::location_name.eq(new_name))
                .returning(Location::as_returning())
                .get_result(c)
                .optional())
        })?;
        renamed.ok_or(Error::NotFound)
    }

    // ---- links -----------------------------------------------------------------------------

    /// Removes the link between user `user_id` and location `location_id`; returns whether
    /// there was one.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    pub fn unlink(&mut self, user_id: i64, location_id: i32) -> Result<bool> {
        let link = UserLocation {
            location_id,
            user_id,
        };
        Ok(diesel::delete(&link).execute(self.db()?)? == 1)
    }

    /// Makes `location_ids` the exact set of user `user_id`'s locations, in one transaction
    /// (a savepoint inside an open one): links not in the set go, missing ones are made.
    ///
    /// Atomic and deadlock-free against concurrent calls: it first locks the user's row
    /// (`SELECT … FOR UPDATE` on PostgreSQL; SQLite's transactions hold the write lock), so calls
    /// for one user run one after another, and it touches links in location-id order. Any
    /// number of ids works: deletes and inserts are chunked under the bind limit.
    ///
    /// # Errors
    ///
    /// [`Error::ForeignKeyViolation`] when the user or a location does not exist; nothing
    /// changes then.
    pub fn replace_user_locations(&mut self, user_id: i64, location_ids: &[i32]) -> Result<()> {
        let mut wanted = location_ids.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let replaced = self.transaction(|repo| {
            repo.lock_user(user_id)?;
            let current: Vec<i32> =
                repo.run(|c| user_location::location_ids_of(user_id).load(c))?;
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
                diesel::delete(
                    userlocations::table
                        .filter(userlocations::user_id.eq(user_id))
                        .filter(userlocations::location_id.eq_any(chunk)),
                )
                .execute(repo.db()?)?;
            }
            let per_chunk = chunk_rows(repo.backend(), LINK_COLUMNS);
            on_backend!(repo.db()?, |c| insert_chunks(
                c,
                &made,
                per_chunk,
                |c, chunk| {
                    diesel::insert_into(userlocations::table)
                        .values(chunk)
                        .execute(c)
                }
            ))?;
            Ok(())
        });
        let links: Vec<UserLocation> = wanted
            .iter()
            .map(|&location_id| UserLocation {
                location_id,
                user_id,
            })
            .collect();
        self.name_reference(replaced, References::links(&links))
    }

    /// Locks user `user_id`'s row until the transaction ends (`FOR UPDATE` on PostgreSQL; on
    /// SQLite the transaction holds the database's write lock already).
    fn lock_user(&mut self, user_id: i64) -> Result<()> {
        let query = users::table.find(user_id).select(users::user_id);
        let found: Option<i64> = self.run(|conn| match conn {
            AnyConnection::Pg(c) => query.for_update().first(c).optional(),
            AnyConnection::Sqlite(c) => query.first(c).optional(),
        })?;
        match found {
            Some(_) => Ok(()),
            None => Err(missing_parent(
                "userlocations",
                LINK_USER_FKEY,
                "user_id",
                user_id,
                "users",
            )),
        }
    }

    // ---- bulk import -------------------------------------------------------------------------

    /// Inserts many users in one transaction, in chunks under the backend's bind-parameter limit
    /// ([`POSTGRES_MAX_BINDS`], [`SQLITE_MAX_BINDS`]); returns how many were inserted. Every
    /// row is validated first; defaults (`language`, `active`, `created_at`) are filled in
    /// with the database's values.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] naming the field of the first bad row, before anything is
    /// written; a constraint error (duplicate id, missing referrer) rolls back every chunk.
    pub fn import_users(&mut self, users: &[NewUser<'_>]) -> Result<usize> {
        self.import_users_by(users, ImportMethod::Insert)
    }

    /// As [`import_users`](Repo::import_users), through PostgreSQL's `COPY FROM STDIN` (binary),
    /// the fastest way in; on SQLite the same as `import_users`.
    ///
    /// # Errors
    ///
    /// As [`import_users`](Repo::import_users).
    pub fn copy_users(&mut self, users: &[NewUser<'_>]) -> Result<usize> {
        self.import_users_by(users, ImportMethod::Copy)
    }

    fn import_users_by(&mut self, users: &[NewUser<'_>], method: ImportMethod) -> Result<usize> {
        let users = users
            .iter()
            .map(NewUser::checked)
            .collect::<Result<Vec<_>>>()?;
        check_batch_referrals(&users)?;
        let users = &users;
        let imported = self.transaction(|repo| {
            let now = repo.database_now()?;
            let rows: Vec<_> = users.iter().map(|u| u.to_row(now)).collect();
            let per_chunk = chunk_rows(repo.backend(), USER_COLUMNS);
            match (repo.db()?, method) {
                (AnyConnection::Pg(c), ImportMethod::Copy) => Ok(diesel::copy_from(users::table)
                    .from_insertable(&rows)
                    .execute(c)?),
                // SQLite has no COPY: both methods insert in chunks.
                (conn, _) => {
                    on_backend!(conn, |c| insert_chunks(c, &rows, per_chunk, |c, chunk| {
                        diesel::insert_into(users::table).values(chunk).execute(c)
                    }))
                }
            }
        });
        self.name_reference(imported, References::referrers(users))
    }

    /// Inserts many locations in one transaction, chunked like
    /// [`import_users`](Repo::import_users); returns how many were inserted.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] before anything is written; [`Error::UniqueViolation`] for a taken
    /// name (nothing is kept).
    pub fn import_locations(&mut self, locations: &[NewLocation<'_>]) -> Result<usize> {
        let locations = locations
            .iter()
            .map(NewLocation::checked)
            .collect::<Result<Vec<_>>>()?;
        self.transaction(|repo| {
            let now = repo.database_now()?;
            let rows: Vec<_> = locations.iter().map(|l| l.to_row(now)).collect();
            let per_chunk = chunk_rows(repo.backend(), LOCATION_COLUMNS);
            on_backend!(repo.db()?, |c| insert_chunks(
                c,
                &rows,
                per_chunk,
                |c, chunk| {
                    diesel::insert_into(locations::table)
                        .values(chunk)
                        .execute(c)
                }
            ))
        })
    }

    /// Inserts many links in one transaction, chunked; links that exist are skipped. Returns
    /// how many were made.
    ///
    /// # Errors
    ///
    /// [`Error::ForeignKeyViolation`] when a user or location does not exist (nothing is kept).
    pub fn import_links(&mut self, links: &[UserLocation]) -> Result<usize> {
        let per_chunk = chunk_rows(self.backend(), LINK_COLUMNS);
        let imported = self.transaction(|repo| match repo.db()? {
            AnyConnection::Pg(c) => insert_chunks(c, links, per_chunk, |c, chunk| {
                diesel::insert_into(userlocations::table)
                    .values(chunk)
                    .on_conflict_do_nothing()
                    .execute(c)
            }),
            // SQLite has no multi-row insert with ON CONFLICT; INSERT OR IGNORE is its form.
            AnyConnection::Sqlite(c) => insert_chunks(c, links, per_chunk, |c, chunk| {
                diesel::insert_or_ignore_into(userlocations::table)
                    .values(chunk)
                    .execute(c)
            }),
        });
        self.name_reference(imported, References::links(links))
    }

    /// The database's current time as its `created_at` default would store it.
    fn database_now(&mut self) -> Result<NaiveDateTime> {
        let sql = match self.backend() {
            Backend::Postgres => "SELECT CAST(now() AS TIMESTAMP) AS now",
            Backend::Sqlite => "SELECT strftime('%Y-%m-%d %H:%M:%f', 'now') AS now",
        };
        Ok(self
            .run(|c| diesel::sql_query(sql).get_result::<NowRow>(c))?
            .now)
    }

    // ---- large reads -------------------------------------------------------------------------

    /// At most `limit` users with an id above `after` (from the very first row, `i64::MIN`
    /// included, when `None`), ordered by id: keyset pagination. Pass the last id of a page as
    /// `after` for the next one.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] when `limit` is not between 1 and
    /// [`PAGE_LIMIT_MAX`](validate::PAGE_LIMIT_MAX).
    pub fn users_page(&mut self, after: Option<i64>, limit: i64) -> Result<Vec<User>> {
        let limit = validate::limit(limit)?;
        match after.map_or(Some(i64::MIN), |after| after.checked_add(1)) {
            Some(from) => self.run(|c| user::page(from, limit).load(c)),
            None => self.db().map(|_| Vec::new()),
        }
    }

    /// At most `limit` locations with an id above `after` (from the very first row when
    /// `None`), ordered by id.
    ///
    /// # Errors
    ///
    /// As [`users_page`](Repo::users_page).
    pub fn locations_page(&mut self, after: Option<i32>, limit: i64) -> Result<Vec<Location>> {
        let limit = validate::limit(limit)?;
        match after.map_or(Some(i32::MIN), |after| after.checked_add(1)) {
            Some(from) => self.run(|c| location::page(from, limit).load(c)),
            None => self.db().map(|_| Vec::new()),
        }
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
        let users = self.users_page(after, limit)?;
        self.attach_locations(users)
    }

    /// Every user, ordered by id, streamed row by row (PostgreSQL's single-row mode, SQLite's
    /// statement stepping) instead of loaded at once.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the query cannot start; each item carries a row's own error.
    pub fn users_iter(&mut self) -> Result<Box<dyn Iterator<Item = Result<User>> + '_>> {
        Ok(match self.db()? {
            AnyConnection::Pg(c) => Box::new(
                users::table
                    .order(users::user_id)
                    .select(User::as_select())
                    .load_iter::<User, PgRowByRowLoadingMode>(c)?
                    .map(|row| row.map_err(Error::from)),
            ),
            AnyConnection::Sqlite(c) => Box::new(
                users::table
                    .order(users::user_id)
                    .select(User::as_select())
                    .load_iter::<User, DefaultLoadingMode>(c)?
                    .map(|row| row.map_err(Error::from)),
            ),
        })
    }
}

/// Largest bind-parameter count of one PostgreSQL statement.
pub const POSTGRES_MAX_BINDS: usize = 65_535;
/// Largest bind-parameter count of one SQLite statement (`SQLITE_MAX_VARIABLE_NUMBER`).
pub const SQLITE_MAX_BINDS: usize = 32_766;
const USER_COLUMNS: usize = 8;
const LOCATION_COLUMNS: usize = 4;
const LINK_COLUMNS: usize = 2;
/// How often an upsert retries after losing a race with a concurrent insert or delete.
const UPSERT_ATTEMPTS: usize = 3;

/// What [`Repo::upsert_user_with`] overwrites on an existing row besides the names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpsertOptions {
    /// Also set `referrer_id` (checked for cycles). Default `false`.
    pub referrer: bool,
    /// Also set `created_at` (when the new row gives one). Default `false`.
    pub created_at: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ImportMethod {
    Insert,
    Copy,
}

#[derive(QueryableByName)]
struct CountRow {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct NowRow {
    #[diesel(sql_type = Timestamp)]
    now: NaiveDateTime,
}

/// The first two bind placeholders of raw SQL on `backend`.
fn placeholders(backend: Backend) -> (&'static str, &'static str) {
    match backend {
        Backend::Postgres => ("$1", "$2"),
        Backend::Sqlite => ("?", "?"),
    }
}

/// How many rows of `columns` columns fit in one statement under `backend`'s bind limit.
fn chunk_rows(backend: Backend, columns: usize) -> usize {
    let max_binds = match backend {
        Backend::Postgres => POSTGRES_MAX_BINDS,
        Backend::Sqlite => SQLITE_MAX_BINDS,
    };
    (max_binds / columns).max(1)
}

/// Runs `insert` over `rows` in chunks of at most `per_chunk` rows; returns the rows inserted.
fn insert_chunks<C, R>(
    conn: &mut C,
    rows: &[R],
    per_chunk: usize,
    mut insert: impl FnMut(&mut C, &[R]) -> diesel::QueryResult<usize>,
) -> Result<usize> {
    let mut inserted = 0;
    for chunk in rows.chunks(per_chunk) {
        inserted += insert(conn, chunk)?;
    }
    Ok(inserted)
}

/// PostgreSQL's names of the foreign keys, used for SQLite's errors too.
const REFERRER_FKEY: &str = "users_referrer_id_fkey";
const LINK_USER_FKEY: &str = "userlocations_user_id_fkey";
const LINK_LOCATION_FKEY: &str = "userlocations_location_id_fkey";

/// The references a write made, to name the one that failed when SQLite names none.
#[derive(Debug, Default)]
struct References {
    /// `users.referrer_id` values, ordered, without the ids of users written with them.
    referrers: Vec<i64>,
    /// Links written.
    links: Vec<UserLocation>,
}

impl References {
    fn referrers(users: &[NewUser<'_>]) -> Self {
        let written: std::collections::HashSet<i64> = users.iter().map(|u| u.user_id).collect();
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

    fn links(links: &[UserLocation]) -> Self {
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
    fn name_reference<T>(&mut self, result: Result<T>, references: References) -> Result<T> {
        match result {
            Err(Error::ForeignKeyViolation {
                constraint: None,
                message,
            }) => Err(self
                .missing_reference(&references)
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
    /// the raw connection: the failed statement refuses further ones through [`Repo::db`], but
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
        let mut found = std::collections::HashSet::new();
        for chunk in locations.chunks(per_chunk) {
            found.extend(
                locations::table
                    .filter(locations::location_id.eq_any(chunk))
                    .select(locations::location_id)
                    .load::<i32>(self.conn)?,
            );
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
fn first_missing_user(conn: &mut AnyConnection, ids: &[i64]) -> Result<Option<i64>> {
    let per_chunk = chunk_rows(conn.backend(), 1);
    let mut found = std::collections::HashSet::new();
    for chunk in ids.chunks(per_chunk) {
        found.extend(
            users::table
                .filter(users::user_id.eq_any(chunk))
                .select(users::user_id)
                .load::<i64>(conn)?,
        );
    }
    Ok(ids.iter().copied().find(|id| !found.contains(id)))
}

/// A foreign-key error worded as PostgreSQL words it.
fn missing_parent(
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

/// Refuses a batch of new users whose referrals make a cycle (A refers B, B refers A, or
/// longer), before anything is written.
///
/// Only the batch can close a cycle: stored users cannot refer to users not written yet (the
/// foreign key forbids it), and a batch user that exists already fails as a duplicate.
fn check_batch_referrals(users: &[NewUser<'_>]) -> Result<()> {
    let referrer_of: HashMap<i64, i64> = users
        .iter()
        .filter_map(|u| u.referrer_id.map(|r| (u.user_id, r)))
        .collect();
    // Each user has at most one referrer: walk each chain once. 1: on the walk, 2: done.
    let mut state: HashMap<i64, u8> = HashMap::with_capacity(users.len());
    for user in users {
        let mut walk = Vec::new();
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
        for node in walk {
            state.insert(node, 2);
        }
    }
    Ok(())
}

/// `Ok` when one row was deleted, [`Error::NotFound`] when none was.
fn delete_one(deleted: usize) -> Result<()> {
    if deleted == 0 {
        Err(Error::NotFound)
    } else {
        Ok(())
    }
}
