//! Test rows: the quickstart's demo rows, and small builders for users, locations and links.
//!
//! ```
//! use userbase_testing::{fixtures, TestDb};
//! use userbase::Backend;
//!
//! let test = TestDb::new(Backend::Sqlite);
//! let db = test.database();
//! db.transaction(|repo| {
//!     let ada = fixtures::user(42).full_name("Ada Lovelace").username("ada").insert(repo)?;
//!     let lab = fixtures::location("Lab").insert(repo)?;
//!     fixtures::link(ada.user_id, lab.location_id).insert(repo)?;
//!     assert_eq!(repo.count_user_locations(42)?, 1);
//!     Ok::<_, userbase::Error>(())
//! })?;
//! # Ok::<(), userbase::Error>(())
//! ```

use chrono::NaiveDateTime;

pub use userbase::demo::{
    DemoUser, LINKS as DEMO_LINKS, LOCATIONS as DEMO_LOCATIONS, USERS as DEMO_USERS,
};
use userbase::models::{Location, NewLocation, NewUser, User, UserLocation};
use userbase::{Repo, Result};

/// Inserts the quickstart's demo rows that are missing: [`DEMO_USERS`] (7), [`DEMO_LOCATIONS`]
/// (4) and [`DEMO_LINKS`] (5). Run it inside a transaction to get all or nothing.
///
/// # Errors
///
/// Any database error; a demo location name taken by another row is an
/// [`Error::UniqueViolation`](userbase::Error::UniqueViolation).
pub fn load_demo(repo: &mut Repo<'_>) -> Result<()> {
    userbase::demo::load(repo)
}

/// A user to insert: `user(42)` is "User 42" with every other column at its default.
pub fn user(user_id: i64) -> UserBuilder {
    UserBuilder {
        user_id,
        full_name: format!("User {user_id}"),
        username: None,
        language: None,
        active: None,
        referrer_id: None,
        created_at: None,
    }
}

/// A location to insert: `location("Lab")` at the address "1 Lab Street".
pub fn location(name: &str) -> LocationBuilder {
    LocationBuilder {
        name: name.to_owned(),
        address: format!("1 {name} Street"),
        has_solarium: None,
        created_at: None,
    }
}

/// A link of a user to a location.
pub fn link(user_id: i64, location_id: i32) -> LinkBuilder {
    LinkBuilder {
        user_id,
        location_id,
    }
}

/// Builds a user row (owned values, unlike [`NewUser`]); see [`user`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct UserBuilder {
    user_id: i64,
    full_name: String,
    username: Option<String>,
    language: Option<String>,
    active: Option<bool>,
    referrer_id: Option<i64>,
    created_at: Option<NaiveDateTime>,
}

impl UserBuilder {
    /// Sets the full name (default `User <id>`).
    pub fn full_name(mut self, full_name: impl Into<String>) -> Self {
        self.full_name = full_name.into();
        self
    }

    /// Sets the handle (default none).
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// Sets the language (default the column's, `en`).
    pub fn language(mut self, language: impl Into<String>) -> Self {
        self.language = Some(language.into());
        self
    }

    /// Sets the active flag (default the column's, `true`).
    pub fn active(mut self, active: bool) -> Self {
        self.active = Some(active);
        self
    }

    /// Sets the referrer (default none; it must exist).
    pub fn referrer(mut self, referrer_id: i64) -> Self {
        self.referrer_id = Some(referrer_id);
        self
    }

    /// Sets the creation time (default the column's, now).
    pub fn created_at(mut self, created_at: NaiveDateTime) -> Self {
        self.created_at = Some(created_at);
        self
    }

    /// The insert struct, borrowing from this builder.
    pub fn as_new(&self) -> NewUser<'_> {
        NewUser {
            username: self.username.as_deref(),
            language: self.language.as_deref(),
            active: self.active,
            referrer_id: self.referrer_id,
            created_at: self.created_at,
            ..NewUser::new(self.user_id, &self.full_name)
        }
    }

    /// Inserts the user ([`Repo::insert_user`]).
    ///
    /// # Errors
    ///
    /// As [`Repo::insert_user`]: [`Error::UniqueViolation`](userbase::Error::UniqueViolation) for a
    /// taken id, [`Error::Validation`](userbase::Error::Validation) for a bad value, …
    pub fn insert(&self, repo: &mut Repo<'_>) -> Result<User> {
        repo.insert_user(&self.as_new())
    }
}

/// Builds a location row; see [`location`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct LocationBuilder {
    name: String,
    address: String,
    has_solarium: Option<bool>,
    created_at: Option<NaiveDateTime>,
}

impl LocationBuilder {
    /// Sets the address (default `1 <name> Street`).
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.address = address.into();
        self
    }

    /// Sets the solarium flag (default the column's, `true`).
    pub fn solarium(mut self, has_solarium: bool) -> Self {
        self.has_solarium = Some(has_solarium);
        self
    }

    /// Sets the creation time (default the column's, now).
    pub fn created_at(mut self, created_at: NaiveDateTime) -> Self {
        self.created_at = Some(created_at);
        self
    }

    /// The insert struct, borrowing from this builder.
    pub fn as_new(&self) -> NewLocation<'_> {
        NewLocation {
            has_solarium: self.has_solarium,
            created_at: self.created_at,
            ..NewLocation::new(&self.name, &self.address)
        }
    }

    /// Inserts the location ([`Repo::insert_location`]); the database assigns its id.
    ///
    /// # Errors
    ///
    /// As [`Repo::insert_location`]: [`Error::UniqueViolation`](userbase::Error::UniqueViolation)
    /// for a taken name, …
    pub fn insert(&self, repo: &mut Repo<'_>) -> Result<Location> {
        repo.insert_location(&self.as_new())
    }
}

/// Builds a link row; see [`link`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct LinkBuilder {
    user_id: i64,
    location_id: i32,
}

impl LinkBuilder {
    /// The row.
    pub fn as_row(&self) -> UserLocation {
        UserLocation {
            location_id: self.location_id,
            user_id: self.user_id,
        }
    }

    /// Inserts the link ([`Repo::insert_user_location`]; an existing link is an error, unlike
    /// the idempotent [`Repo::link`]).
    ///
    /// # Errors
    ///
    /// [`Error::ForeignKeyViolation`](userbase::Error::ForeignKeyViolation) when the user or the
    /// location does not exist, [`Error::UniqueViolation`](userbase::Error::UniqueViolation) when
    /// the link does.
    pub fn insert(&self, repo: &mut Repo<'_>) -> Result<UserLocation> {
        repo.insert_user_location(&self.as_row())
    }
}
