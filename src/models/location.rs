//! `locations`: places users visit.

use std::fmt;

use chrono::NaiveDateTime;
use diesel::backend::Backend;
use diesel::dsl::AsSelect;
use diesel::pg::Pg;
use diesel::prelude::*;

use crate::error::Result;
use crate::schema::{locations, userlocations, users};
use crate::validate::{self, NAME_MAX};

/// A location row: the SQLAlchemy tutorial's `Location`.
///
/// `Display` follows the tutorial's `__repr__`: `<Location 1 Ramirez Forge 16155 Roman Stream Suite 816>`.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, QueryableByName, Selectable, Identifiable)]
#[diesel(table_name = locations, primary_key(location_id))]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite, crate::MultiBackend))]
pub struct Location {
    /// Generated id.
    pub location_id: i32,
    /// Unique name (at most 128 characters).
    pub location_name: String,
    /// Street address (at most 128 characters).
    pub address: String,
    /// Whether the location has a solarium; defaults to `true`.
    pub has_solarium: bool,
    /// When the row was created (UTC); set by the database.
    #[diesel(deserialize_as = super::timestamp::StoredTimestamp)]
    pub created_at: NaiveDateTime,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<Location {} {} {}>",
            self.location_id, self.location_name, self.address
        )
    }
}

/// A location with the username of the user it was reached through: a row of
/// [`Repo::user_locations_with_username`](crate::Repo::user_locations_with_username).
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite, crate::MultiBackend))]
pub struct LocationWithUsername {
    /// The location.
    #[diesel(embed)]
    pub location: Location,
    /// The user's handle, if they have one.
    #[diesel(select_expression = users::username)]
    pub username: Option<String>,
}

/// A location to insert; `None` fields take the column default (`has_solarium` `true`,
/// `created_at` now).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Insertable)]
#[diesel(table_name = locations)]
pub struct NewLocation<'a> {
    /// Unique name (required).
    pub location_name: &'a str,
    /// Street address (required).
    pub address: &'a str,
    /// Solarium flag; default `true`.
    pub has_solarium: Option<bool>,
    /// Creation time; default now (UTC).
    pub created_at: Option<NaiveDateTime>,
}

impl<'a> NewLocation<'a> {
    /// A location with a name and an address, everything else at its default.
    pub fn new(location_name: &'a str, address: &'a str) -> Self {
        NewLocation {
            location_name,
            address,
            has_solarium: None,
            created_at: None,
        }
    }
}

impl<'a> NewLocation<'a> {
    /// Checks lengths, blank values and NUL bytes, and `created_at` (see
    /// [`validate::timestamp`]).
    ///
    /// # Errors
    ///
    /// [`Error::Validation`](crate::Error::Validation) naming the field.
    pub fn validate(&self) -> Result<()> {
        self.checked().map(drop)
    }

    /// This location validated, with `created_at` truncated to microseconds: what is written.
    pub(crate) fn checked(&self) -> Result<NewLocation<'a>> {
        validate::text("location_name", self.location_name, NAME_MAX)?;
        validate::text("address", self.address, NAME_MAX)?;
        let created_at = self
            .created_at
            .map(|t| validate::timestamp("created_at", t))
            .transpose()?;
        Ok(NewLocation {
            created_at,
            ..*self
        })
    }

    /// This location as a fully specified row (defaults filled in: `has_solarium` `true`,
    /// `created_at` = `now`), for bulk inserts and `COPY`.
    pub(crate) fn to_row(self, now: NaiveDateTime) -> LocationRow<'a> {
        LocationRow {
            location_name: self.location_name,
            address: self.address,
            has_solarium: self.has_solarium.unwrap_or(true),
            created_at: self.created_at.unwrap_or(now),
        }
    }
}

/// A fully specified location row for bulk inserts and `COPY` (the id is generated).
#[derive(Debug, Clone, Copy, Insertable)]
#[diesel(table_name = locations, treat_none_as_default_value = false)]
pub(crate) struct LocationRow<'a> {
    pub(crate) location_name: &'a str,
    pub(crate) address: &'a str,
    pub(crate) has_solarium: bool,
    pub(crate) created_at: NaiveDateTime,
}

/// The columns a [`Location`] query selects: one tuple, the same on every backend (see
/// [`UserColumns`](crate::models::user::UserColumns)).
pub type LocationColumns = <Location as Selectable<Pg>>::SelectExpression;

/// All locations, ordered by id.
#[diesel::dsl::auto_type(no_type_alias)]
pub fn all<DB: Backend>() -> _
where
    Location: Selectable<DB, SelectExpression = LocationColumns>,
{
    let columns: AsSelect<Location, DB> = Location::as_select();
    locations::table
        .order(locations::location_id)
        .select(columns)
}

/// The location with id `location_id`.
#[diesel::dsl::auto_type(no_type_alias)]
pub fn by_id<DB: Backend>(location_id: i32) -> _
where
    Location: Selectable<DB, SelectExpression = LocationColumns>,
{
    let columns: AsSelect<Location, DB> = Location::as_select();
    locations::table.find(location_id).select(columns)
}

/// The location named `name`.
#[diesel::dsl::auto_type(no_type_alias)]
pub fn by_name<'a, DB: Backend>(name: &'a str) -> _
where
    Location: Selectable<DB, SelectExpression = LocationColumns>,
{
    let columns: AsSelect<Location, DB> = Location::as_select();
    locations::table
        .filter(locations::location_name.eq(name))
        .select(columns)
}

/// At most `limit` locations with an id of `from` or above, ordered by id.
#[diesel::dsl::auto_type(no_type_alias)]
pub fn page<DB: Backend>(from: i32, limit: i64) -> _
where
    Location: Selectable<DB, SelectExpression = LocationColumns>,
{
    let columns: AsSelect<Location, DB> = Location::as_select();
    locations::table
        .filter(locations::location_id.ge(from))
        .order(locations::location_id)
        .limit(limit)
        .select(columns)
}

/// The locations of user `user_id` with the user's username, ordered by location id: the
/// tutorial's `get_all_user_locations_relationships`.
#[diesel::dsl::auto_type(no_type_alias)]
pub fn of_user_with_username<DB: Backend>(user_id: i64) -> _
where
    LocationWithUsername: Selectable<DB, SelectExpression = LocationWithUsernameColumns>,
{
    let columns: AsSelect<LocationWithUsername, DB> = LocationWithUsername::as_select();
    userlocations::table
        .inner_join(locations::table)
        .inner_join(users::table)
        .filter(users::user_id.eq(user_id))
        .order(locations::location_id)
        .select(columns)
}

/// The columns a [`LocationWithUsername`] query selects, the same on every backend.
pub type LocationWithUsernameColumns = <LocationWithUsername as Selectable<Pg>>::SelectExpression;

/// `(user_id, location)` for every link of the users with ids from `first` to `last`, ordered
/// by user id then location id: the second query of
/// [`Repo::users_with_locations`](crate::Repo::users_with_locations) (a range, not a list of
/// binds, so it works at any number of users).
#[diesel::dsl::auto_type(no_type_alias)]
pub fn of_user_range<DB: Backend>(first: i64, last: i64) -> _
where
    Location: Selectable<DB, SelectExpression = LocationColumns>,
{
    let columns: AsSelect<Location, DB> = Location::as_select();
    userlocations::table
        .inner_join(locations::table)
        .filter(userlocations::user_id.between(first, last))
        .order((userlocations::user_id, locations::location_id))
        .select((userlocations::user_id, columns))
}
