//! The one table of settings: every knob's field, environment variable, default, bounds and
//! unit, written once.
//!
//! Everything else is derived from it: [`PoolConfig::validate`](super::PoolConfig::validate) and
//! [`ReplicaConfig::validate`](super::ReplicaConfig::validate), the reading of the environment
//! (`env.rs`), every error message about a knob (which names the field or the variable and the
//! allowed range); tests hold the README's settings table (the crate documentation's) and the
//! defaults in `.env.example` to it.

use std::fmt;
use std::time::Duration;

use crate::error::{Error, Result};

/// Default `pool_size`: connections kept open (SQLAlchemy's default).
pub const DEFAULT_POOL_SIZE: u32 = 5;
/// Default `max_overflow`: connections allowed above `pool_size` (SQLAlchemy's default).
pub const DEFAULT_MAX_OVERFLOW: u32 = 10;
/// Default `pool_timeout`: how long a checkout waits (SQLAlchemy's default, 30 s).
pub const DEFAULT_POOL_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `pre_ping`: test connections before handing them out.
pub const DEFAULT_PRE_PING: bool = true;
/// Default `pre_ping_bypass`: a connection used this recently is handed out without a ping
/// (HikariCP's "alive bypass window").
pub const DEFAULT_PRE_PING_BYPASS: Duration = Duration::from_millis(500);
/// Default `overflow_idle_timeout`: an overflow connection idle this long is closed.
///
/// 1 s: ten times the shortest value that showed no reconnects under a steady load just above
/// `pool_size` (16 threads on 5 + 10, see BENCHMARKS.md).
pub const DEFAULT_OVERFLOW_IDLE_TIMEOUT: Duration = Duration::from_secs(1);
/// The most connections one pool may allow: `pool_size + max_overflow` is at most 10 000.
///
/// r2d2 allocates room for `max_size` connections up front, so an absurd size aborts the
/// process (4 294 967 295 asks for about a terabyte); 10 000 is far above what one PostgreSQL
/// server accepts (`max_connections` defaults to 100).
pub const MAX_CONNECTIONS: u32 = 10_000;
/// The longest any duration knob may be: one day.
///
/// Every duration is added to an `Instant` somewhere (a checkout deadline, an idle or leak
/// deadline); bounding them keeps that addition from overflowing, and a wait longer than a day
/// is a configuration mistake rather than a wish.
pub const MAX_DURATION: Duration = DAY;

/// One day.
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// The `busy_timeout` of SQLite connections when
/// [`PoolConfig::lock_timeout`](super::PoolConfig::lock_timeout) is unset: 5 s.
pub const DEFAULT_SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Default [`ReplicaConfig::wait`](super::ReplicaConfig::wait): 50 ms.
pub const DEFAULT_REPLICA_WAIT: Duration = Duration::from_millis(50);
/// Default [`ReplicaConfig::max_lag`](super::ReplicaConfig::max_lag): 5 s.
pub const DEFAULT_MAX_REPLICA_LAG: Duration = Duration::from_secs(5);
/// Default [`ReplicaConfig::check_interval`](super::ReplicaConfig::check_interval): 500 ms.
pub const DEFAULT_REPLICA_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// Shortest [`ReplicaConfig::check_interval`](super::ReplicaConfig::check_interval): 10 ms.
pub const MIN_REPLICA_CHECK_INTERVAL: Duration = Duration::from_millis(10);

/// The fewest connections a pool may allow: `pool_size + max_overflow` is at least 1.
const MIN_CONNECTIONS: u32 = 1;

/// Defines every knob as a constant and `KNOBS`, the list of them all that the tests walk,
/// from one list: a knob cannot be added without the tests seeing it.
macro_rules! knobs {
    ($($name:ident = $knob:expr;)*) => {
        $(pub(crate) const $name: Knob = $knob;)*

        /// The settings table: every knob (the tests go through it).
        #[cfg(test)]
        const KNOBS: &[&Knob] = &[$(&$name),*];
    };
}

knobs! {
    POOL_SIZE = Knob::count("PoolConfig::pool_size", "DB_POOL_SIZE", DEFAULT_POOL_SIZE);
    MAX_OVERFLOW = Knob::count(
        "PoolConfig::max_overflow",
        "DB_MAX_OVERFLOW",
        DEFAULT_MAX_OVERFLOW,
    );
    POOL_TIMEOUT = Knob::duration(
        "PoolConfig::pool_timeout",
        "DB_POOL_TIMEOUT_SECS",
        Unit::Seconds,
        Some(DEFAULT_POOL_TIMEOUT),
    )
    .above_min();
    POOL_RECYCLE = Knob::duration(
        "PoolConfig::pool_recycle",
        "DB_POOL_RECYCLE_SECS",
        Unit::Seconds,
        None,
    )
    .above_min()
    .unset_means("never", Some("-1"));
    PRE_PING = Knob::flag("PoolConfig::pre_ping", "DB_PRE_PING", DEFAULT_PRE_PING);
    PRE_PING_BYPASS = Knob::duration(
        "PoolConfig::pre_ping_bypass",
        "DB_PRE_PING_BYPASS_MS",
        Unit::Millis,
        Some(DEFAULT_PRE_PING_BYPASS),
    );
    OVERFLOW_IDLE_TIMEOUT = Knob::duration(
        "PoolConfig::overflow_idle_timeout",
        "DB_OVERFLOW_IDLE_TIMEOUT_MS",
        Unit::Millis,
        Some(DEFAULT_OVERFLOW_IDLE_TIMEOUT),
    );
    LEAK_DETECTION = Knob::duration(
        "PoolConfig::leak_detection_threshold",
        "DB_LEAK_DETECTION_MS",
        Unit::Millis,
        None,
    )
    .above_min()
    .unset_means("off", Some("0"));
    STATEMENT_CACHE = Knob::flag("PoolConfig::statement_cache", "DB_STATEMENT_CACHE", true);
    STATEMENT_TIMEOUT = Knob::duration(
        "PoolConfig::statement_timeout",
        "DB_STATEMENT_TIMEOUT_MS",
        Unit::Millis,
        None,
    )
    .zero_means("no limit")
    .unset_means(SERVER_SETTING, None)
    .whole_millis();
    LOCK_TIMEOUT = Knob::duration(
        "PoolConfig::lock_timeout",
        "DB_LOCK_TIMEOUT_MS",
        Unit::Millis,
        None,
    )
    .unset_means(SERVER_SETTING, None)
    .whole_millis();
    IDLE_IN_TRANSACTION_TIMEOUT = Knob::duration(
        "PoolConfig::idle_in_transaction_timeout",
        "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
        Unit::Millis,
        None,
    )
    .zero_means("no limit")
    .unset_means(SERVER_SETTING, None)
    .whole_millis();
    ECHO = Knob::flag("PoolConfig::echo", "DB_ECHO", false);
    HIDE_PARAMETERS = Knob::flag("PoolConfig::hide_parameters", "DB_HIDE_PARAMETERS", false);
    ECHO_POOL = Knob::flag("PoolConfig::echo_pool", "DB_ECHO_POOL", false);
    OPERATION_METRICS = Knob::flag(
        "PoolConfig::operation_metrics",
        "DB_OPERATION_METRICS",
        true,
    );
    REPLICA_WAIT = Knob::duration(
        "ReplicaConfig::wait",
        "DB_REPLICA_WAIT_MS",
        Unit::Millis,
        Some(DEFAULT_REPLICA_WAIT),
    );
    MAX_REPLICA_LAG = Knob::duration(
        "ReplicaConfig::max_lag",
        "DB_MAX_REPLICA_LAG_MS",
        Unit::Millis,
        Some(DEFAULT_MAX_REPLICA_LAG),
    )
    .above_min();
    REPLICA_CHECK = Knob::duration(
        "ReplicaConfig::check_interval",
        "DB_REPLICA_CHECK_MS",
        Unit::Millis,
        Some(DEFAULT_REPLICA_CHECK_INTERVAL),
    )
    .at_least(MIN_REPLICA_CHECK_INTERVAL);
}

/// The two knobs whose sum is the pool's size, from [`MIN_CONNECTIONS`] to [`MAX_CONNECTIONS`].
const CONNECTIONS: [&Knob; 2] = [&POOL_SIZE, &MAX_OVERFLOW];

/// What an unset deadline means: the server keeps its own setting.
const SERVER_SETTING: &str = "the server's setting";

/// The forms a flag's variable accepts: `(true, false)` pairs, case-insensitive.
const FLAG_FORMS: [(&str, &str); 4] = [("true", "false"), ("1", "0"), ("yes", "no"), ("on", "off")];

/// Where a knob's value came from, for the name an error gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// Set in code: errors name the field (`PoolConfig::pool_size`).
    Code,
    /// Read from the environment: errors name the variable (`DB_POOL_SIZE`).
    Env,
}

/// What a knob's number counts, and how its environment variable writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    /// Connections: a whole number.
    Count,
    /// A duration, in seconds with fractions allowed.
    Seconds,
    /// A duration, in whole milliseconds.
    Millis,
    /// A boolean: 1 for true, 0 for false (written as in [`FLAG_FORMS`]).
    Flag,
}

impl Unit {
    /// How many of the unit's smallest measure (a connection, a nanosecond) one unit is.
    const fn scale(self) -> u128 {
        match self {
            Unit::Count | Unit::Flag => 1,
            Unit::Seconds => 1_000_000_000,
            Unit::Millis => 1_000_000,
        }
    }

    /// `d` in this unit, rounded down (every constant of the table is a whole number of its
    /// knob's unit; a test holds them to it).
    const fn of(self, d: Duration) -> u64 {
        let whole = d.as_nanos() / self.scale();
        if whole > u64::MAX as u128 {
            u64::MAX
        } else {
            whole as u64
        }
    }

    /// `n` of this unit as a duration (a count or a flag is not one: zero).
    fn duration(self, n: u64) -> Duration {
        match self {
            Unit::Seconds => Duration::from_secs(n),
            Unit::Millis => Duration::from_millis(n),
            Unit::Count | Unit::Flag => Duration::ZERO,
        }
    }
}

/// What leaving a knob unset (an `Option` field at `None`) means.
#[derive(Debug, Clone, Copy)]
struct Unset {
    /// In words: "never", "off", "the server's setting".
    means: &'static str,
    /// The value that stands for it in the environment besides leaving the variable unset
    /// (`-1`, `0`), if any.
    spelled: Option<&'static str>,
}

/// One setting: a row of the settings table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Knob {
    /// The field, as an error about a value set in code names it (`PoolConfig::pool_size`).
    field: &'static str,
    /// The environment variable (`DB_POOL_SIZE`).
    pub(crate) env: &'static str,
    unit: Unit,
    /// The default, in `unit`; `None` for an `Option` field unset by default.
    default: Option<u64>,
    /// The smallest value, in `unit`; allowed itself unless `above_min`.
    min: u64,
    above_min: bool,
    /// The largest value, in `unit`.
    max: u64,
    /// What 0 means, where it means more than none of the unit.
    zero: Option<&'static str>,
    /// For an `Option` field: what unset means.
    unset: Option<Unset>,
    /// Set in code, the value must be a whole number of milliseconds (the server takes it in
    /// milliseconds).
    whole_millis: bool,
}

impl Knob {
    /// A number of connections from 0 to [`MAX_CONNECTIONS`], part of [`CONNECTIONS`].
    const fn count(field: &'static str, env: &'static str, default: u32) -> Knob {
        Knob {
            field,
            env,
            unit: Unit::Count,
            default: Some(default as u64),
            min: 0,
            above_min: false,
            max: MAX_CONNECTIONS as u64,
            zero: None,
            unset: None,
            whole_millis: false,
        }
    }

    /// A boolean.
    const fn flag(field: &'static str, env: &'static str, default: bool) -> Knob {
        Knob {
            field,
            env,
            unit: Unit::Flag,
            default: Some(default as u64),
            min: 0,
            above_min: false,
            max: 1,
            zero: None,
            unset: None,
            whole_millis: false,
        }
    }

    /// A duration from 0 to [`MAX_DURATION`]; `default: None` for an `Option` field.
    const fn duration(
        field: &'static str,
        env: &'static str,
        unit: Unit,
        default: Option<Duration>,
    ) -> Knob {
        Knob {
            field,
            env,
            unit,
            default: match default {
                Some(d) => Some(unit.of(d)),
                None => None,
            },
            min: 0,
            above_min: false,
            max: unit.of(MAX_DURATION),
            zero: None,
            unset: None,
            whole_millis: false,
        }
    }

    /// This knob with its minimum itself refused: "above 0".
    const fn above_min(self) -> Knob {
        Knob {
            above_min: true,
            ..self
        }
    }

    /// This knob from `min` on.
    const fn at_least(self, min: Duration) -> Knob {
        Knob {
            min: self.unit.of(min),
            ..self
        }
    }

    /// This knob with 0 meaning `means`.
    const fn zero_means(self, means: &'static str) -> Knob {
        Knob {
            zero: Some(means),
            ..self
        }
    }

    /// This knob (an `Option` field) with `None` meaning `means`, written `spelled` in the
    /// environment when it has a spelling besides an unset variable.
    const fn unset_means(self, means: &'static str, spelled: Option<&'static str>) -> Knob {
        Knob {
            unset: Some(Unset { means, spelled }),
            ..self
        }
    }

    /// This knob with values set in code held to whole milliseconds.
    const fn whole_millis(self) -> Knob {
        Knob {
            whole_millis: true,
            ..self
        }
    }

    /// A flag's default.
    pub(crate) const fn default_flag(&self) -> bool {
        matches!(self.default, Some(1))
    }

    /// A duration knob's default (`None`: unset).
    pub(crate) fn default_duration(&self) -> Option<Duration> {
        self.default.map(|n| self.unit.duration(n))
    }

    /// Whether `measure` (in the unit's smallest measure: connections, nanoseconds) is within
    /// the bounds.
    fn allows(&self, measure: u128) -> bool {
        let scale = self.unit.scale();
        let (min, max) = (u128::from(self.min) * scale, u128::from(self.max) * scale);
        (measure > min || (!self.above_min && measure == min)) && measure <= max
    }

    /// Checks a number of connections.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the field or the variable and the range.
    pub(crate) fn check_count(&self, value: u32, source: Source) -> Result<()> {
        if self.allows(u128::from(value)) {
            Ok(())
        } else {
            Err(self.error(source, value))
        }
    }

    /// Checks a duration.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the field or the variable and the range.
    pub(crate) fn check_duration(&self, value: Duration, source: Source) -> Result<()> {
        self.check_duration_as(self.name(source), value, source)
    }

    /// Checks an `Option` duration: `None` (unset) is always allowed.
    ///
    /// # Errors
    ///
    /// As [`check_duration`](Knob::check_duration).
    pub(crate) fn check_optional(&self, value: Option<Duration>, source: Source) -> Result<()> {
        value.map_or(Ok(()), |d| self.check_duration(d, source))
    }

    /// Checks a duration set in code that overrides the knob for one call
    /// (`Repo::with_statement_timeout`): the knob's bounds, with no unset value.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming `name` and the range.
    pub(crate) fn check_override(&self, name: &str, value: Duration) -> Result<()> {
        Knob {
            unset: None,
            ..*self
        }
        .check_duration_as(name, value, Source::Code)
    }

    /// Checks a duration; its errors name `name`.
    fn check_duration_as(&self, name: &str, value: Duration, source: Source) -> Result<()> {
        let whole = !self.whole_millis || value.subsec_nanos().is_multiple_of(1_000_000);
        if whole && self.allows(value.as_nanos()) {
            return Ok(());
        }
        let shown = match (source, self.unit) {
            (Source::Code, _) => format!("{value:?}"),
            (Source::Env, Unit::Seconds) => value.as_secs_f64().to_string(),
            (Source::Env, _) => value.as_millis().to_string(),
        };
        Err(self.error_as(name, source, shown))
    }

    /// The name an error gives the knob: the field or the variable.
    fn name(&self, source: Source) -> &'static str {
        match source {
            Source::Code => self.field,
            Source::Env => self.env,
        }
    }

    /// The error for `shown`, a value of this knob that is not allowed.
    pub(crate) fn error(&self, source: Source, shown: impl fmt::Display) -> Error {
        self.error_as(self.name(source), source, shown)
    }

    fn error_as(&self, name: &str, source: Source, shown: impl fmt::Display) -> Error {
        let message = match (source, self.unit) {
            (Source::Code, _) => format!("{shown} is not allowed; allowed: {}", self.code_range()),
            (Source::Env, Unit::Flag) => format!("`{shown}` is not a boolean ({})", flag_forms()),
            (Source::Env, _) => format!(
                "`{shown}` is not allowed; allowed: {}",
                self.env_range(Style::Message)
            ),
        };
        Error::config(name, message)
    }

    /// The allowed values, in words, for a value set in code.
    fn code_range(&self) -> String {
        match self.unit {
            Unit::Flag => "true or false".to_owned(),
            Unit::Count => format!(
                "{} to {}, with {} from {MIN_CONNECTIONS} to {MAX_CONNECTIONS}",
                self.min,
                self.max,
                sum(|knob| knob.field.rsplit("::").next().unwrap_or(knob.field))
            ),
            Unit::Seconds | Unit::Millis => {
                let min = human(self.unit.duration(self.min));
                let max = human(self.unit.duration(self.max));
                let mut range = String::new();
                if let Some(unset) = self.unset {
                    range.push_str(&format!("None ({}) or ", unset.means));
                }
                if self.above_min {
                    range.push_str(&format!("above {min} and at most {max}"));
                } else {
                    range.push_str(&format!("{min}{} to {max}", zero_note(self.min, self.zero)));
                }
                if self.whole_millis {
                    range.push_str(", in whole milliseconds");
                }
                range
            }
        }
    }

    /// The allowed values of the environment variable, in words.
    fn env_range(&self, style: Style) -> String {
        let n = |value: u64| style.number(value);
        match self.unit {
            Unit::Flag => flag_forms(),
            Unit::Count => format!(
                "a whole number from {} to {}, with {} from {} to {}",
                n(self.min),
                n(self.max),
                style.code(&sum(|knob| knob.env)),
                n(u64::from(MIN_CONNECTIONS)),
                n(u64::from(MAX_CONNECTIONS)),
            ),
            Unit::Seconds | Unit::Millis => {
                let (words, fractions) = match self.unit {
                    Unit::Seconds => ("seconds", " (fractions allowed)"),
                    _ => ("whole milliseconds", ""),
                };
                let spelled = self.unset.and_then(|u| u.spelled.map(|s| (s, u.means)));
                let max = n(self.max);
                match spelled {
                    // The unset spelling is the refused minimum: one range, from it.
                    Some((spelling, means))
                        if self.above_min && spelling == self.min.to_string() =>
                    {
                        format!("{words} from {} ({means}) to {max}{fractions}", n(self.min))
                    }
                    _ => {
                        let prefix = spelled.map_or(String::new(), |(spelling, means)| {
                            format!("{} ({means}) or ", style.code(spelling))
                        });
                        let range = match (self.above_min, self.unit) {
                            (false, _) => format!(
                                "from {}{} to {max}",
                                n(self.min),
                                zero_note(self.min, self.zero)
                            ),
                            // Whole milliseconds above the minimum start one above it.
                            (true, Unit::Millis) => {
                                format!("from {} to {max}", n(self.min.saturating_add(1)))
                            }
                            (true, _) => format!("above {} and at most {max}", n(self.min)),
                        };
                        format!("{prefix}{words} {range}{fractions}")
                    }
                }
            }
        }
    }

    /// The default as the environment writes it, for the settings tables.
    #[cfg(test)]
    fn table_default(&self) -> String {
        match (self.default, self.unset) {
            (Some(value), _) if self.unit == Unit::Flag => format!("`{}`", value == 1),
            (Some(value), _) => format!("`{value}`"),
            (
                None,
                Some(Unset {
                    means,
                    spelled: Some(spelling),
                }),
            ) => format!("`{spelling}`: {means}"),
            (
                None,
                Some(Unset {
                    means,
                    spelled: None,
                }),
            ) => format!("unset: {means}"),
            (None, None) => "unset".to_owned(),
        }
    }

    /// The value of `self.env` read from the environment, parsed as a number of connections.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the variable and the range when it is not a whole number that
    /// fits (the range itself is checked with the whole pool, by [`check_count`](Knob::check_count)).
    pub(crate) fn read_count(&self, var: &impl Fn(&str) -> Option<String>) -> Result<Option<u32>> {
        self.read(var, |raw| raw.parse().ok())
    }

    /// The value of `self.env` read as a boolean.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the variable and the accepted forms.
    pub(crate) fn read_flag(&self, var: &impl Fn(&str) -> Option<String>) -> Result<Option<bool>> {
        self.read(var, |raw| {
            let raw = raw.to_ascii_lowercase();
            FLAG_FORMS.iter().find_map(|(yes, no)| {
                if raw == *yes {
                    Some(true)
                } else if raw == *no {
                    Some(false)
                } else {
                    None
                }
            })
        })
    }

    /// The value of `self.env` read as a duration in the knob's unit, from 0 to the maximum
    /// (the minimum is checked with the whole config, as for a value set in code); `None` when
    /// the variable is unset.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the variable and the range.
    pub(crate) fn read_duration(
        &self,
        var: &impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Duration>> {
        Ok(self.read_optional(var)?.flatten())
    }

    /// As [`read_duration`](Knob::read_duration), for an `Option` field: `Some(None)` when the
    /// variable spells "unset" (`DB_POOL_RECYCLE_SECS=-1`).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the variable and the range.
    pub(crate) fn read_optional(
        &self,
        var: &impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Option<Duration>>> {
        let spelling = self.unset.and_then(|u| u.spelled);
        let max = self.unit.duration(self.max);
        self.read(var, |raw| match self.unit {
            Unit::Seconds => {
                let secs = raw.parse::<f64>().ok()?;
                if spelling.and_then(|s| s.parse::<f64>().ok()) == Some(secs) {
                    return Some(None);
                }
                if !(0.0..=max.as_secs_f64()).contains(&secs) {
                    return None;
                }
                Duration::try_from_secs_f64(secs).ok().map(Some)
            }
            _ => {
                let millis = raw.parse::<u64>().ok()?;
                if spelling.and_then(|s| s.parse::<u64>().ok()) == Some(millis) {
                    return Some(None);
                }
                let d = Duration::from_millis(millis);
                (d <= max).then_some(Some(d))
            }
        })
    }

    /// The value of `self.env` read by `parse`; what `parse` refuses (`None`) is an error
    /// stating the range.
    fn read<T>(
        &self,
        var: &impl Fn(&str) -> Option<String>,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>> {
        var(self.env)
            .map(|raw| {
                let raw = raw.trim();
                parse(raw).ok_or_else(|| self.error(Source::Env, raw))
            })
            .transpose()
    }
}

/// Checks the pool's size knobs and their sum, which must be from [`MIN_CONNECTIONS`] to
/// [`MAX_CONNECTIONS`] (a sum out of range is `max_overflow`'s error).
///
/// # Errors
///
/// [`Error::Config`] naming the field or the variable and the range.
pub(crate) fn check_connections(pool_size: u32, max_overflow: u32, source: Source) -> Result<()> {
    POOL_SIZE.check_count(pool_size, source)?;
    MAX_OVERFLOW.check_count(max_overflow, source)?;
    let total = u64::from(pool_size) + u64::from(max_overflow);
    if (u64::from(MIN_CONNECTIONS)..=u64::from(MAX_CONNECTIONS)).contains(&total) {
        Ok(())
    } else {
        Err(MAX_OVERFLOW.error(source, max_overflow))
    }
}

/// How the environment's ranges are written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    /// In an error message: plain.
    Message,
    /// In a Markdown table: numbers grouped by thousands, names and spellings as code.
    #[cfg(test)]
    Table,
}

impl Style {
    fn number(self, value: u64) -> String {
        let digits = value.to_string();
        if self == Style::Message || digits.len() < 5 {
            return digits;
        }
        // Groups of three from the right, separated by a space: 86 400 000.
        let mut grouped = String::new();
        for (i, digit) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                grouped.push(' ');
            }
            grouped.push(digit);
        }
        grouped
    }

    fn code(self, text: &str) -> String {
        match self {
            Style::Message => text.to_owned(),
            #[cfg(test)]
            Style::Table => format!("`{text}`"),
        }
    }
}

/// The sum of the pool's size knobs, each named by `name`: `pool_size + max_overflow`.
fn sum(name: impl Fn(&Knob) -> &'static str) -> String {
    CONNECTIONS.map(name).join(" + ")
}

/// " (no limit)" after a minimum of 0 that means something.
fn zero_note(min: u64, zero: Option<&str>) -> String {
    match zero {
        Some(means) if min == 0 => format!(" ({means})"),
        _ => String::new(),
    }
}

/// The accepted forms of a boolean: `true/false, 1/0, yes/no, on/off`.
fn flag_forms() -> String {
    FLAG_FORMS
        .iter()
        .map(|(yes, no)| format!("{yes}/{no}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A bound in words: `0`, `10 ms`, `30 s`, `1 day`.
fn human(d: Duration) -> String {
    let day = DAY.as_secs();
    match (d.as_secs(), d.subsec_nanos()) {
        (0, 0) => "0".to_owned(),
        (secs, 0) if secs.is_multiple_of(day) => {
            let days = secs / day;
            format!("{days} day{}", if days == 1 { "" } else { "s" })
        }
        (secs, 0) => format!("{secs} s"),
        (_, nanos) if nanos.is_multiple_of(1_000_000) => format!("{} ms", d.as_millis()),
        _ => format!("{d:?}"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::{PoolConfig, ReplicaConfig, Settings};

    /// The (default, allowed) cells of the settings-table rows in `text`, by variable: rows of
    /// a Markdown table whose lines start with `prefix`, `| variable | meaning | default |
    /// allowed |`. The meaning is free text and not compared.
    fn knob_rows(text: &str, prefix: &str) -> HashMap<String, Vec<(String, String)>> {
        let mut rows: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for line in text.lines().filter_map(|line| line.strip_prefix(prefix)) {
            let cells: Vec<&str> = line.trim().split('|').map(str::trim).collect();
            let Some(variable) = cells
                .get(1)
                .and_then(|c| c.strip_prefix('`')?.strip_suffix('`'))
            else {
                continue;
            };
            if cells.len() == 6 || KNOBS.iter().any(|knob| knob.env == variable) {
                assert_eq!(cells.len(), 6, "a row of four cells: {line}");
                rows.entry(variable.to_owned())
                    .or_default()
                    .push((cells[3].to_owned(), cells[4].to_owned()));
            }
        }
        rows
    }

    /// Every knob has one row in `text`'s table, whose default and allowed range are the
    /// table's: the default cell may go on after `; ` with a note. The settings that are not
    /// knobs show their defaults' constants.
    fn assert_table_matches(name: &str, text: &str, prefix: &str) {
        let rows = knob_rows(text, prefix);
        let synchronous = crate::config::SqliteSynchronous::default().as_sql();
        for (variable, default) in [
            ("DB_HOST", crate::config::DEFAULT_HOST.to_owned()),
            ("DB_PORT", crate::config::DEFAULT_PORT.to_string()),
            ("DB_USER", crate::config::DEFAULT_USER.to_owned()),
            ("DB_SQLITE_SYNCHRONOUS", synchronous.to_ascii_lowercase()),
        ] {
            let found = rows.get(variable).map(Vec::as_slice).unwrap_or_default();
            assert_eq!(found.len(), 1, "{name}: one row for `{variable}`");
            assert_eq!(found[0].0, format!("`{default}`"), "{name}, `{variable}`");
        }
        let names = crate::config::SqliteSynchronous::ALL
            .map(|setting| format!("`{}`", setting.as_sql().to_ascii_lowercase()));
        assert_eq!(
            rows["DB_SQLITE_SYNCHRONOUS"][0].1,
            names.join(", "),
            "{name}"
        );
        // SQLite's own lock wait, the note on the lock timeout's default.
        let busy = DEFAULT_SQLITE_BUSY_TIMEOUT.as_millis();
        assert_eq!(
            rows[LOCK_TIMEOUT.env][0].0,
            format!("{}; SQLite {busy}", LOCK_TIMEOUT.table_default()),
            "{name}"
        );
        for knob in KNOBS {
            let found = rows.get(knob.env).map(Vec::as_slice).unwrap_or_default();
            assert_eq!(found.len(), 1, "{name}: one row for `{}`", knob.env);
            let (default, allowed) = &found[0];
            let expected = knob.table_default();
            assert!(
                *default == expected || default.starts_with(&format!("{expected}; ")),
                "{name}, `{}`: default `{default}`, the table says `{expected}`",
                knob.env
            );
            assert_eq!(
                *allowed,
                knob.env_range(Style::Table),
                "{name}, `{}`: allowed",
                knob.env
            );
        }
    }

    #[test]
    fn the_readme_settings_table_matches_the_table() {
        assert_table_matches("README.md", include_str!("../../README.md"), "");
    }

    /// `.env.example` shows every knob (`#DB_POOL_SIZE=5 # …; default 5`) with the table's
    /// default.
    #[test]
    fn the_env_example_names_every_knob_with_its_default() {
        let example = include_str!("../../.env.example");
        for knob in KNOBS {
            let lines: Vec<&str> = example
                .lines()
                .filter(|line| line.starts_with(&format!("#{}=", knob.env)))
                .collect();
            assert_eq!(lines.len(), 1, ".env.example: one line for {}", knob.env);
            let default = match (knob.default, knob.unset) {
                (Some(value), _) if knob.unit == Unit::Flag => (value == 1).to_string(),
                (Some(value), _) => value.to_string(),
                (
                    None,
                    Some(Unset {
                        spelled: Some(spelling),
                        ..
                    }),
                ) => spelling.to_owned(),
                (None, _) => "unset".to_owned(),
            };
            let comment = lines[0].split_once(" # ").map_or("", |(_, c)| c);
            let stated = comment
                .split("default ")
                .nth(1)
                .and_then(|rest| rest.split([' ', ';', ',']).next());
            assert_eq!(stated, Some(default.as_str()), "{}", lines[0]);
        }
    }

    #[test]
    fn the_table_defaults_are_the_configs_defaults() {
        let (pool, replicas) = (PoolConfig::default(), ReplicaConfig::default());
        let durations = [
            (&POOL_TIMEOUT, Some(pool.pool_timeout)),
            (&POOL_RECYCLE, pool.pool_recycle),
            (&PRE_PING_BYPASS, Some(pool.pre_ping_bypass)),
            (&OVERFLOW_IDLE_TIMEOUT, Some(pool.overflow_idle_timeout)),
            (&LEAK_DETECTION, pool.leak_detection_threshold),
            (&STATEMENT_TIMEOUT, pool.statement_timeout),
            (&LOCK_TIMEOUT, pool.lock_timeout),
            (
                &IDLE_IN_TRANSACTION_TIMEOUT,
                pool.idle_in_transaction_timeout,
            ),
            (&REPLICA_WAIT, Some(replicas.wait)),
            (&MAX_REPLICA_LAG, Some(replicas.max_lag)),
            (&REPLICA_CHECK, Some(replicas.check_interval)),
        ];
        for (knob, default) in durations {
            assert_eq!(knob.default_duration(), default, "{}", knob.env);
        }
        let flags = [
            (&PRE_PING, pool.pre_ping),
            (&ECHO, pool.echo),
            (&HIDE_PARAMETERS, pool.hide_parameters),
            (&ECHO_POOL, pool.echo_pool),
            (&OPERATION_METRICS, pool.operation_metrics),
            (&STATEMENT_CACHE, pool.statement_cache),
        ];
        for (knob, default) in flags {
            assert_eq!(knob.default_flag(), default, "{}", knob.env);
        }
        assert_eq!(POOL_SIZE.default, Some(u64::from(pool.pool_size)));
        assert_eq!(MAX_OVERFLOW.default, Some(u64::from(pool.max_overflow)));
        // Every knob is in the table once, and every bound is a whole number of its unit.
        for (i, knob) in KNOBS.iter().enumerate() {
            assert!(KNOBS[..i]
                .iter()
                .all(|k| k.env != knob.env && k.field != knob.field));
        }
        assert_eq!(Unit::Seconds.duration(POOL_TIMEOUT.max), MAX_DURATION);
        assert_eq!(
            Unit::Millis.duration(REPLICA_CHECK.min),
            MIN_REPLICA_CHECK_INTERVAL
        );
    }

    fn from_env(vars: &[(&str, &str)]) -> Result<Settings> {
        Settings::from_lookup(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    /// The error `vars` give: the variable it names and its message.
    fn env_error(vars: &[(&str, &str)]) -> (String, String) {
        match from_env(vars) {
            Err(Error::Config { variable, message }) => (variable.unwrap_or_default(), message),
            other => panic!("{vars:?}: expected a Config error, got {other:?}"),
        }
    }

    /// Each duration knob, from the environment: its limits pass, one unit beyond them is an
    /// error naming the variable and stating the table's range.
    #[test]
    fn every_duration_knob_is_bounded_by_its_row_from_the_environment() {
        for knob in KNOBS
            .iter()
            .filter(|k| matches!(k.unit, Unit::Seconds | Unit::Millis))
        {
            let spelled_unset = knob.unset.and_then(|u| u.spelled);
            let lowest = match (knob.above_min, knob.unit) {
                (false, _) => knob.min.to_string(),
                (true, Unit::Millis) => (knob.min + 1).to_string(),
                (true, _) => format!("{}.001", knob.min),
            };
            for value in [knob.max.to_string(), lowest] {
                from_env(&[(knob.env, &value)])
                    .unwrap_or_else(|e| panic!("{}={value}: {e}", knob.env));
            }
            let mut refused = vec![(knob.max + 1).to_string(), "soon".to_owned()];
            if knob.above_min && spelled_unset != Some(&*knob.min.to_string()) {
                refused.push(knob.min.to_string());
            } else if !knob.above_min && knob.min > 0 {
                refused.push((knob.min - 1).to_string());
            }
            for value in refused {
                let (variable, message) = env_error(&[(knob.env, &value)]);
                assert_eq!(variable, knob.env, "{value}: {message}");
                assert!(
                    message.ends_with(&knob.env_range(Style::Message)),
                    "{}={value}: {message}",
                    knob.env
                );
            }
            if let Some(spelling) = spelled_unset {
                from_env(&[(knob.env, spelling)]).unwrap();
            }
        }
    }

    #[test]
    fn every_flag_reads_every_form_and_refuses_others() {
        for knob in KNOBS.iter().filter(|k| k.unit == Unit::Flag) {
            for (yes, no) in FLAG_FORMS {
                for (form, value) in [(yes, true), (no, false)] {
                    let upper = form.to_ascii_uppercase();
                    for form in [form, upper.as_str()] {
                        let read = knob
                            .read_flag(&|name: &str| (name == knob.env).then(|| form.to_owned()));
                        assert_eq!(read.unwrap(), Some(value), "{}={form}", knob.env);
                    }
                }
            }
            let (variable, message) = env_error(&[(knob.env, "maybe")]);
            assert_eq!(variable, knob.env);
            assert_eq!(
                message,
                "`maybe` is not a boolean (true/false, 1/0, yes/no, on/off)"
            );
        }
    }

    #[test]
    fn ranges_in_words() {
        assert_eq!(
            POOL_SIZE.code_range(),
            "0 to 10000, with pool_size + max_overflow from 1 to 10000"
        );
        assert_eq!(
            MAX_OVERFLOW.env_range(Style::Message),
            "a whole number from 0 to 10000, with DB_POOL_SIZE + DB_MAX_OVERFLOW from 1 to 10000"
        );
        assert_eq!(
            MAX_OVERFLOW.env_range(Style::Table),
            "a whole number from 0 to 10 000, with `DB_POOL_SIZE + DB_MAX_OVERFLOW` from 1 to \
             10 000"
        );
        assert_eq!(POOL_TIMEOUT.code_range(), "above 0 and at most 1 day");
        assert_eq!(
            POOL_RECYCLE.env_range(Style::Message),
            "-1 (never) or seconds above 0 and at most 86400 (fractions allowed)"
        );
        assert_eq!(
            POOL_RECYCLE.code_range(),
            "None (never) or above 0 and at most 1 day"
        );
        assert_eq!(
            LEAK_DETECTION.env_range(Style::Message),
            "whole milliseconds from 0 (off) to 86400000"
        );
        assert_eq!(
            STATEMENT_TIMEOUT.code_range(),
            "None (the server's setting) or 0 (no limit) to 1 day, in whole milliseconds"
        );
        assert_eq!(
            MAX_REPLICA_LAG.env_range(Style::Message),
            "whole milliseconds from 1 to 86400000"
        );
        assert_eq!(REPLICA_CHECK.code_range(), "10 ms to 1 day");
        let (variable, message) = match STATEMENT_TIMEOUT
            .check_override("Repo::with_statement_timeout", Duration::from_micros(1500))
        {
            Err(Error::Config { variable, message }) => (variable, message),
            other => panic!("{other:?}"),
        };
        assert_eq!(variable.as_deref(), Some("Repo::with_statement_timeout"));
        assert_eq!(
            message,
            "1.5ms is not allowed; allowed: 0 (no limit) to 1 day, in whole milliseconds"
        );
        STATEMENT_TIMEOUT.check_override("x", MAX_DURATION).unwrap();
        assert_eq!(
            REPLICA_CHECK.env_range(Style::Table),
            "whole milliseconds from 10 to 86 400 000"
        );
        assert_eq!(POOL_RECYCLE.table_default(), "`-1`: never");
        assert_eq!(LOCK_TIMEOUT.table_default(), "unset: the server's setting");
        assert_eq!(PRE_PING.table_default(), "`true`");
        assert_eq!(POOL_TIMEOUT.table_default(), "`30`");
    }
}
