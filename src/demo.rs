//! The SQLAlchemy tutorial's demo rows: seven users, four locations and the links its reports
//! imply. Behind the `demo` feature (which the `userbase-testing` crate switches on).
//!
//! Used by `examples/quickstart.rs` and by the tests. [`load`] is idempotent: rows that exist
//! are left alone, so running the quickstart twice prints the same reports.

use chrono::{NaiveDate, NaiveDateTime};

use crate::error::{Error, Result};
use crate::models::{NewLocation, NewUser};
use crate::repo::Repo;

/// A demo user, as the tutorial's `SELECT * FROM users` dump shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoUser {
    /// The user's id.
    pub user_id: i64,
    /// Handle.
    pub username: &'static str,
    /// Full name.
    pub full_name: &'static str,
    /// Language code.
    pub language: &'static str,
    /// Creation time (UTC) as the dump prints it: `YYYY-MM-DD HH:MM:SS.ffffff`.
    pub created_at: &'static str,
}

impl DemoUser {
    /// [`created_at`](DemoUser::created_at) as a timestamp.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] when the text is not a timestamp of that form.
    pub fn created_at(&self) -> Result<NaiveDateTime> {
        NaiveDateTime::parse_from_str(self.created_at, "%Y-%m-%d %H:%M:%S%.f").map_err(|e| {
            Error::Validation {
                field: "created_at",
                message: format!("{:?} is not a timestamp: {e}", self.created_at),
            }
        })
    }
}

/// A demo location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoLocation {
    /// Its unique name.
    pub name: &'static str,
    /// Street address.
    pub address: &'static str,
}

/// A demo link between a user and a location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoLink {
    /// The user's id.
    pub user_id: i64,
    /// The location's name.
    pub location: &'static str,
}

/// The tutorial's users, in the order of its `SELECT * FROM users` dump.
pub const USERS: [DemoUser; 7] = [
    DemoUser {
        user_id: 1,
        username: "john_doe",
        full_name: "John Doe",
        language: "en",
        created_at: "2024-06-20 06:38:14.853833",
    },
    DemoUser {
        user_id: 12356,
        username: "johndoe",
        full_name: "John Doe",
        language: "en",
        created_at: "2024-06-19 02:45:14.263074",
    },
    DemoUser {
        user_id: 1824,
        username: "figueroajohn",
        full_name: "Brian Yang",
        language: "si",
        created_at: "2024-06-19 02:45:14.310830",
    },
    DemoUser {
        user_id: 6873,
        username: "shaneramirez",
        full_name: "Olivia Moore",
        language: "my",
        created_at: "2024-06-19 02:45:14.338458",
    },
    DemoUser {
        user_id: 9044,
        username: "maria95",
        full_name: "Michele Williams",
        language: "hak",
        created_at: "2024-06-19 02:45:14.352996",
    },
    DemoUser {
        user_id: 1169,
        username: "amandasanchez",
        full_name: "Devin Schaefer",
        language: "xh",
        created_at: "2024-06-19 02:45:14.367904",
    },
    DemoUser {
        user_id: 5155,
        username: "dianafoster",
        full_name: "Judy Baker",
        language: "hsb",
        created_at: "2024-06-19 02:45:14.381088",
    },
];

/// The tutorial's locations, in id order on a fresh database.
pub const LOCATIONS: [DemoLocation; 4] = [
    DemoLocation {
        name: "Ramirez Forge",
        address: "16155 Roman Stream Suite 816",
    },
    DemoLocation {
        name: "Galloway Walk",
        address: "64752 Kelly Skyway",
    },
    DemoLocation {
        name: "Gabrielle Ville",
        address: "1503 Gabrielle Ville Apt. 203",
    },
    DemoLocation {
        name: "Burgess Meadow",
        address: "870 Burgess Meadow",
    },
];

/// The links the tutorial's reports imply.
pub const LINKS: [DemoLink; 5] = [
    DemoLink {
        user_id: 6873,
        location: "Gabrielle Ville",
    },
    DemoLink {
        user_id: 6873,
        location: "Burgess Meadow",
    },
    DemoLink {
        user_id: 9044,
        location: "Galloway Walk",
    },
    DemoLink {
        user_id: 1169,
        location: "Ramirez Forge",
    },
    DemoLink {
        user_id: 5155,
        location: "Ramirez Forge",
    },
];

/// `created_at` of the demo locations: the tutorial's first one, then a second apart.
fn location_created_at(index: usize) -> NaiveDateTime {
    let second = u32::try_from(index).map_or(59, |i| i.saturating_add(30).min(59));
    NaiveDate::from_ymd_opt(2024, 6, 19)
        .and_then(|d| d.and_hms_micro_opt(3, 0, second, 755_164))
        .unwrap_or_default()
}

/// Inserts the demo rows that are missing (run it inside a transaction to get all or nothing).
///
/// # Errors
///
/// Any database error; a location name taken by another row is an
/// [`Error::UniqueViolation`](crate::Error::UniqueViolation).
pub fn load(repo: &mut Repo<'_>) -> Result<()> {
    for demo in USERS {
        if repo.find_user(demo.user_id)?.is_none() {
            let new = NewUser::new(demo.user_id, demo.full_name)
                .username(demo.username)
                .language(demo.language)
                .created_at(demo.created_at()?);
            repo.insert_user(&new)?;
        }
    }
    for (index, demo) in LOCATIONS.into_iter().enumerate() {
        if repo.find_location_by_name(demo.name)?.is_none() {
            let new = NewLocation {
                created_at: Some(location_created_at(index)),
                ..NewLocation::new(demo.name, demo.address)
            };
            repo.insert_location(&new)?;
        }
    }
    for link in LINKS {
        if let Some(location) = repo.find_location_by_name(link.location)? {
            repo.link(link.user_id, location.location_id)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_demo_timestamp_parses() {
        let first = USERS[0].created_at().unwrap();
        assert_eq!(first.to_string(), "2024-06-20 06:38:14.853833");
        for user in USERS {
            assert_eq!(
                user.created_at()
                    .unwrap()
                    .format("%Y-%m-%d %H:%M:%S%.6f")
                    .to_string(),
                user.created_at
            );
        }
        assert_eq!(
            location_created_at(0).to_string(),
            "2024-06-19 03:00:30.755164"
        );
        assert_eq!(
            location_created_at(3).to_string(),
            "2024-06-19 03:00:33.755164"
        );
    }
}
