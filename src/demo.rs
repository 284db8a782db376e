//! The SQLAlchemy tutorial's demo rows: seven users, four locations and the links its reports
//! imply. Behind the `demo` feature (which the `userbase-testing` crate switches on).
//!
//! Used by `examples/quickstart.rs` and by the tests. [`load`] is idempotent: rows that exist
//! are left alone, so running the quickstart twice prints the same reports.

use chrono::{NaiveDate, NaiveDateTime};

use crate::error::Result;
use crate::models::{NewLocation, NewUser};
use crate::repo::Repo;

/// A demo user: `(user_id, username, full_name, language, created_at)` as the tutorial's dump shows.
pub type DemoUser = (
    i64,
    &'static str,
    &'static str,
    &'static str,
    (u32, u32, u32, u32, u32),
);

/// The tutorial's users, in the order of its `SELECT * FROM users` dump (created_at as
/// `(day of June 2024, hour, minute, second, microsecond)`).
pub const USERS: [DemoUser; 7] = [
    (1, "john_doe", "John Doe", "en", (20, 6, 38, 14, 853_833)),
    (12356, "johndoe", "John Doe", "en", (19, 2, 45, 14, 263_074)),
    (
        1824,
        "figueroajohn",
        "Brian Yang",
        "si",
        (19, 2, 45, 14, 310_830),
    ),
    (
        6873,
        "shaneramirez",
        "Olivia Moore",
        "my",
        (19, 2, 45, 14, 338_458),
    ),
    (
        9044,
        "maria95",
        "Michele Williams",
        "hak",
        (19, 2, 45, 14, 352_996),
    ),
    (
        1169,
        "amandasanchez",
        "Devin Schaefer",
        "xh",
        (19, 2, 45, 14, 367_904),
    ),
    (
        5155,
        "dianafoster",
        "Judy Baker",
        "hsb",
        (19, 2, 45, 14, 381_088),
    ),
];

/// The tutorial's locations `(name, address)`, in id order on a fresh database.
pub const LOCATIONS: [(&str, &str); 4] = [
    ("Ramirez Forge", "16155 Roman Stream Suite 816"),
    ("Galloway Walk", "64752 Kelly Skyway"),
    ("Gabrielle Ville", "1503 Gabrielle Ville Apt. 203"),
    ("Burgess Meadow", "870 Burgess Meadow"),
];

/// The links the tutorial's reports imply: `(user_id, location name)`.
pub const LINKS: [(i64, &str); 5] = [
    (6873, "Gabrielle Ville"),
    (6873, "Burgess Meadow"),
    (9044, "Galloway Walk"),
    (1169, "Ramirez Forge"),
    (5155, "Ramirez Forge"),
];

/// `created_at` of the demo locations: the tutorial's first one, then a second apart.
fn location_created_at(index: usize) -> NaiveDateTime {
    timestamp((19, 3, 0, 30 + index as u32, 755_164))
}

fn timestamp((day, hour, minute, second, micro): (u32, u32, u32, u32, u32)) -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2024, 6, day)
        .and_then(|d| d.and_hms_micro_opt(hour, minute, second, micro))
        .unwrap_or_default()
}

/// Inserts the demo rows that are missing (run it inside a transaction to get all or nothing).
///
/// # Errors
///
/// Any database error; a location name taken by another row is an
/// [`Error::UniqueViolation`](crate::Error::UniqueViolation).
pub fn load(repo: &mut Repo<'_>) -> Result<()> {
    for (user_id, username, full_name, language, created_at) in USERS {
        if repo.find_user(user_id)?.is_none() {
            let new = NewUser::new(user_id, full_name)
                .username(username)
                .language(language)
                .created_at(timestamp(created_at));
            repo.insert_user(&new)?;
        }
    }
    for (index, (name, address)) in LOCATIONS.into_iter().enumerate() {
        if repo.find_location_by_name(name)?.is_none() {
            let new = NewLocation {
                created_at: Some(location_created_at(index)),
                ..NewLocation::new(name, address)
            };
            repo.insert_location(&new)?;
        }
    }
    for (user_id, name) in LINKS {
        if let Some(location) = repo.find_location_by_name(name)? {
            repo.link(user_id, location.location_id)?;
        }
    }
    Ok(())
}
