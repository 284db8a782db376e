//! Checks run before anything reaches the database, the same on both backends (SQLite would
//! otherwise store over-long strings silently, and PostgreSQL rejects NUL bytes with an
//! encoding error).

use crate::error::{Error, Result};

/// Longest `username`, `full_name`, `logged_as`, `location_name` and `address` (characters).
pub const NAME_MAX: usize = 128;
/// Longest `language` code (characters).
pub const LANGUAGE_MAX: usize = 10;

fn invalid(field: &'static str, message: impl Into<String>) -> Error {
    Error::Validation {
        field,
        message: message.into(),
    }
}

/// A text value: not blank, at most `max` characters, no NUL byte.
pub(crate) fn text(field: &'static str, value: &str, max: usize) -> Result<()> {
    if value.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if value.contains('\0') {
        return Err(invalid(field, "must not contain NUL bytes"));
    }
    let length = value.chars().count();
    if length > max {
        return Err(invalid(
            field,
            format!("is {length} characters long, at most {max} are allowed"),
        ));
    }
    Ok(())
}

/// An optional text value: checked as [`text`] when present.
pub(crate) fn optional_text(field: &'static str, value: Option<&str>, max: usize) -> Result<()> {
    value.map_or(Ok(()), |v| text(field, v, max))
}
