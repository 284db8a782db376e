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
    /// [`Error::Validation`] for a bad value (see [`NewUser::validate`]);
    /// [`Error::UniqueViolation`] when the id exists; [`Error::ForeignKeyViolation`] when the
    /// referrer does not.
    pub fn insert_user(&mut self, new: &NewUser<'_>) -> Result<User> {
        new.validate()?;
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
    /// [`Error::Validation`] for a bad value; [`Error::UniqueViolation`] when the name is taken.
    pub fn insert_location(&mut self, new: &NewLocation<'_>) -> Result<Location> {
        new.validate()?;
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

    /// Deletes user `user_id`; the users they referred stay, with no referrer (`SET NULL`).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is no such user; [`Error::ForeignKeyViolation`] when the
    /// user still has locations (`ON DELETE RESTRICT`), its message naming the blocking
    /// `userlocations` rows. Inside a transaction, a refused delete leaves it usable (savepoint).
    pub fn delete_user(&mut self, user_id: i64) -> Result<()> {
        let deleted = self.transaction(|repo| {
            delete_one(diesel::delete(users::table.find(user_id)).execute(repo.conn)?)
        });
        match deleted {
            Err(Error::ForeignKeyViolation {
                constraint,
                message,
            }) => {
                let blocking: Vec<i32> = user_location::location_ids_of(user_id).load(self.conn)?;
                Err(Error::ForeignKeyViolation {
                    constraint,
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
        delete_one(diesel::delete(locations::table.find(location_id)).execute(self.conn)?)
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
        new.validate()?;
        if let (true, Some(referrer_id)) = (options.referrer, new.referrer_id) {
            self.check_referral(new.user_id, referrer_id)?;
        }
        for _ in 0..UPSERT_ATTEMPTS {
            if let Some(user) = self.upsert_update(new, options)? {
                return Ok(user);
            }
            let inserted = on_backend!(&mut *self.conn, |c| diesel::insert_into(users::table)
                .values(new)
                .on_conflict_do_nothing()
                .returning(User::as_returning())
                .get_result(c)
                .optional())?;
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
            return Ok(user::seen_again(new)
                .get_result::<User>(self.conn)
                .optional()?);
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
        let updated = on_backend!(&mut *self.conn, |c| diesel::update(
            users::table.find(user_id)
        )
        .set(changes)
        .returning(User::as_returning())
        .get_result(c)
        .optional())?;
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
    /// The cycle check and the update are two statements: run it inside
    /// [`transaction`](Repo::transaction) at a serializable isolation level if concurrent
    /// referral changes must never race.
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
        self.update_user_returning(user_id, &update)?
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
        let found: CountRow = diesel::sql_query(sql)
            .bind::<BigInt, _>(referrer_id)
            .bind::<BigInt, _>(user_id)
            .get_result(self.conn)?;
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
        Ok(user::referred_by(referrer_id).load(self.conn)?)
    }

    /// Every user with their referrer's full name (`None` without one), ordered by id, in one
    /// query (a self-join through [`REFERRERS`](const@crate::models::user::REFERRERS)).
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    pub fn users_with_referrer_names(&mut self) -> Result<Vec<(User, Option<String>)>> {
        Ok(user::with_referrer_names().load(self.conn)?)
    }

    /// `(referrer_id, number of users referred)` for every referrer, ordered by referrer id.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    pub fn referral_counts(&mut self) -> Result<Vec<(i64, i64)>> {
        Ok(user::referral_counts().load(self.conn)?)
    }

    // ---- locations: writes -----------------------------------------------------------------

    /// Renames location `location_id`; returns the stored row.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] for a bad name; [`Error::UniqueViolation`] naming the constraint
    /// when the name is taken; [`Error::NotFound`] when there is no such location.
    pub fn rename_location(&mut self, location_id: i32, new_name: &str) -> Result<Location> {
        crate::validate::text("location_name", new_name, crate::validate::NAME_MAX)?;
        let renamed = on_backend!(&mut *self.conn, |c| diesel::update(
            locations::table.find(location_id)
        )
        .set(locations::location_name.eq(new_name))
        .returning(Location::as_returning())
        .get_result(c)
        .optional())?;
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
        Ok(diesel::delete(&link).execute(self.conn)? == 1)
    }

    /// Makes `location_ids` the exact set of user `user_id`'s locations, in one transaction
    /// (a savepoint inside an open one): links not in the set go, missing ones are made.
    ///
    /// # Errors
    ///
    /// [`Error::ForeignKeyViolation`] when the user or a location does not exist; nothing
    /// changes then.
    pub fn replace_user_locations(&mut self, user_id: i64, location_ids: &[i32]) -> Result<()> {
        self.transaction(|repo| {
            diesel::delete(
                userlocations::table
                    .filter(userlocations::user_id.eq(user_id))
                    .filter(userlocations::location_id.ne_all(location_ids)),
            )
            .execute(repo.conn)?;
            for &location_id in location_ids {
                repo.link(user_id, location_id)?;
            }
            Ok(())
        })
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
        for user in users {
            user.validate()?;
        }
        self.transaction(|repo| {
            let now = repo.database_now()?;
            let rows: Vec<_> = users.iter().map(|u| u.to_row(now)).collect();
            let per_chunk = chunk_rows(repo.backend(), USER_COLUMNS);
            match (&mut *repo.conn, method) {
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
        })
    }

    /// Inserts many locations in one transaction, chunked like
    /// [`import_users`](Repo::import_users); returns how many were inserted.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] before anything is written; [`Error::UniqueViolation`] for a taken
    /// name (nothing is kept).
    pub fn import_locations(&mut self, locations: &[NewLocation<'_>]) -> Result<usize> {
        for location in locations {
            location.validate()?;
        }
        self.transaction(|repo| {
            let now = repo.database_now()?;
            let rows: Vec<_> = locations.iter().map(|l| l.to_row(now)).collect();
            let per_chunk = chunk_rows(repo.backend(), LOCATION_COLUMNS);
            on_backend!(&mut *repo.conn, |c| insert_chunks(
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
        self.transaction(|repo| match &mut *repo.conn {
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
        })
    }

    /// The database's current time as its `created_at` default would store it.
    fn database_now(&mut self) -> Result<NaiveDateTime> {
        let sql = match self.backend() {
            Backend::Postgres => "SELECT CAST(now() AS TIMESTAMP) AS now",
            Backend::Sqlite => "SELECT strftime('%Y-%m-%d %H:%M:%f', 'now') AS now",
        };
        Ok(diesel::sql_query(sql).get_result::<NowRow>(self.conn)?.now)
    }

    // ---- large reads -------------------------------------------------------------------------

    /// At most `limit` users with an id above `after` (from the start when `None`), ordered by
    /// id: keyset pagination. Pass the last id of a page as `after` for the next one.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    pub fn users_page(&mut self, after: Option<i64>, limit: i64) -> Result<Vec<User>> {
        Ok(user::page(after, limit).load(self.conn)?)
    }

    /// At most `limit` locations with an id above `after`, ordered by id.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    pub fn locations_page(&mut self, after: Option<i32>, limit: i64) -> Result<Vec<Location>> {
        Ok(location::page(after, limit).load(self.conn)?)
    }

    /// A page of [`users_with_locations`](Repo::users_with_locations): at most `limit` users
    /// with an id above `after`, each with their locations, in two queries. Walks any number of
    /// users in bounded memory.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
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
        Ok(match &mut *self.conn {
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

/// `Ok` when one row was deleted, [`Error::NotFound`] when none was.
fn delete_one(deleted: usize) -> Result<()> {
    if deleted == 0 {
        Err(Error::NotFound)
    } else {
        Ok(())
    }
}
