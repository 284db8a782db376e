//! One module per table: the read struct, its `New*` insert struct and the table's query
//! fragments (functions that *build* queries; the [`Repo`](crate::Repo) runs them).
//! Everything is re-exported here flat.

pub mod location;
mod timestamp;
pub mod user;
pub mod user_location;

pub use location::{Location, LocationWithUsername, NewLocation};
pub use user::{NewUser, ReferralCount, User, UserChanges, UserWithReferrer};
pub use user_location::{LocationCount, UserLocation, UserLocationCount, UserWithLocations};
