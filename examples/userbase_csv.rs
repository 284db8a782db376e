//! Moves users, locations and links in and out of the database as CSV files, with the library's
//! validation, referral-cycle checks and typed errors.
//!
//! ```text
//! cargo run --release --example userbase_csv -- import users|locations|links FILE.csv [--per-batch] [--batch-size N]
//! cargo run --release --example userbase_csv -- export users|locations|links FILE.csv
//! ```
//!
//! The database is `DATABASE_URL` (or the `DB_*` parts; with neither, the SQLite file
//! `userbase.sqlite3`), migrated first. The file format is `userbase::bulk`'s: what `export`
//! writes, `import` reads back exactly. An import is one transaction unless `--per-batch` is
//! given: a malformed line (reported with its line and column) or a refused row leaves nothing,
//! or with `--per-batch` the batches before it (their row count is reported).
//!
//! Progress goes to stderr: a bar with rate and ETA on a terminal, else a plain line every two
//! seconds.

use std::fs::File;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use userbase::bulk::{self, Commit, ExportOptions, ImportOptions, Progress};
use userbase::{Database, Repo, Settings};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "usage: userbase_csv import users|locations|links FILE.csv [--per-batch] [--batch-size N]\n       \
                     userbase_csv export users|locations|links FILE.csv";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The error, then each cause in its chain.
            eprint!("userbase_csv: {error}");
            let mut cause = error.source();
            while let Some(inner) = cause {
                eprint!(": {inner}");
                cause = inner.source();
            }
            eprintln!();
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Table {
    Users,
    Locations,
    Links,
}

impl Table {
    fn parse(name: &str) -> Result<Self, BoxError> {
        match name {
            "users" => Ok(Table::Users),
            "locations" => Ok(Table::Locations),
            "links" => Ok(Table::Links),
            other => Err(format!("unknown table {other:?}\n{USAGE}").into()),
        }
    }

    fn sql_name(self) -> &'static str {
        match self {
            Table::Users => "users",
            Table::Locations => "locations",
            Table::Links => "userlocations",
        }
    }
}

fn run(args: &[String]) -> Result<(), BoxError> {
    let (command, table, path, flags) = match args {
        [command, table, path, flags @ ..] => (command.as_str(), Table::parse(table)?, path, flags),
        _ => return Err(USAGE.into()),
    };
    let db = Database::new(Settings::from_env()?)?;
    db.run_pending_migrations()?;
    let mut session = db.session()?;
    let mut repo = session.repo();
    match command {
        "import" => import(&mut repo, table, path, flags),
        "export" if flags.is_empty() => export(&mut repo, table, path),
        _ => Err(USAGE.into()),
    }
}

fn import(repo: &mut Repo<'_>, table: Table, path: &str, flags: &[String]) -> Result<(), BoxError> {
    let mut options = ImportOptions::default();
    let mut flags = flags.iter();
    while let Some(flag) = flags.next() {
        options = match flag.as_str() {
            "--per-batch" => options.commit(Commit::PerBatch),
            "--batch-size" => {
                let rows = flags.next().ok_or("--batch-size needs a number")?;
                options.batch_size(
                    rows.parse()
                        .map_err(|_| format!("bad batch size {rows:?}"))?,
                )
            }
            other => return Err(format!("unknown option {other:?}\n{USAGE}").into()),
        };
    }
    let file = File::open(path).map_err(|e| format!("cannot open {path}: {e}"))?;
    let size = file.metadata().map(|m| m.len()).ok();
    let mut meter = Meter::new("read", size);
    let options = options.progress(|p| meter.update(p));
    let imported = match table {
        Table::Users => {
            let rows = bulk::csv::users(file);
            let options = options.bytes(rows.byte_count());
            repo.import_users_from(rows, options)
        }
        Table::Locations => {
            let rows = bulk::csv::locations(file);
            let options = options.bytes(rows.byte_count());
            repo.import_locations_from(rows, options)
        }
        Table::Links => {
            let rows = bulk::csv::links(file);
            let options = options.bytes(rows.byte_count());
            repo.import_links_from(rows, options)
        }
    }
    .map_err(|e| format!("import of {path} failed: {e}: {}", cause(&e)))?;
    eprintln!(
        "imported {} rows from {path} into {} ({} new, {} batches)",
        imported.rows,
        table.sql_name(),
        imported.inserted,
        imported.batches
    );
    Ok(())
}

/// The cause of an import error, with its own causes.
fn cause(error: &dyn std::error::Error) -> String {
    let mut text = Vec::new();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push(inner.to_string());
        cause = inner.source();
    }
    text.join(": ")
}

fn export(repo: &mut Repo<'_>, table: Table, path: &str) -> Result<(), BoxError> {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    // The row count, for the ETA.
    let rows = repo
        .load_sql::<Count>(&format!("SELECT count(*) AS n FROM {}", table.sql_name()))?
        .first()
        .map(|c| u64::try_from(c.n).unwrap_or(0));
    let file = File::create(path).map_err(|e| format!("cannot create {path}: {e}"))?;
    let mut meter = Meter::new("written", None).with_rows(rows);
    let options = ExportOptions::default().progress(|p| meter.update(p));
    let exported = match table {
        Table::Users => repo.export_users(file, options),
        Table::Locations => repo.export_locations(file, options),
        Table::Links => repo.export_links(file, options),
    }?;
    eprintln!(
        "exported {} rows ({} bytes) of {} to {path}",
        exported.rows,
        exported.bytes,
        table.sql_name()
    );
    Ok(())
}

/// Shows progress: an indicatif bar on a terminal, plain lines otherwise.
struct Meter {
    bar: Option<ProgressBar>,
    verb: &'static str,
    total_bytes: Option<u64>,
    total_rows: Option<u64>,
    last_line: Option<Instant>,
}

/// Time between two plain progress lines.
const LINE_EVERY: Duration = Duration::from_secs(2);

impl Meter {
    /// Bytes are the measure when the total is known (imports of a file), else rows.
    fn new(verb: &'static str, total_bytes: Option<u64>) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match total_bytes {
                Some(total) => ProgressBar::new(total).with_style(style(
                    "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg} ETA {eta}",
                )),
                None => ProgressBar::new_spinner()
                    .with_style(style("{spinner} {pos} rows {per_sec} {msg}")),
            };
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Meter {
            bar,
            verb,
            total_bytes,
            total_rows: None,
            last_line: None,
        }
    }

    /// Rows are the measure, out of `total`.
    fn with_rows(mut self, total: Option<u64>) -> Self {
        self.total_rows = total;
        if let (Some(bar), Some(total)) = (&self.bar, total) {
            bar.set_length(total);
            bar.set_style(style("{bar:40} {pos}/{len} rows {per_sec} {msg} ETA {eta}"));
        }
        self
    }

    fn update(&mut self, p: &Progress) {
        let rate = p.rows as f64 / p.elapsed.as_secs_f64().max(1e-9);
        if let Some(bar) = &self.bar {
            match (self.total_bytes, p.bytes) {
                (Some(_), Some(bytes)) => {
                    bar.set_position(bytes);
                    bar.set_message(format!("{} rows ({rate:.0} rows/s)", p.rows));
                }
                _ => {
                    bar.set_position(p.rows);
                    if let Some(bytes) = p.bytes {
                        bar.set_message(format!("{bytes} bytes"));
                    }
                }
            }
            if p.finished {
                bar.finish_and_clear();
            }
            return;
        }
        let now = Instant::now();
        if !p.finished && self.last_line.is_some_and(|last| now - last < LINE_EVERY) {
            return;
        }
        self.last_line = Some(now);
        let share = match (self.total_bytes, p.bytes, self.total_rows) {
            (Some(total), Some(bytes), _) if total > 0 => {
                format!(" ({:.1} %)", bytes as f64 * 100.0 / total as f64)
            }
            (_, _, Some(total)) if total > 0 => {
                format!(" ({:.1} %)", p.rows as f64 * 100.0 / total as f64)
            }
            _ => String::new(),
        };
        let bytes = p
            .bytes
            .map(|b| format!(", {b} bytes {}", self.verb))
            .unwrap_or_default();
        eprintln!(
            "{} rows{bytes}{share} in {:.1} s, {rate:.0} rows/s{}",
            p.rows,
            p.elapsed.as_secs_f64(),
            if p.finished { ", done" } else { "" }
        );
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}
