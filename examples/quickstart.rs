//! The SQLAlchemy tutorial's workload end to end: connect, migrate, load the demo rows, print every report.
//!
//! `cargo run --example quickstart` uses `DATABASE_URL` (or the `DB_*` parts) and, with neither
//! set, the embedded SQLite file `userbase.sqlite3`. Set `RUST_LOG=userbase=info` and
//! `DB_ECHO=true` to see every statement.

use std::process::ExitCode;

use userbase::models::User;
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

    // SELECT * FROM users as raw SQL (the columns named, read by position).
    let rows: Vec<String> = repo.users_raw()?.iter().map(python_tuple).collect();
    println!("[{}]", rows.join(", "));

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

/// A user row as the tutorial prints it (a Python tuple).
fn python_tuple(user: &User) -> String {
    let text = |s: &Option<String>| match s {
        Some(s) => format!("{s:?}").replace('"', "'"),
        None => "None".to_owned(),
    };
    let created = user.created_at;
    format!(
        "({}, {}, '{}', '{}', {}, {}, {}, datetime.datetime({}))",
        user.user_id,
        text(&user.username),
        user.full_name,
        user.language,
        if user.active { "True" } else { "False" },
        text(&user.logged_as),
        user.referrer_id
            .map_or_else(|| "None".to_owned(), |id| id.to_string()),
        created.format("%Y, %-m, %-d, %-H, %-M, %-S, %6f")
    )
}
