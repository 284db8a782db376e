//! The Repo's queries and writes, one module per concern as in `src/repo/` (a query's tests are
//! in the module named like the file that runs it, each test named after the method first) —
//! each on PostgreSQL and on SQLite, with the same expected rows.

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod import;
mod locations;
mod pages;
mod referrals;
mod reports;
mod transaction;
mod users;

use chrono::NaiveDate;
use diesel::connection::SimpleConnection;
use userbase::models::{
    LocationCount, NewLocation, NewUser, ReferralCount, User, UserChanges, UserLocation,
    UserLocationCount,
};
use userbase::{Backend, Error, UpsertOptions};

use common::TestDb;

/// `(location_id, name)` of the seed's locations on a fresh database.
const RAMIREZ: (i32, &str) = (1, "Ramirez Forge");
const GALLOWAY: (i32, &str) = (2, "Galloway Walk");
const GABRIELLE: (i32, &str) = (3, "Gabrielle Ville");
const BURGESS: (i32, &str) = (4, "Burgess Meadow");

/// `(user_id, full_name, [(location_id, location_name)])`: a row of `users_with_locations`.
type UserRow<'a> = (i64, &'a str, Vec<(i32, &'a str)>);

/// The ids of `users`, in order.
fn ids(users: &[User]) -> Vec<i64> {
    users.iter().map(|u| u.user_id).collect()
}

/// `n` users with ids 1..=n and names `User {id}`.
fn names(n: i64) -> Vec<String> {
    (1..=n).map(|i| format!("User {i}")).collect()
}
