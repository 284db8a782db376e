//! The SQLAlchemy tutorial's workload end to end: connect, migrate, load the demo rows, print every report.
//!
//! `cargo run --example quickstart` uses `DATABASE_URL` (or the `DB_*` parts) and, with neither
//! set, the embedded SQLite file `userbase.sqlite3`. Set `RUST_LOG=userbase=info` and
//! `DB_ECHO=true` to see every statement.

use std::process::ExitCode;

use chrono::{Datelike, NaiveDateTime, Timelike};
use userbase::models::{Location, User, UserLocation};
use userbase::{demo, Database, Error, Settings};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The error, then each cause in its chain.
            eprint!("quickstart failed: {error}");
            let mut cause = std::error::Error::source(&error);
            while let Some(inner) = cause {
                eprint!(": {inner}");
                cause = inner.source();
            }
            eprintln!();
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Error> {
    let db = Database::new(Settings::from_env()?)?;
    println!("Using {} at {}", db.backend(), db.url());
    db.run_pending_migrations()?;
    db.transaction(demo::load)?;

    // The tutorial's `with session_pool() as session: repo = Repo(session)`.
    let mut session = db.session()?;
    let mut repo = session.repo();

    // The tutorial's three raw reads, each printed as Python prints `result.all()`. Users: the
    // columns named, read by position; links and locations: `SELECT *`, read by column name.
    // Each is ordered, so the output is the same on every run and backend.
    let users = repo.users_raw()?;
    println!("{}", python_list(users.iter().map(user_tuple)));
    let links: Vec<UserLocation> =
        repo.load_sql("SELECT * FROM userlocations ORDER BY location_id, user_id")?;
    println!("{}", python_list(links.iter().map(link_tuple)));
    let locations: Vec<Location> = repo.load_sql("SELECT * FROM locations ORDER BY location_id")?;
    println!("{}", python_list(locations.iter().map(location_tuple)));

    for entry in repo.users_with_locations()? {
        println!("{}", entry.user.full_name);
        for location in &entry.locations {
            println!("  Location: {}", location.location_name);
        }
    }

    let ramirez_forge = repo
        .find_location_by_name(demo::LOCATIONS[0].name)?
        .ok_or(Error::NotFound)?;
    for user in repo.users_by_location(ramirez_forge.location_id)? {
        println!("{user}");
    }

    let user_id = 6873;
    for row in repo.user_locations_with_username(user_id)? {
        println!(
            "# Location: {}: {}",
            row.location.location_name,
            row.username.as_deref().unwrap_or("None")
        );
    }
    let total = repo.count_user_locations(user_id)?;
    println!("[User: {user_id}] total number of Locations: {total}");
    println!("===========");
    for row in repo.location_counts_by_user()? {
        println!(
            "Total number of Locations: {} by {}",
            row.quantity, row.user_id
        );
    }
    println!("===========");
    for row in repo.location_counts_by_user_named()? {
        println!(
            "Total number of Locations: {} by {}",
            row.quantity, row.name
        );
    }
    println!("===========");
    Ok(())
}

/// Rows as Python prints a list of tuples: `[(…), (…)]`.
fn python_list(rows: impl Iterator<Item = String>) -> String {
    format!("[{}]", rows.collect::<Vec<_>>().join(", "))
}

/// A `users` row as Python prints it, columns in table order.
fn user_tuple(user: &User) -> String {
    format!(
        "({}, {}, {}, {}, {}, {}, {}, {})",
        user.user_id,
        py_opt_str(user.username.as_deref()),
        py_str(&user.full_name),
        py_str(&user.language),
        py_bool(user.active),
        py_opt_str(user.logged_as.as_deref()),
        user.referrer_id
            .map_or_else(|| "None".to_owned(), |id| id.to_string()),
        py_datetime(user.created_at)
    )
}

/// A `userlocations` row as Python prints it: `(location_id, user_id)`.
fn link_tuple(link: &UserLocation) -> String {
    format!("({}, {})", link.location_id, link.user_id)
}

/// A `locations` row as Python prints it, columns in table order.
fn location_tuple(location: &Location) -> String {
    format!(
        "({}, {}, {}, {}, {})",
        location.location_id,
        py_str(&location.location_name),
        py_str(&location.address),
        py_bool(location.has_solarium),
        py_datetime(location.created_at)
    )
}

/// Python's `repr` of a `str`: single quotes unless the text holds `'` and no `"`, with `\\`,
/// the quote and control characters escaped.
fn py_str(text: &str) -> String {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::from(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() && u32::from(c) < 0x100 => {
                out.push_str(&format!("\\x{:02x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `repr` of an optional `str`: the text, or `None`.
fn py_opt_str(text: Option<&str>) -> String {
    text.map_or_else(|| "None".to_owned(), py_str)
}

/// Python's `repr` of a `bool`.
fn py_bool(value: bool) -> &'static str {
    if value {
        "True"
    } else {
        "False"
    }
}

/// Python's `repr` of a naive `datetime.datetime`: microseconds left out when 0, and then seconds
/// too when 0.
fn py_datetime(at: NaiveDateTime) -> String {
    let mut fields = vec![
        i64::from(at.year()),
        i64::from(at.month()),
        i64::from(at.day()),
        i64::from(at.hour()),
        i64::from(at.minute()),
        i64::from(at.second()),
        i64::from(at.nanosecond() / 1_000),
    ];
    for _ in 0..2 {
        if fields.last() == Some(&0) {
            fields.pop();
        }
    }
    let fields: Vec<String> = fields.iter().map(i64::to_string).collect();
    format!("datetime.datetime({})", fields.join(", "))
}
