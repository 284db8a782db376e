//! Property tests of `DbUrl` over the builder's whole input space (every setter, any order and
//! number, from either scheme or an SQLite path, with empty strings, NULs, port 0, hosts of every
//! kind and parts SQLite does not take): each builder call either refuses with the
//! `Error::Config` naming exactly the part an independent model predicts, or stores exactly what
//! it was given; every URL the builder makes renders to a string that parses back to an equal
//! `DbUrl` and that a reader written after libpq's grammar reads as exactly the model's parts;
//! no redacted rendering and no error message shows a secret.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRunner};
use userbase::config::{Secrets, SECRET_QUERY_PARAMS};
use userbase::{DbUrl, Error};

/// Characters that break naive URL code (`@ : / ? # % & = + [ ] ,`, spaces, backslashes,
/// quotes), unicode (accents, CJK, emoji, a right-to-left override, a no-break space), NUL, and
/// ordinary letters and digits so that many parts are valid. Drawn by index: a cheap strategy.
const CHARS: &str =
    "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\
                     0123456789@:/?#%&=+[] ,.-_~*\\\"';!$@:/?#%&=+[] ,éßΩ日🙂\u{202e}\u{a0}";

fn text_of(alphabet: &'static str, len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    let chars: Vec<char> = alphabet.chars().collect();
    let n = chars.len();
    proptest::collection::vec(0..n, len)
        .prop_map(move |indexes| indexes.into_iter().map(|i| chars[i]).collect())
}

/// A string of [`CHARS`], now and then empty or holding a NUL.
fn text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        60 => text_of(CHARS, 1..max),
        1 => Just(String::new()),
        1 => text_of(CHARS, 0..max).prop_map(|t| format!("{t}\0")),
    ]
}

/// Any text of [`CHARS`], empty one time in six and holding a NUL one time in twelve.
fn any_text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        9 => text_of(CHARS, 1..max),
        2 => Just(String::new()),
        1 => text_of(CHARS, 0..max).prop_map(|t| format!("{t}\0")),
    ]
}

fn name_text() -> impl Strategy<Value = String> {
    text_of("abcdefghijklmnopqrstuvwxyz0123456789-._", 1..20)
}

/// Hosts: mostly valid spellings (names, IPv4, IPv6 with and without brackets and zone ids,
/// socket directories), names around the 253-character limit, the empty string, and arbitrary
/// text, including a host that tries to inject a port, a database and a parameter.
fn any_host() -> impl Strategy<Value = String> {
    prop_oneof![
        32 => name_text(),
        16 => any::<[u8; 4]>().prop_map(|o| Ipv4Addr::from(o).to_string()),
        16 => any::<[u16; 8]>().prop_map(|s| Ipv6Addr::from(s).to_string()),
        8 => any::<[u16; 8]>().prop_map(|s| format!("[{}]", Ipv6Addr::from(s))),
        8 => (any::<[u16; 8]>(), name_text())
            .prop_map(|(s, zone)| format!("{}%{zone}", Ipv6Addr::from(s))),
        2 => any::<[u16; 8]>().prop_map(|s| format!("{}%", Ipv6Addr::from(s))),
        8 => text(16).prop_map(|t| format!("/{t}")),
        2 => (252usize..=254).prop_map(|n| "h".repeat(n)),
        24 => text(16),
        8 => Just(String::new()),
        8 => any_text(12),
        8 => Just("::1]:6000/otherdb?sslmode=disable&x=".to_owned()),
    ]
}

/// Every port, 0 included (one time in ten).
fn any_port() -> impl Strategy<Value = u16> {
    prop_oneof![9 => 1u16.., 1 => Just(0u16)]
}

/// Query keys: arbitrary text, the empty name, and the libpq secrets in any case.
fn any_query_key() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => text(8),
        3 => Just(String::new()),
        8 => (proptest::sample::select(SECRET_QUERY_PARAMS.to_vec()), any::<bool>())
            .prop_map(|(key, upper)| if upper { key.to_uppercase() } else { key.to_owned() }),
    ]
}

/// SQLite paths: any text, `:memory:`, and paths starting with `file:`.
fn any_path() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => any_text(24),
        1 => Just(":memory:".to_owned()),
        1 => text_of(CHARS, 0..8).prop_map(|t| format!("file:{t}")),
    ]
}

/// One call of the builder.
#[derive(Debug, Clone)]
enum Step {
    Username(String),
    Password(String),
    Host(String),
    Port(u16),
    AdditionalHost(String, Option<u16>),
    Database(String),
    QueryParam(String, String),
}

/// What the builder starts from.
#[derive(Debug, Clone)]
enum Start {
    /// `DbUrl::postgres()`.
    Postgres,
    /// `DbUrl::parse("postgresql://")`: the long scheme.
    Postgresql,
    /// `DbUrl::sqlite(path)`.
    Sqlite(String),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => any_text(12).prop_map(Step::Username),
        2 => any_text(16).prop_map(Step::Password),
        3 => any_host().prop_map(Step::Host),
        2 => any_port().prop_map(Step::Port),
        1 => (any_host(), proptest::option::of(any_port()))
            .prop_map(|(host, port)| Step::AdditionalHost(host, port)),
        3 => prop_oneof![3 => any_text(12), 1 => any_path()].prop_map(Step::Database),
        2 => (any_query_key(), any_text(8)).prop_map(|(key, value)| Step::QueryParam(key, value)),
    ]
}

fn start() -> impl Strategy<Value = Start> {
    prop_oneof![
        4 => Just(Start::Postgres),
        2 => Just(Start::Postgresql),
        2 => any_path().prop_map(Start::Sqlite),
    ]
}

/// A builder run: where it starts, then its calls in order (any number of each, repeated or not).
fn builder_run() -> impl Strategy<Value = (Start, Vec<Step>)> {
    (start(), proptest::collection::vec(step(), 0..8))
}

fn begin(start: &Start) -> Result<DbUrl, Error> {
    match start {
        Start::Postgres => Ok(DbUrl::postgres()),
        Start::Postgresql => DbUrl::parse("postgresql://"),
        Start::Sqlite(path) => DbUrl::sqlite(path.clone()),
    }
}

fn apply(url: DbUrl, step: &Step) -> Result<DbUrl, Error> {
    match step.clone() {
        Step::Username(user) => url.with_username(user),
        Step::Password(password) => url.with_password(password),
        Step::Host(host) => url.with_host(host),
        Step::Port(port) => url.with_port(port),
        Step::AdditionalHost(host, port) => url.with_additional_host(host, port),
        Step::Database(database) => url.with_database(database),
        Step::QueryParam(key, value) => url.with_query_param(key, value),
    }
}

/// What the builder is documented to store and to refuse, worked out independently of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Model {
    sqlite: bool,
    user: Option<String>,
    password: Option<String>,
    hosts: Vec<(Option<String>, Option<u16>)>,
    database: Option<String>,
    query: Vec<(String, String)>,
}

/// `[…]` around an IPv6 address (something with a `:`) is dropped; any other host is kept as given.
fn without_brackets(host: &str) -> String {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(inner) if inner.contains(':') => inner.to_owned(),
        _ => host.to_owned(),
    }
}

/// The hosts the builder documents as such: an absolute socket directory without `,` or NUL; an
/// IPv6 address with an optional zone id of name characters; an IPv4 address; a name of ASCII
/// letters, digits, `-`, `.` and `_` (1 to 253 of them).
fn is_host(host: &str) -> bool {
    let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    if let Some(dir) = host.strip_prefix('/') {
        return !dir.contains([',', '\0']);
    }
    if host.contains(':') {
        let (address, zone) = match host.split_once('%') {
            Some((address, zone)) => (address, Some(zone)),
            None => (host, None),
        };
        return address.parse::<Ipv6Addr>().is_ok()
            && zone.is_none_or(|z| !z.is_empty() && z.chars().all(name_char));
    }
    host.parse::<Ipv4Addr>().is_ok()
        || (!host.is_empty() && host.len() <= 253 && host.chars().all(name_char))
}

/// Empty (libpq reads it as absent) or holding a NUL.
fn bad_text(s: &str) -> bool {
    s.is_empty() || s.contains('\0')
}

/// An SQLite path the builder refuses: empty, a NUL, or a `file:` URI.
fn bad_path(path: &str) -> bool {
    bad_text(path) || path.starts_with("file:")
}

impl Model {
    /// The model of `start`, or the part its constructor refuses.
    fn of(start: &Start) -> Result<Model, &'static str> {
        match start {
            Start::Postgres | Start::Postgresql => Ok(Model::default()),
            Start::Sqlite(path) if bad_path(path) => Err("URL path"),
            Start::Sqlite(path) => Ok(Model {
                sqlite: true,
                database: Some(path.clone()),
                ..Model::default()
            }),
        }
    }

    /// The `variable` of the error the builder is documented to give for `step`, `None` when it
    /// takes it. An SQLite URL takes nothing but its path; a new host is checked before its port.
    fn refusal(&self, step: &Step) -> Option<&'static str> {
        if self.sqlite {
            return match step {
                Step::Username(_) => Some("URL user"),
                Step::Password(_) => Some("URL password"),
                Step::Host(_) | Step::AdditionalHost(..) => Some("URL host"),
                Step::Port(_) => Some("URL port"),
                Step::QueryParam(..) => Some("URL query"),
                Step::Database(path) => bad_path(path).then_some("URL path"),
            };
        }
        match step {
            Step::Username(user) => bad_text(user).then_some("URL user"),
            Step::Password(password) => bad_text(password).then_some("URL password"),
            Step::Host(host) => (!is_host(&without_brackets(host))).then_some("URL host"),
            Step::Port(port) => (*port == 0).then_some("URL port"),
            Step::AdditionalHost(host, _) if !is_host(&without_brackets(host)) => Some("URL host"),
            Step::AdditionalHost(_, port) => (*port == Some(0)).then_some("URL port"),
            Step::Database(database) => bad_text(database).then_some("URL database"),
            Step::QueryParam(key, value) => {
                (bad_text(key) || value.contains('\0')).then_some("URL query")
            }
        }
    }

    /// The model after a step the builder takes.
    fn apply(&mut self, step: &Step) {
        match step {
            Step::Username(user) => self.user = Some(user.clone()),
            Step::Password(password) => self.password = Some(password.clone()),
            Step::Host(host) => self.first_host().0 = Some(without_brackets(host)),
            Step::Port(port) => self.first_host().1 = Some(*port),
            Step::AdditionalHost(host, port) => {
                self.hosts.push((Some(without_brackets(host)), *port))
            }
            Step::Database(database) => self.database = Some(database.clone()),
            Step::QueryParam(key, value) => self.query.push((key.clone(), value.clone())),
        }
    }

    fn first_host(&mut self) -> &mut (Option<String>, Option<u16>) {
        if self.hosts.is_empty() {
            self.hosts.push((None, None));
        }
        &mut self.hosts[0]
    }
}

/// Strict percent-decoding of one piece of a URL, as libpq's `conninfo_uri_decode` does.
fn percent_decoded(raw: &str) -> Option<String> {
    let mut bytes = Vec::new();
    let mut rest = raw.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

fn present(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// The parts a rendered URL means, read the way libpq's `conninfo_uri_parse_options` reads a
/// URI (written apart from `DbUrl::parse`): credentials up to the first `@` that comes before any
/// `/`, split at the first `:`; then hosts separated by `,`, each `[…]` or up to `:`, `/`, `?`
/// or `,`, with a port up to `/`, `?` or `,`; then `/` and the database up to `?`; then
/// `key=value` pairs separated by `&`. Every piece is percent-decoded on its own; an empty user,
/// password or database is absent, and a lone empty host entry is no host. SQLite: the decoded
/// path after `sqlite://`, or `:memory:`.
fn libpq_reads(rendered: &str) -> Option<Model> {
    if rendered == "sqlite::memory:" {
        return Some(Model {
            sqlite: true,
            database: Some(":memory:".to_owned()),
            ..Model::default()
        });
    }
    if let Some(path) = rendered.strip_prefix("sqlite://") {
        return Some(Model {
            sqlite: true,
            database: Some(percent_decoded(path)?),
            ..Model::default()
        });
    }
    let mut p = rendered
        .strip_prefix("postgresql://")
        .or_else(|| rendered.strip_prefix("postgres://"))?;
    let mut model = Model::default();
    let first_stop = p.find(['@', '/']);
    if let Some(at) = first_stop.filter(|&i| p.as_bytes()[i] == b'@') {
        let credentials = &p[..at];
        p = &p[at + 1..];
        let (user, password) = match credentials.find(':') {
            Some(colon) => (&credentials[..colon], Some(&credentials[colon + 1..])),
            None => (credentials, None),
        };
        model.user = present(percent_decoded(user)?);
        model.password = match password {
            Some(password) => present(percent_decoded(password)?),
            None => None,
        };
    }
    loop {
        let host;
        if let Some(bracketed) = p.strip_prefix('[') {
            let end = bracketed.find(']')?;
            host = &bracketed[..end];
            p = &bracketed[end + 1..];
        } else {
            let end = p.find([':', '/', '?', ',']).unwrap_or(p.len());
            host = &p[..end];
            p = &p[end..];
        }
        let mut port = None;
        if let Some(after) = p.strip_prefix(':') {
            let end = after.find(['/', '?', ',']).unwrap_or(after.len());
            port = Some(after[..end].parse::<u16>().ok()?);
            p = &after[end..];
        }
        model.hosts.push((present(percent_decoded(host)?), port));
        match p.strip_prefix(',') {
            Some(next) => p = next,
            None => break,
        }
    }
    if model.hosts == [(None, None)] {
        model.hosts.clear();
    }
    if let Some(after) = p.strip_prefix('/') {
        let end = after.find('?').unwrap_or(after.len());
        model.database = present(percent_decoded(&after[..end])?);
        p = &after[end..];
    }
    if let Some(query) = p.strip_prefix('?') {
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=')?;
            model
                .query
                .push((percent_decoded(key)?, percent_decoded(value)?));
        }
    } else if !p.is_empty() {
        return None;
    }
    Some(model)
}

/// Every rendering meant for people: `render(Hidden)`, `Display`, `Debug`, `{:#?}`.
fn redacted(url: &DbUrl) -> [String; 4] {
    [
        url.render(Secrets::Hidden),
        url.to_string(),
        format!("{url:?}"),
        format!("{url:#?}"),
    ]
}

/// The same steps with every secret (the password, secret query values) replaced by another
/// valid one.
fn with_other_secrets(steps: &[Step]) -> Vec<Step> {
    steps
        .iter()
        .map(|step| match step {
            Step::Password(_) => Step::Password("a completely different password".to_owned()),
            Step::QueryParam(key, _)
                if SECRET_QUERY_PARAMS.contains(&key.to_lowercase().as_str()) =>
            {
                Step::QueryParam(key.clone(), "another secret".to_owned())
            }
            other => other.clone(),
        })
        .collect()
}

/// The builder's verdict on one call against the model's: the same refusal, or success.
fn check_verdict(
    verdict: &Result<DbUrl, Error>,
    predicted: Option<&'static str>,
    secrets: &[&str],
    what: &dyn std::fmt::Debug,
) -> Result<(), TestCaseError> {
    match (verdict, predicted) {
        (Ok(_), None) => Ok(()),
        (Err(Error::Config { variable, message }), Some(part)) => {
            prop_assert_eq!(variable.as_deref(), Some(part), "{:?}: {}", what, message);
            for secret in secrets {
                prop_assert!(!message.contains(secret), "{:?}: {}", what, message);
            }
            Ok(())
        }
        (verdict, predicted) => Err(TestCaseError::fail(format!(
            "{what:?}: the builder gave {verdict:?}, the docs say {predicted:?}"
        ))),
    }
}

/// A URL the builder made: it holds the model's parts, renders to a string that parses back to
/// an equal `DbUrl` (and again, a fixed point), and that libpq's grammar reads as the model's
/// parts.
fn check_made(url: &DbUrl, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(url.username(), model.user.as_deref());
    prop_assert_eq!(url.has_password(), model.password.is_some());
    let hosts: Vec<(Option<&str>, Option<u16>)> = model
        .hosts
        .iter()
        .map(|(h, p)| (h.as_deref(), *p))
        .collect();
    prop_assert_eq!(url.hosts(), hosts);
    prop_assert_eq!(url.database(), model.database.as_deref());
    prop_assert_eq!(url.query(), &model.query[..]);
    let rendered = url.render(Secrets::Shown);
    let parsed = DbUrl::parse(&rendered);
    prop_assert!(
        parsed.is_ok(),
        "{:?} rendered {:?}: {:?}",
        url,
        rendered,
        parsed
    );
    let parsed = parsed.unwrap();
    prop_assert_eq!(&parsed, url, "{}", rendered);
    prop_assert_eq!(
        DbUrl::parse(&parsed.render(Secrets::Shown)).ok(),
        Some(url.clone())
    );
    prop_assert_eq!(libpq_reads(&rendered), Some(model.clone()), "{}", rendered);
    if url.has_password() {
        for shown in redacted(url) {
            prop_assert!(shown.contains(":***@"), "{}", shown);
        }
    }
    Ok(())
}

/// A runner for `cases` cases, seeded afresh each run. XorShift instead of the default ChaCha:
/// in an unoptimised test build ChaCha took 80 % of the time.
fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::XorShift,
        ..Config::default()
    })
}

/// The builder's whole input space: every setter, in any order and number, from either scheme
/// or an SQLite path, with empty strings, NULs, port 0, hosts of every kind and parts SQLite does
/// not take. Each call refuses exactly when the model says, naming the part it names (the run
/// then goes on from the URL before the call), and never with a secret in the message; every
/// URL made along the way holds exactly what it was given and survives render → parse, read by
/// libpq's grammar as the same parts; no redacted rendering depends on a secret.
#[test]
fn every_builder_call_refuses_what_the_model_refuses_and_every_url_made_round_trips() {
    const CASES: u32 = 20_000;
    let mut runner = runner(CASES);
    let (taken, refused) = (Cell::new(0u32), Cell::new(0u32));
    let refusals = RefCell::new(BTreeSet::new());
    runner
        .run(&builder_run(), |(start, steps)| {
            let mut model = match Model::of(&start) {
                Ok(model) => model,
                Err(part) => {
                    check_verdict(&begin(&start), Some(part), &[], &start)?;
                    refusals.borrow_mut().insert((true, part));
                    return Ok(());
                }
            };
            let mut url = begin(&start).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            check_made(&url, &model)?;
            let mut accepted = Vec::new();
            for step in &steps {
                // The secrets of the run so far and of this call, as far as the message could
                // not have them from the part it quotes.
                let quoted: Vec<&str> = match step {
                    Step::Username(s) | Step::Host(s) | Step::Database(s) => vec![s],
                    Step::AdditionalHost(s, _) => vec![s],
                    Step::QueryParam(key, _) => vec![key],
                    Step::Password(_) | Step::Port(_) => vec![],
                };
                let secrets: Vec<&str> = steps
                    .iter()
                    .filter_map(|s| match s {
                        Step::Password(p) => Some(p.as_str()),
                        Step::QueryParam(_, v) => Some(v.as_str()),
                        _ => None,
                    })
                    .filter(|s| s.len() > 3 && !quoted.iter().any(|q| q.contains(*s)))
                    .collect();
                let predicted = model.refusal(step);
                let verdict = apply(url.clone(), step);
                check_verdict(&verdict, predicted, &secrets, &(&url, step))?;
                match verdict {
                    Ok(next) => {
                        model.apply(step);
                        check_made(&next, &model)?;
                        url = next;
                        accepted.push(step.clone());
                        taken.set(taken.get() + 1);
                    }
                    Err(_) => {
                        refusals
                            .borrow_mut()
                            .insert((model.sqlite, predicted.unwrap_or_default()));
                        refused.set(refused.get() + 1);
                    }
                }
            }
            // Redacted renderings never depend on a secret.
            let other = with_other_secrets(&accepted)
                .iter()
                .try_fold(begin(&start)?, apply)
                .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            prop_assert_eq!(redacted(&url), redacted(&other));
            Ok(())
        })
        .unwrap();
    // Both outcomes were really exercised, and every refusal of every backend.
    let (taken, refused) = (taken.get(), refused.get());
    assert!(taken >= CASES * 3 / 2, "only {taken} calls taken");
    assert!(refused >= CASES * 9 / 10, "only {refused} calls refused");
    let expected: BTreeSet<(bool, &str)> = [
        (false, "URL user"),
        (false, "URL password"),
        (false, "URL host"),
        (false, "URL port"),
        (false, "URL database"),
        (false, "URL query"),
        (true, "URL user"),
        (true, "URL password"),
        (true, "URL host"),
        (true, "URL port"),
        (true, "URL query"),
        (true, "URL path"),
    ]
    .into_iter()
    .collect();
    assert_eq!(refusals.into_inner(), expected);
}

#[test]
fn sqlite_paths_round_trip_exactly_or_are_refused_as_paths() {
    let mut runner = runner(4_000);
    runner
        .run(&any_path(), |path| {
            let start = Start::Sqlite(path.clone());
            let made = DbUrl::sqlite(path.clone());
            match Model::of(&start) {
                Ok(model) => {
                    check_verdict(&made, None, &[], &path)?;
                    check_made(&made.unwrap(), &model)?;
                }
                Err(part) => check_verdict(&made, Some(part), &[], &path)?,
            }
            Ok(())
        })
        .unwrap();
}

/// Whatever string parses, its rendering parses back to the same URL.
#[test]
fn whatever_parses_renders_back_to_itself() {
    let mut runner = runner(4_000);
    let input = (
        proptest::sample::select(vec!["postgres://", "postgresql://", "sqlite://", ""]),
        text(40),
    );
    runner
        .run(&input, |(scheme, rest)| {
            if let Ok(url) = DbUrl::parse(&format!("{scheme}{rest}")) {
                let rendered = url.render(Secrets::Shown);
                prop_assert_eq!(DbUrl::parse(&rendered).ok(), Some(url), "{}", rendered);
            }
            Ok(())
        })
        .unwrap();
}
