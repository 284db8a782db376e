//! `users`: people, and who referred whom.

use std::fmt;

use chrono::NaiveDateTime;
use diesel::dsl::AsSelect;
use diesel::prelude::*;

use crate::schema::{userlocations, users};
use crate::MultiBackend;

/// A user row: the seed's `User`.
///
/// `referrer_id` points at the user who referred this one (a self-referential foreign key,
/// `ON DELETE SET NULL`). `Display` follows the seed's `__repr__`: `<User 1169 amandasanchez Devin Schaefer>`.
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

/// All users, ordered by id.
#[diesel::dsl::auto_type(no_type_alias)]
pub fn all() -> _ {
    let as_select: AsSelect<User, MultiBackend> = User::as_select();
    users::table.order(users::user_id).select(as_select)
}

/// The user with id `user_id`.
#[diesel::dsl::auto_type(no_type_alias)]
pub fn by_id(user_id: i64) -> _ {
    let as_select: AsSelect<User, MultiBackend> = User::as_select();
    users::table.find(user_id).select(as_select)
}

/// Users linked to location `location_id`, ordered by id: the seed's `get_users_by_location`.
#[diesel::dsl::auto_type(no_type_alias)]
pub fn by_location(location_id: i32) -> _ {
    let as_select: AsSelect<User, MultiBackend> = User::as_select();
    users::table
        .inner_join(userlocations::table)
        .filter(userlocations::location_id.eq(location_id))
        .order(users::user_id)
        .select(as_select)
}

/// The raw SQL of the seed's `SELECT * FROM users` (ordered, so the output is stable).
pub const SELECT_ALL_SQL: &str = "SELECT * FROM users ORDER BY user_id";
