//! `users`: people, and who referred whom.

use std::fmt;

use chrono::NaiveDateTime;
use diesel::backend::Backend;
use diesel::dsl::AsSelect;
use diesel::expression::SqlLiteral;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{BigInt, Bool, HasSqlType, Nullable, Text};
use diesel::sqlite::Sqlite;

use crate::error::{Error, Result};
use crate::schema::{userlocations, users};

/// The columns of `users` in [`User`]'s field order, as one SQL list: a macro so that `concat!`
/// can build the statements that name them at compile time (see [`USER_COLUMNS`]).
macro_rules! user_columns {
    () => {
        "user_id,username,full_name,language,active,logged_as,referrer_id,created_at"
    };
}
use crate::validate::{self, LANGUAGE_MAX, NAME_MAX};
pub(crate) use user_columns;

/// A user row: the SQLAlchemy tutorial's `User`.
///
/// `referrer_id` points at the user who referred this one (a self-referential foreign key,
/// `ON DELETE SET NULL`). `Display` follows the tutorial's `__repr__`: `<User 1169 amandasanchez Devin Schaefer>`.
#[derive(
    Debug, Clone, PartialEq, Eq, Queryable, QueryableByName, Selectable, Identifiable, Associations,
)]
#[diesel(table_name = users, primary_key(user_id))]
#[diesel(belongs_to(User, foreign_key = referrer_id))]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite, crate::MultiBackend))]
pub struct User {
    /// The user's id, given by the application (not generated).
    pub user_id: i64,
    /// Handle, if the user has one (at most 128 characters).
    pub username: Option<String>,
    /// Full name (at most 128 characters).
    pub full_name: String,
    /// Language code (at most 10 characters); defaults to `en`.
    pub language: String,
    /// Whether the user is active; defaults to `true`.
    pub active: bool,
    /// Name the user is logged in as, if any (at most 128 characters).
    pub logged_as: Option<String>,
    /// The user who referred this one, if any.
    pub referrer_id: Option<i64>,
    /// When the row was created (UTC); set by the database.
    #[diesel(deserialize_as = super::timestamp::StoredTimestamp)]
    pub created_at: NaiveDateTime,
}

impl fmt::Display for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<User {} {} {}>",
            self.user_id,
            self.username.as_deref().unwrap_or("None"),
            self.full_name
        )
    }
}

/// A user to insert. Fields left `None` take the column default (`language` `en`, `active`
/// `true`, `created_at` now, the others `NULL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Insertable)]
#[diesel(table_name = users)]
pub struct NewUser<'a> {
    /// The user's id (required: ids come from the application).
    pub user_id: i64,
    /// Handle.
    pub username: Option<&'a str>,
    /// Full name (required).
    pub full_name: &'a str,
    /// Language code; default `en`.
    pub language: Option<&'a str>,
    /// Active flag; default `true`.
    pub active: Option<bool>,
    /// Logged-in name.
    pub logged_as: Option<&'a str>,
    /// Referrer's id.
    pub referrer_id: Option<i64>,
    /// Creation time; default now (UTC).
    pub created_at: Option<NaiveDateTime>,
}

impl<'a> NewUser<'a> {
    /// A user with an id and a full name, everything else at its default.
    pub fn new(user_id: i64, full_name: &'a str) -> Self {
        NewUser {
            user_id,
            username: None,
            full_name,
            language: None,
            active: None,
            logged_as: None,
            referrer_id: None,
            created_at: None,
        }
    }

    /// Sets the handle.
    pub fn username(self, username: &'a str) -> Self {
        NewUser {
            username: Some(username),
            ..self
        }
    }

    /// Sets the language code.
    pub fn language(self, language: &'a str) -> Self {
        NewUser {
            language: Some(language),
            ..self
        }
    }

    /// Sets the referrer.
    pub fn referrer(self, referrer_id: i64) -> Self {
        NewUser {
            referrer_id: Some(referrer_id),
            ..self
        }
    }

    /// Sets the creation time instead of the database's now.
    pub fn created_at(self, created_at: NaiveDateTime) -> Self {
        NewUser {
            created_at: Some(created_at),
            ..self
        }
    }
}

impl<'a> NewUser<'a> {
    /// Checks lengths, blank names and NUL bytes, `created_at` (see
    /// [`validate::timestamp`]), and that the user is not their own referrer.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] naming the field; [`Error::ReferralCycle`] for self-referral.
    pub fn validate(&self) -> Result<()> {
        self.checked().map(drop)
    }

    /// This user validated, with `created_at` truncated to microseconds: what is written.
    pub(crate) fn checked(&self) -> Result<NewUser<'a>> {
        validate::optional_text("username", self.username, NAME_MAX)?;
        validate::text("full_name", self.full_name, NAME_MAX)?;
        validate::optional_text("language", self.language, LANGUAGE_MAX)?;
        validate::optional_text("logged_as", self.logged_as, NAME_MAX)?;
        if self.referrer_id == Some(self.user_id) {
            return Err(Error::ReferralCycle {
                user_id: self.user_id,
                referrer_id: self.user_id,
            });
        }
        let created_at = self
            .created_at
            .map(|t| validate::timestamp("created_at", t))
            .transpose()?;
        Ok(NewUser {
            created_at,
            ..*self
        })
    }

    /// This user as a fully specified row: defaults filled in here (`language` `en`, `active`
    /// `true`, `created_at` = `now`), so bulk inserts and `COPY` need no `DEFAULT`.
    pub(crate) fn to_row(self, now: NaiveDateTime) -> UserRow<'a> {
        UserRow {
            user_id: self.user_id,
            username: self.username,
            full_name: self.full_name,
            language: self.language.unwrap_or(DEFAULT_LANGUAGE),
            active: self.active.unwrap_or(true),
            logged_as: self.logged_as,
            referrer_id: self.referrer_id,
            created_at: self.created_at.unwrap_or(now),
        }
    }
}

/// The column default of `users.language`.
pub const DEFAULT_LANGUAGE: &str = "en";

/// A fully specified user row for bulk inserts and `COPY` (no `DEFAULT`: `None` is `NULL`).
#[derive(Debug, Clone, Copy, Insertable)]
#[diesel(table_name = users, treat_none_as_default_value = false)]
pub(crate) struct UserRow<'a> {
    pub(crate) user_id: i64,
    pub(crate) username: Option<&'a str>,
    pub(crate) full_name: &'a str,
    pub(crate) language: &'a str,
    pub(crate) active: bool,
    pub(crate) logged_as: Option<&'a str>,
    pub(crate) referrer_id: Option<i64>,
    pub(crate) created_at: NaiveDateTime,
}

/// [`UserRow`] as SQLite's bulk insert binds it: `created_at` already formatted as the text
/// Diesel binds for a `NaiveDateTime` (see [`sqlite_timestamp_text`]), so a batch sharing one
/// timestamp formats it once instead of once a row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SqliteUserRow<'a> {
    user_id: i64,
    username: Option<&'a str>,
    full_name: &'a str,
    language: &'a str,
    active: bool,
    logged_as: Option<&'a str>,
    referrer_id: Option<i64>,
    created_at: &'a str,
}

impl UserRow<'_> {
    /// This row for SQLite's bulk insert, with `created_at` given as its text.
    pub(crate) fn with_timestamp_text<'b>(&self, created_at: &'b str) -> SqliteUserRow<'b>
    where
        Self: 'b,
    {
        SqliteUserRow {
            user_id: self.user_id,
            username: self.username,
            full_name: self.full_name,
            language: self.language,
            active: self.active,
            logged_as: self.logged_as,
            referrer_id: self.referrer_id,
            created_at,
        }
    }
}

/// Diesel's text for a `NaiveDateTime` on SQLite (its `ENCODE_NAIVE_DATETIME_FORMAT`, in
/// `diesel/src/sqlite/types/date_and_time/chrono.rs`): what a `Timestamp` column stores.
const SQLITE_TIMESTAMP_FORMAT: &str = "%F %T%.f";

/// `at` as SQLite stores it when Diesel binds it to a `Timestamp` column.
pub(crate) fn sqlite_timestamp_text(at: NaiveDateTime) -> String {
    at.format(SQLITE_TIMESTAMP_FORMAT).to_string()
}

/// `INSERT INTO users (every column) VALUES (…), …` of exactly `N` rows on SQLite, written out
/// so Diesel caches its prepared statement: its query id is static (one SQL text per `N`).
/// Diesel's own multi-row insert of a slice has none and is parsed again on every call; its
/// insert of an array `[T; N]` has one only for rows of `'static` data.
///
/// Every value is bound as `insert_into(users).values(&[UserRow])` binds it on SQLite, so the
/// stored bytes are the same: `active` as an integer, `created_at` as the text of
/// [`sqlite_timestamp_text`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct InsertUsers<'r, 'a, const N: usize> {
    rows: &'r [SqliteUserRow<'a>; N],
}

/// The insert of exactly the `N` rows of `rows`.
pub(crate) fn insert_users<'r, 'a, const N: usize>(
    rows: &'r [SqliteUserRow<'a>; N],
) -> InsertUsers<'r, 'a, N> {
    InsertUsers { rows }
}

impl<const N: usize> QueryId for InsertUsers<'_, '_, N> {
    type QueryId = InsertUsers<'static, 'static, N>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<const N: usize> QueryFragment<Sqlite> for InsertUsers<'_, '_, N> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_sql(concat!("INSERT INTO users (", user_columns!(), ") VALUES "));
        for (i, row) in self.rows.iter().enumerate() {
            out.push_sql(if i == 0 { "(" } else { ", (" });
            out.push_bind_param::<BigInt, _>(&row.user_id)?;
            out.push_sql(", ");
            out.push_bind_param::<Nullable<Text>, _>(&row.username)?;
            out.push_sql(", ");
            out.push_bind_param::<Text, _>(row.full_name)?;
            out.push_sql(", ");
            out.push_bind_param::<Text, _>(row.language)?;
            out.push_sql(", ");
            out.push_bind_param::<Bool, _>(&row.active)?;
            out.push_sql(", ");
            out.push_bind_param::<Nullable<Text>, _>(&row.logged_as)?;
            out.push_sql(", ");
            out.push_bind_param::<Nullable<BigInt>, _>(&row.referrer_id)?;
            out.push_sql(", ");
            // SQLite binds a `Timestamp` as text: the same value, already formatted.
            out.push_bind_param::<Text, _>(row.created_at)?;
            out.push_sql(")");
        }
        Ok(())
    }
}

impl<Conn, const N: usize> RunQueryDsl<Conn> for InsertUsers<'_, '_, N> {}

/// Changes to a user: `None` leaves a column as it is; `Some(None)` sets a nullable one to `NULL`.
///
/// The referrer is changed through [`Repo::set_referrer`](crate::Repo::set_referrer), which
/// checks for cycles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, AsChangeset)]
#[diesel(table_name = users)]
pub struct UserChanges<'a> {
    /// New handle (`Some(None)`: none).
    pub username: Option<Option<&'a str>>,
    /// New full name.
    pub full_name: Option<&'a str>,
    /// New language code.
    pub language: Option<&'a str>,
    /// New active flag.
    pub active: Option<bool>,
    /// New logged-in name (`Some(None)`: none).
    pub logged_as: Option<Option<&'a str>>,
}

/// [`UserChanges`] plus the columns only the crate sets: the referrer (after its cycle check)
/// and `created_at` (upsert when asked).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, AsChangeset)]
#[diesel(table_name = users)]
pub(crate) struct UserUpdate<'a> {
    #[diesel(embed)]
    pub(crate) changes: UserChanges<'a>,
    pub(crate) referrer_id: Option<Option<i64>>,
    pub(crate) created_at: Option<NaiveDateTime>,
}

impl UserChanges<'_> {
    /// Checks the values that are set, as [`NewUser::validate`] does.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] naming the field; also when nothing would change.
    pub fn validate(&self) -> Result<()> {
        validate::optional_text("username", self.username.flatten(), NAME_MAX)?;
        validate::optional_text("full_name", self.full_name, NAME_MAX)?;
        validate::optional_text("language", self.language, LANGUAGE_MAX)?;
        validate::optional_text("logged_as", self.logged_as.flatten(), NAME_MAX)?;
        if *self == UserChanges::default() {
            return Err(Error::Validation {
                field: "changes",
                message: "nothing to change".to_owned(),
            });
        }
        Ok(())
    }
}

/// The update half of the usual upsert, written out so Diesel caches its prepared statement
/// (Diesel prepares every `UpdateStatement` anew: one extra round trip per call):
///
/// `UPDATE users SET username = $1, full_name = $2, language = COALESCE($3, language)
/// WHERE user_id = $4 RETURNING` every column, in [`User`]'s field order.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeenAgain<'a> {
    user_id: i64,
    username: Option<&'a str>,
    full_name: &'a str,
    /// `None` keeps the stored language.
    language: Option<&'a str>,
}

/// The update half of [`Repo::upsert_user`](crate::Repo::upsert_user) for `new`.
pub(crate) fn seen_again<'a>(new: &NewUser<'a>) -> SeenAgain<'a> {
    SeenAgain {
        user_id: new.user_id,
        username: new.username,
        full_name: new.full_name,
        language: new.language,
    }
}

impl QueryId for SeenAgain<'_> {
    type QueryId = SeenAgain<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl diesel::query_builder::Query for SeenAgain<'_> {
    type SqlType = UserSqlRow;
}

impl<DB> QueryFragment<DB> for SeenAgain<'_>
where
    DB: Backend,
    i64: ToSql<BigInt, DB>,
    str: ToSql<Text, DB>,
    DB: HasSqlType<BigInt> + HasSqlType<Text>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql(r#"UPDATE "users" SET "username" = "#);
        out.push_bind_param::<Nullable<Text>, _>(&self.username)?;
        out.push_sql(r#", "full_name" = "#);
        out.push_bind_param::<Text, _>(self.full_name)?;
        out.push_sql(r#", "language" = COALESCE("#);
        out.push_bind_param::<Nullable<Text>, _>(&self.language)?;
        out.push_sql(r#", "language") WHERE "user_id" = "#);
        out.push_bind_param::<BigInt, _>(&self.user_id)?;
        out.push_sql(concat!(" RETURNING ", user_columns!()));
        Ok(())
    }
}

impl<Conn> RunQueryDsl<Conn> for SeenAgain<'_> {}

pub use self::referrer_alias::{ReferrerAlias, REFERRERS};

/// `alias!` generates undocumented items; this module keeps the lint local.
#[allow(missing_docs)]
mod referrer_alias {
    use crate::schema::users;

    // `users` again, as `referrers`: the self-join from a user to the user who referred them.
    diesel::alias! {
        pub const REFERRERS: Alias<ReferrerAlias> = users as referrers;
    }
}

/// The columns a [`User`] query selects: one tuple, the same on every backend. The fragments
/// below pin [`User`]'s selection to it, so one fragment serves `PgConnection`,
/// `SqliteConnection` and [`AnyConnection`](crate::AnyConnection) alike.
pub type UserColumns = <User as Selectable<Pg>>::SelectExpression;

/// All users, ordered by id.
#[diesel::dsl::auto_type(no_type_alias)]
pub fn all<DB: Backend>() -> _
where
    User: Selectable<DB, SelectExpression = UserColumns>,
{
    let columns: AsSelect<User, DB> = User::as_select();
    users::table.order(users::user_id).select(columns)
}

/// The user with id `user_id`.
#[diesel::dsl::auto_type(no_type_alias)]
pub fn by_id<DB: Backend>(user_id: i64) -> _
where
    User: Selectable<DB, SelectExpression = UserColumns>,
{
    let columns: AsSelect<User, DB> = User::as_select();
    users::table.find(user_id).select(columns)
}

/// Users linked to location `location_id`, ordered by id: the tutorial's
/// `get_users_by_location`.
#[diesel::dsl::auto_type(no_type_alias)]
pub fn by_location<DB: Backend>(location_id: i32) -> _
where
    User: Selectable<DB, SelectExpression = UserColumns>,
{
    let columns: AsSelect<User, DB> = User::as_select();
    users::table
        .inner_join(userlocations::table)
        .filter(userlocations::location_id.eq(location_id))
        .order(users::user_id)
        .select(columns)
}

/// At most `limit` users with an id of `from` or above, ordered by id: keyset pagination.
#[diesel::dsl::auto_type(no_type_alias)]
pub fn page<DB: Backend>(from: i64, limit: i64) -> _
where
    User: Selectable<DB, SelectExpression = UserColumns>,
{
    let columns: AsSelect<User, DB> = User::as_select();
    users::table
        .filter(users::user_id.ge(from))
        .order(users::user_id)
        .limit(limit)
        .select(columns)
}

/// The users `referrer_id` referred, ordered by id.
#[diesel::dsl::auto_type(no_type_alias)]
pub fn referred_by<DB: Backend>(referrer_id: i64) -> _
where
    User: Selectable<DB, SelectExpression = UserColumns>,
{
    let columns: AsSelect<User, DB> = User::as_select();
    users::table
        .filter(users::referrer_id.eq(referrer_id))
        .order(users::user_id)
        .select(columns)
}

/// How many users one referrer referred: a row of
/// [`Repo::referral_counts`](crate::Repo::referral_counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Queryable, Selectable)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite, crate::MultiBackend))]
pub struct ReferralCount {
    /// The referrer's id.
    #[diesel(select_expression = users::referrer_id.assume_not_null())]
    #[diesel(select_expression_type = diesel::dsl::AssumeNotNull<users::referrer_id>)]
    pub referrer_id: i64,
    /// How many users name them as their referrer.
    #[diesel(select_expression = diesel::dsl::count(users::user_id))]
    #[diesel(select_expression_type = diesel::dsl::count<users::user_id>)]
    pub referred: i64,
}

/// The columns a [`ReferralCount`] query selects, the same on every backend.
pub type ReferralCountColumns = <ReferralCount as Selectable<Pg>>::SelectExpression;

/// [`ReferralCount`] per referrer, ordered by referrer id.
#[diesel::dsl::auto_type(no_type_alias)]
pub fn referral_counts<DB: Backend>() -> _
where
    ReferralCount: Selectable<DB, SelectExpression = ReferralCountColumns>,
{
    let columns: AsSelect<ReferralCount, DB> = ReferralCount::as_select();
    users::table
        .filter(users::referrer_id.is_not_null())
        .group_by(users::referrer_id)
        .order(users::referrer_id)
        .select(columns)
}

/// `referrers.<column>`, nullable (the left-joined side).
type ReferrerField<C> = diesel::dsl::Nullable<diesel::query_source::AliasedField<ReferrerAlias, C>>;

/// A user with their referrer's full name: a row of
/// [`Repo::users_with_referrer_names`](crate::Repo::users_with_referrer_names).
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite, crate::MultiBackend))]
pub struct UserWithReferrer {
    /// The user.
    #[diesel(embed)]
    pub user: User,
    /// The full name of the user who referred them; `None` without a referrer.
    #[diesel(select_expression = REFERRERS.field(users::full_name).nullable())]
    #[diesel(select_expression_type = ReferrerField<users::full_name>)]
    pub referrer_name: Option<String>,
}

/// The columns a [`UserWithReferrer`] query selects, the same on every backend.
pub type UserWithReferrerColumns = <UserWithReferrer as Selectable<Pg>>::SelectExpression;

/// The query [`with_referrer_names`] returns, for backend `DB`.
pub type WithReferrerNames<DB> = diesel::dsl::Select<
    diesel::dsl::Order<
        diesel::dsl::LeftJoinOn<
            users::table,
            diesel::query_source::Alias<ReferrerAlias>,
            diesel::dsl::Eq<users::referrer_id, ReferrerField<users::user_id>>,
        >,
        users::user_id,
    >,
    AsSelect<UserWithReferrer, DB>,
>;

/// Every user with their referrer's full name (`None` without a referrer), ordered by id: one
/// query, a self-join through an alias of `users`.
pub fn with_referrer_names<DB: Backend>() -> WithReferrerNames<DB>
where
    UserWithReferrer: Selectable<DB, SelectExpression = UserWithReferrerColumns>,
{
    users::table
        .left_join(REFERRERS.on(users::referrer_id.eq(REFERRERS.field(users::user_id).nullable())))
        .order(users::user_id)
        .select(UserWithReferrer::as_select())
}

/// The raw SQL of the tutorial's `SELECT * FROM users`: ordered, so the output is stable, and
/// with the columns spelled out in [`User`]'s field order, so its rows are read by position
/// ([`all_raw`]) whatever order a migration left the table's columns in.
pub const SELECT_ALL_SQL: &str =
    concat!("SELECT ", user_columns!(), " FROM users ORDER BY user_id");

/// Every column of `users` in [`User`]'s field order, comma-separated: the one list behind every
/// hand-written statement that names them ([`SELECT_ALL_SQL`], the SQLite batch insert, the
/// upsert's `RETURNING`, the export's `COPY`) and the header of the bulk CSV files. A unit test holds it to `User`'s own
/// selection, so it cannot drift from the struct or the schema.
pub const USER_COLUMNS: &str = user_columns!();

/// The SQL types of a whole `users` row in [`User`]'s field order ([`USER_COLUMNS`]): what
/// [`User`] reads by position. Derived from `User`'s selection, not written out.
pub type UserSqlRow = <<User as Selectable<Pg>>::SelectExpression as Expression>::SqlType;

/// [`SELECT_ALL_SQL`] as raw SQL whose rows are read by position.
///
/// Diesel's `sql_query` reads rows by column name, and its SQLite row looks each name up among
/// the result's columns for every field of every row (28 % of the instructions of reading 10 000
/// users in callgrind); reading by position skips that.
pub fn all_raw() -> SqlLiteral<UserSqlRow> {
    diesel::dsl::sql::<UserSqlRow>(SELECT_ALL_SQL)
}

#[cfg(test)]
mod sql {
    //! The hand-written statements, pinned with `debug_query` on each backend they run on.
    use diesel::debug_query;

    use super::*;

    #[test]
    fn the_column_list_is_users_selection_in_field_order() {
        let selected = debug_query::<Pg, _>(&users::table.select(User::as_select())).to_string();
        let listed = selected
            .trim_start_matches("SELECT ")
            .split(" FROM")
            .next()
            .unwrap_or_default()
            .replace("\"users\".", "")
            .replace('"', "")
            .replace(", ", ",");
        assert_eq!(listed, USER_COLUMNS);
        assert_eq!(
            SELECT_ALL_SQL,
            format!("SELECT {USER_COLUMNS} FROM users ORDER BY user_id")
        );
    }

    fn row(created_at: &str) -> SqliteUserRow<'_> {
        SqliteUserRow {
            user_id: 7,
            username: Some("ada"),
            full_name: "Ada Lovelace",
            language: "en",
            active: true,
            logged_as: None,
            referrer_id: Some(1),
            created_at,
        }
    }

    #[test]
    fn the_sqlite_batch_insert_names_every_column_once_and_binds_each_row() {
        let rows = [
            row("2024-06-19 02:45:14.367904"),
            row("2024-06-20 06:38:14"),
        ];
        let sql = debug_query::<Sqlite, _>(&insert_users(&rows)).to_string();
        assert_eq!(
            sql,
            "INSERT INTO users (user_id,username,full_name,language,active,logged_as,\
             referrer_id,created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?), (?, ?, ?, ?, ?, ?, ?, ?) \
             -- binds: [7, Some(\"ada\"), \"Ada Lovelace\", \"en\", true, None, Some(1), \
             \"2024-06-19 02:45:14.367904\", 7, Some(\"ada\"), \"Ada Lovelace\", \"en\", true, \
             None, Some(1), \"2024-06-20 06:38:14\"]"
        );
    }

    #[test]
    fn the_upserts_update_returns_every_column_on_both_backends() {
        let new = NewUser::new(7, "Ada Lovelace").username("ada");
        let expected = |p: [&str; 4]| {
            format!(
                "UPDATE \"users\" SET \"username\" = {}, \"full_name\" = {}, \"language\" = \
                 COALESCE({}, \"language\") WHERE \"user_id\" = {} RETURNING {USER_COLUMNS} \
                 -- binds: [Some(\"ada\"), \"Ada Lovelace\", None, 7]",
                p[0], p[1], p[2], p[3]
            )
        };
        assert_eq!(
            debug_query::<Pg, _>(&seen_again(&new)).to_string(),
            expected(["$1", "$2", "$3", "$4"])
        );
        assert_eq!(
            debug_query::<Sqlite, _>(&seen_again(&new)).to_string(),
            expected(["?", "?", "?", "?"])
        );
    }
}
