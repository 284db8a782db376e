//! `userlocations`: the association object between users and locations.

use std::fmt;

use diesel::backend::Backend;
use diesel::dsl::count;
use diesel::dsl::AsSelect;
use diesel::pg::Pg;
use diesel::prelude::*;

use crate::models::{Location, User};
use crate::schema::{userlocations, users};

/// A link between a user and a location: the SQLAlchemy tutorial's `UserLocation` association object.
///
/// The same struct is inserted and read (the table has only its composite key).
/// Deleting the location deletes the link (`CASCADE`); deleting a user that still has links is
/// refused (`RESTRICT`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Queryable,
    QueryableByName,
    Selectable,
    Identifiable,
    Associations,
    Insertable,
)]
#[diesel(table_name = userlocations, primary_key(location_id, user_id))]
#[diesel(belongs_to(User, foreign_key = user_id))]
#[diesel(belongs_to(Location, foreign_key = location_id))]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite, crate::MultiBackend))]
pub struct UserLocation {
    /// The location.
    pub location_id: i32,
    /// The user.
    pub user_id: i64,
}

impl fmt::Display for UserLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<UserLocation user_id={} location_id={}>",
            self.user_id, self.location_id
        )
    }
}

/// A user with the locations they visit (ordered by location id): a row of
/// [`Repo::users_with_locations`](crate::Repo::users_with_locations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserWithLocations {
    /// The user.
    pub user: User,
    /// Their locations.
    pub locations: Vec<Location>,
}

/// A user's number of locations, labelled as in the tutorial (`quantity`, `name`).
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite, crate::MultiBackend))]
pub struct LocationCount {
    /// How many locations the user has.
    #[diesel(select_expression = count(userlocations::location_id))]
    #[diesel(select_expression_type = count<userlocations::location_id>)]
    pub quantity: i64,
    /// The user's full name.
    #[diesel(select_expression = users::full_name)]
    pub name: String,
}

/// A user's number of locations, by user id: a row of
/// [`Repo::location_counts_by_user`](crate::Repo::location_counts_by_user).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Queryable, Selectable)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite, crate::MultiBackend))]
pub struct UserLocationCount {
    /// How many locations the user has.
    #[diesel(select_expression = count(userlocations::location_id))]
    #[diesel(select_expression_type = count<userlocations::location_id>)]
    pub quantity: i64,
    /// The user's id.
    #[diesel(select_expression = users::user_id)]
    pub user_id: i64,
}

/// The ids of user `user_id`'s locations, ordered.
#[diesel::dsl::auto_type(no_type_alias)]
pub fn location_ids_of(user_id: i64) -> _ {
    userlocations::table
        .filter(userlocations::user_id.eq(user_id))
        .order(userlocations::location_id)
        .select(userlocations::location_id)
}

/// The number of locations of user `user_id`: the tutorial's `get_user_total_number_of_locations`.
#[diesel::dsl::auto_type(no_type_alias)]
pub fn count_for_user(user_id: i64) -> _ {
    let location_count: count<userlocations::location_id> = count(userlocations::location_id);
    userlocations::table
        .filter(userlocations::user_id.eq(user_id))
        .select(location_count)
}

/// The columns a [`UserLocationCount`] query selects, the same on every backend.
pub type UserLocationCountColumns = <UserLocationCount as Selectable<Pg>>::SelectExpression;

/// [`UserLocationCount`] per user with locations, ordered by user id: the tutorial's
/// `get_total_number_of_locations_by_user`.
#[diesel::dsl::auto_type(no_type_alias)]
pub fn counts_by_user<DB: Backend>() -> _
where
    UserLocationCount: Selectable<DB, SelectExpression = UserLocationCountColumns>,
{
    let columns: AsSelect<UserLocationCount, DB> = UserLocationCount::as_select();
    userlocations::table
        .inner_join(users::table)
        .group_by(users::user_id)
        .order(users::user_id)
        .select(columns)
}

/// The columns a [`LocationCount`] query selects, the same on every backend.
pub type LocationCountColumns = <LocationCount as Selectable<Pg>>::SelectExpression;

/// [`LocationCount`] per user with locations, ordered by user id: the tutorial's
/// `get_total_number_of_locations_by_user_with_labels`.
#[diesel::dsl::auto_type(no_type_alias)]
pub fn counts_by_user_named<DB: Backend>() -> _
where
    LocationCount: Selectable<DB, SelectExpression = LocationCountColumns>,
{
    let columns: AsSelect<LocationCount, DB> = LocationCount::as_select();
    userlocations::table
        .inner_join(users::table)
        .group_by(users::user_id)
        .order(users::user_id)
        .select(columns)
}

/// The columns a [`UserLocation`] query selects, the same on every backend.
pub type UserLocationColumns = <UserLocation as Selectable<Pg>>::SelectExpression;

/// Every link, ordered by user id then location id.
#[diesel::dsl::auto_type(no_type_alias)]
pub fn all<DB: Backend>() -> _
where
    UserLocation: Selectable<DB, SelectExpression = UserLocationColumns>,
{
    let columns: AsSelect<UserLocation, DB> = UserLocation::as_select();
    userlocations::table
        .order((userlocations::user_id, userlocations::location_id))
        .select(columns)
}
