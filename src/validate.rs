//! The bounds of what is stored, checked before anything reaches the database and the same on
//! both backends (SQLite would otherwise store over-long strings silently, and PostgreSQL rejects
//! NUL bytes with an encoding error): string lengths, the page limit and the timestamp range.
//! Every string argument of every public method of the [`Repo`](crate::Repo) is checked (raw SQL
//! too: not blank, no NUL byte); a value out of bounds is
//! [`Error::Validation`] naming the field.

use chrono::{NaiveDate, NaiveDateTime, Timelike};

use crate::error::{Error, Result};

/// Longest `username`, `full_name`, `logged_as`, `location_name` and `address` (characters).
pub const NAME_MAX: usize = 128;
/// Longest `language` code (characters).
pub const LANGUAGE_MAX: usize = 10;
/// Largest `limit` of one page ([`Repo::users_page`](crate::Repo::users_page) and friends).
pub const PAGE_LIMIT_MAX: i64 = 100_000;

fn invalid(field: &'static str, message: impl Into<String>) -> Error {
    Error::Validation {
        field,
        message: message.into(),
    }
}

/// Whether `c` shows nothing: white space, a control character, or a Unicode
/// `Default_Ignorable_Code_Point` (zero-width space and joiners, word joiner, byte order mark,
/// soft hyphen, bidirectional marks, variation selectors, Hangul fillers, tags).
pub(crate) fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'..='\u{1160}'
                | '\u{17B4}'..='\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF0}'..='\u{FFF8}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

/// A text value: not blank (made only of [invisible](is_invisible) characters), no NUL byte,
/// at most `max` characters (Unicode scalar values, as PostgreSQL's `VARCHAR(n)` counts them).
///
/// # Errors
///
/// [`Error::Validation`] naming `field`.
pub(crate) fn text(field: &'static str, value: &str, max: usize) -> Result<()> {
    if value.contains('\0') {
        return Err(invalid(field, "must not contain NUL bytes"));
    }
    if value.chars().all(is_invisible) {
        return Err(invalid(
            field,
            "must not be empty or only invisible characters",
        ));
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
///
/// # Errors
///
/// As [`text`].
pub(crate) fn optional_text(field: &'static str, value: Option<&str>, max: usize) -> Result<()> {
    value.map_or(Ok(()), |v| text(field, v, max))
}

/// Raw SQL: no NUL byte (which neither driver can pass), and some statement, not only white
/// space, `;` and comments (PostgreSQL answers that with an empty-query result after which
/// Diesel's connection refuses every further command).
///
/// # Errors
///
/// [`Error::Validation`] naming the field `sql`.
pub(crate) fn sql(value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(invalid("sql", "must not contain NUL bytes"));
    }
    if !has_statement(value) {
        return Err(invalid("sql", "must hold a statement, not only comments"));
    }
    Ok(())
}

/// Whether `sql` has anything besides invisible characters, `;`, `-- …` line comments and
/// (nested) `/* … */` block comments.
fn has_statement(sql: &str) -> bool {
    let mut chars = sql.chars().peekable();
    let mut depth = 0_usize;
    while let Some(c) = chars.next() {
        match (depth, c, chars.peek()) {
            (_, '/', Some('*')) => {
                chars.next();
                depth += 1;
            }
            (1.., '*', Some('/')) => {
                chars.next();
                depth -= 1;
            }
            (1.., _, _) => {}
            (0, '-', Some('-')) => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            (0, ';', _) => {}
            (0, c, _) if is_invisible(c) => {}
            (0, _, _) => return true,
        }
    }
    false
}

/// The earliest timestamp stored: `0001-01-01 00:00:00`.
pub fn timestamp_min() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(1, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .unwrap_or(NaiveDateTime::MIN)
}

/// The latest timestamp stored: `9999-12-31 23:59:59.999999`.
pub fn timestamp_max() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(9999, 12, 31)
        .and_then(|d| d.and_hms_micro_opt(23, 59, 59, 999_999))
        .unwrap_or(NaiveDateTime::MAX)
}

/// A timestamp as both backends store it: truncated to microseconds (PostgreSQL's `TIMESTAMP`
/// resolution; SQLite would keep the nanoseconds), within years 1 to 9999 (where both backends
/// store, compare and sort it alike: SQLite stores text), and never a leap second (PostgreSQL
/// would store `23:59:60` as the next day's `00:00:00`).
///
/// # Errors
///
/// [`Error::Validation`] naming `field` for a leap second or a time outside the range.
pub fn timestamp(field: &'static str, value: NaiveDateTime) -> Result<NaiveDateTime> {
    let nanos = value.nanosecond();
    if nanos >= 1_000_000_000 {
        return Err(invalid(
            field,
            format!("{value} is a leap second, which PostgreSQL cannot store"),
        ));
    }
    let truncated = value
        .with_nanosecond(nanos - nanos % 1_000)
        .unwrap_or(value);
    if truncated < timestamp_min() || truncated > timestamp_max() {
        return Err(invalid(
            field,
            format!("{value} is outside years 1 to 9999"),
        ));
    }
    Ok(truncated)
}

/// A page size: 1 to [`PAGE_LIMIT_MAX`].
///
/// # Errors
///
/// [`Error::Validation`] naming the field `limit`.
pub(crate) fn limit(limit: i64) -> Result<i64> {
    if (1..=PAGE_LIMIT_MAX).contains(&limit) {
        Ok(limit)
    } else {
        Err(invalid(
            "limit",
            format!("is {limit}, it must be between 1 and {PAGE_LIMIT_MAX}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invisible_only_is_blank() {
        for blank in [
            "",
            " ",
            "\u{200B}",
            "\u{200B}\u{200D}\u{FEFF}",
            " \u{2060}\t",
            "\u{3164}",
        ] {
            assert!(
                matches!(text("f", blank, 10), Err(Error::Validation { .. })),
                "{blank:?}"
            );
        }
        for ok in ["a\u{200B}b", "\u{202E}abc", "👩\u{200D}👩\u{200D}👧"] {
            assert!(text("f", ok, 10).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn sql_needs_a_statement() {
        for empty in ["", " ; ", "-- x", "/* a /* b */ c */ -- d\n;", "/* */ -- #"] {
            assert!(sql(empty).is_err(), "{empty:?}");
        }
        for statement in ["SELECT 1", "-- c\nSELECT 1", "/* x */ SELECT '--'", "x"] {
            assert!(sql(statement).is_ok(), "{statement:?}");
        }
    }

    #[test]
    fn timestamps_truncate_and_refuse() {
        let t = NaiveDate::from_ymd_opt(2024, 1, 2)
            .unwrap()
            .and_hms_nano_opt(3, 4, 5, 123_456_789)
            .unwrap();
        assert_eq!(
            timestamp("t", t).unwrap(),
            NaiveDate::from_ymd_opt(2024, 1, 2)
                .unwrap()
                .and_hms_micro_opt(3, 4, 5, 123_456)
                .unwrap()
        );
        let leap = NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
            .unwrap();
        assert!(matches!(
            timestamp("t", leap),
            Err(Error::Validation { field: "t", .. })
        ));
        assert!(timestamp("t", NaiveDateTime::MIN).is_err());
        assert!(timestamp("t", NaiveDateTime::MAX).is_err());
        assert_eq!(timestamp("t", timestamp_min()).unwrap(), timestamp_min());
    }
}
