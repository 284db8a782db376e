//! The CSV of exports and imports, written byte for byte as PostgreSQL's
//! `COPY … (FORMAT csv, HEADER)` writes it (see the [module doc](super)), and its values parsed.

use std::io::Write;

use chrono::{NaiveDateTime, Timelike};

use crate::models::{Location, User, UserLocation};

/// The header line of a users file.
pub(crate) const USERS_HEADER: &str = concat!(crate::models::user::user_columns!(), "\n");
/// The header line of a locations file.
pub(crate) const LOCATIONS_HEADER: &str =
    "location_id,location_name,address,has_solarium,created_at\n";
/// The header line of a links file.
pub(crate) const LINKS_HEADER: &str = "location_id,user_id\n";

/// Appends `text` as a CSV field: quoted when empty or holding `,`, `"`, `\n` or `\r`.
fn text(out: &mut Vec<u8>, text: &str) {
    let quote = text.is_empty()
        || text
            .bytes()
            .any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r'));
    if !quote {
        out.extend_from_slice(text.as_bytes());
        return;
    }
    out.push(b'"');
    for part in text.split_inclusive('"') {
        out.extend_from_slice(part.as_bytes());
        if part.ends_with('"') {
            out.push(b'"');
        }
    }
    out.push(b'"');
}

fn optional_text(out: &mut Vec<u8>, value: Option<&str>) {
    if let Some(value) = value {
        text(out, value);
    }
}

fn number(out: &mut Vec<u8>, value: impl std::fmt::Display) {
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{value}");
}

fn boolean(out: &mut Vec<u8>, value: bool) {
    out.push(if value { b't' } else { b'f' });
}

/// Appends `value` as PostgreSQL prints a `TIMESTAMP`: the fraction of a second without
/// trailing zeros, none when it is 0.
pub(crate) fn timestamp(out: &mut Vec<u8>, value: NaiveDateTime) {
    let _ = write!(out, "{}", value.format("%Y-%m-%d %H:%M:%S"));
    let mut micros = value.nanosecond() / 1_000;
    if micros == 0 {
        return;
    }
    let mut digits = 6;
    while micros.is_multiple_of(10) {
        micros /= 10;
        digits -= 1;
    }
    let _ = write!(out, ".{micros:0digits$}");
}

/// Appends `user` as one CSV line.
pub(crate) fn user(out: &mut Vec<u8>, user: &User) {
    number(out, user.user_id);
    out.push(b',');
    optional_text(out, user.username.as_deref());
    out.push(b',');
    text(out, &user.full_name);
    out.push(b',');
    text(out, &user.language);
    out.push(b',');
    boolean(out, user.active);
    out.push(b',');
    optional_text(out, user.logged_as.as_deref());
    out.push(b',');
    if let Some(referrer_id) = user.referrer_id {
        number(out, referrer_id);
    }
    out.push(b',');
    timestamp(out, user.created_at);
    out.push(b'\n');
}

/// Appends `location` as one CSV line.
pub(crate) fn location(out: &mut Vec<u8>, location: &Location) {
    number(out, location.location_id);
    out.push(b',');
    text(out, &location.location_name);
    out.push(b',');
    text(out, &location.address);
    out.push(b',');
    boolean(out, location.has_solarium);
    out.push(b',');
    timestamp(out, location.created_at);
    out.push(b'\n');
}

/// Appends `link` as one CSV line.
pub(crate) fn link(out: &mut Vec<u8>, link: &UserLocation) {
    number(out, link.location_id);
    out.push(b',');
    number(out, link.user_id);
    out.push(b'\n');
}

/// A boolean as the CSV holds it: `t`/`f` (as exported), `true`/`false`, `1`/`0`.
#[cfg_attr(not(feature = "csv"), allow(dead_code))]
pub(crate) fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "t" | "true" | "TRUE" | "True" | "1" => Some(true),
        "f" | "false" | "FALSE" | "False" | "0" => Some(false),
        _ => None,
    }
}

/// A timestamp as the CSV holds it: `YYYY-MM-DD HH:MM:SS[.fraction]` (or with a `T`).
#[cfg_attr(not(feature = "csv"), allow(dead_code))]
pub(crate) fn parse_timestamp(value: &str) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f"))
        .ok()
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::*;

    fn at(micros: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(2024, 6, 19)
            .and_then(|d| d.and_hms_micro_opt(2, 45, 7, micros))
            .unwrap()
    }

    #[test]
    fn timestamps_print_as_postgres_does() {
        for (micros, expected) in [
            (0, "2024-06-19 02:45:07"),
            (500_000, "2024-06-19 02:45:07.5"),
            (123_456, "2024-06-19 02:45:07.123456"),
            (1_000, "2024-06-19 02:45:07.001"),
            (10, "2024-06-19 02:45:07.00001"),
        ] {
            let mut out = Vec::new();
            timestamp(&mut out, at(micros));
            assert_eq!(String::from_utf8(out).unwrap(), expected);
            assert_eq!(parse_timestamp(expected), Some(at(micros)));
        }
    }

    #[test]
    fn text_is_quoted_only_when_it_must_be() {
        for (value, expected) in [
            ("plain", "plain"),
            ("a,b", "\"a,b\""),
            ("say \"hi\"", "\"say \"\"hi\"\"\""),
            ("two\nlines", "\"two\nlines\""),
            ("cr\r", "\"cr\r\""),
            ("", "\"\""),
            ("Zoë \\ 東京", "Zoë \\ 東京"),
        ] {
            let mut out = Vec::new();
            text(&mut out, value);
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
    }
}
