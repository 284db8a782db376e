//! Property tests of `DbUrl`: every URL the builder makes and `validate` passes survives render →
//! parse exactly, `validate` refuses exactly what its docs say (over the builder's whole input
//! space: every setter, any order, empty strings, NULs, port 0), no part can become another, and
//! the password never shows in a redacted rendering.

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRunner};
use userbase::config::{Secrets, SECRET_QUERY_PARAMS};
use userbase::{DbUrl, Error};

/// Characters that break naive URL code (`@ : / ? # % & = + [ ] ,`, spaces, backslashes,
/// quotes), unicode (accents, CJK, emoji, a right-to-left override, a no-break space), NUL, and
/// ordinary letters and digits so that many URLs are valid. Drawn by index: a cheap strategy.
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

fn name_text() -> impl Strategy<Value = String> {
    text_of("abcdefghijklmnopqrstuvwxyz0123456789-._", 1..20)
}

/// Hosts: mostly valid spellings (names, IPv4, IPv6 with and without brackets and zone ids,
/// socket directories), and arbitrary text, including a host that tries to inject a port, a database and a parameter.
fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => name_text(),
        2 => any::<[u8; 4]>().prop_map(|o| Ipv4Addr::from(o).to_string()),
        2 => any::<[u16; 8]>().prop_map(|s| Ipv6Addr::from(s).to_string()),
        1 => any::<[u16; 8]>().prop_map(|s| format!("[{}]", Ipv6Addr::from(s))),
        1 => (any::<[u16; 8]>(), name_text())
            .prop_map(|(s, zone)| format!("{}%{zone}", Ipv6Addr::from(s))),
        1 => text(16).prop_map(|t| format!("/{t}")),
        3 => text(16),
        1 => Just("::1]:6000/otherdb?sslmode=disable&x=".to_owned()),
    ]
}

/// Query keys: arbitrary text, and the libpq secrets in any case.
fn query_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => text(8),
        2 => (proptest::sample::select(SECRET_QUERY_PARAMS.to_vec()), any::<bool>())
            .prop_map(|(key, upper)| if upper { key.to_uppercase() } else { key.to_owned() }),
    ]
}

#[derive(Debug, Clone)]
struct Parts {
    scheme_long: bool,
    user: Option<String>,
    password: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    database: Option<String>,
    query: Vec<(String, String)>,
    /// Hosts of a multi-host URL after the first.
    more_hosts: Vec<(String, Option<u16>)>,
}

fn parts() -> impl Strategy<Value = Parts> {
    (
        any::<bool>(),
        proptest::option::weighted(0.8, text(12)),
        proptest::option::weighted(0.7, text(16)),
        proptest::option::weighted(0.9, host()),
        proptest::option::weighted(0.7, prop_oneof![20 => 1u16.., 1 => Just(0u16)]),
        proptest::option::weighted(0.8, text(12)),
        proptest::collection::vec((query_key(), text(8)), 0..3),
        prop_oneof![
            4 => Just(Vec::new()),
            1 => proptest::collection::vec((host(), proptest::option::of(1u16..)), 1..3),
        ],
    )
        .prop_map(
            |(scheme_long, user, password, host, port, database, query, more_hosts)| Parts {
                scheme_long,
                user,
                password,
                host,
                port,
                database,
                query,
                more_hosts,
            },
        )
}

fn build(parts: &Parts) -> DbUrl {
    let mut url = if parts.scheme_long {
        DbUrl::parse("postgresql://").unwrap()
    } else {
        DbUrl::postgres()
    };
    if let Some(user) = &parts.user {
        url = url.with_username(user);
    }
    if let Some(password) = &parts.password {
        url = url.with_password(password);
    }
    if let Some(host) = &parts.host {
        url = url.with_host(host);
    }
    if let Some(port) = parts.port {
        url = url.with_port(port);
    }
    if let Some(database) = &parts.database {
        url = url.with_database(database);
    }
    for (key, value) in &parts.query {
        url = url.with_query_param(key, value);
    }
    for (host, port) in &parts.more_hosts {
        url = url.with_additional_host(host, *port);
    }
    url
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

/// The property for one URL; returns whether it was valid (and so round-tripped).
fn check(parts: &Parts) -> Result<bool, TestCaseError> {
    let url = build(parts);
    // Redaction holds for every URL, valid or not: a redacted rendering does not depend on the
    // password or on a secret query value at all, so it cannot hold any of them.
    let mut other = parts.clone();
    other.password = other
        .password
        .map(|_| "a completely different password".to_owned());
    for (key, value) in &mut other.query {
        if SECRET_QUERY_PARAMS.contains(&key.to_lowercase().as_str()) {
            *value = "another secret".to_owned();
        }
    }
    prop_assert_eq!(redacted(&url), redacted(&build(&other)));
    if url.has_password() {
        for shown in redacted(&url) {
            prop_assert!(shown.contains(":***@"), "{}", shown);
        }
    }
    match url.validate() {
        Ok(()) => {
            let rendered = url.render(Secrets::Shown);
            let parsed = DbUrl::parse(&rendered);
            prop_assert!(
                parsed.is_ok(),
                "{:?} rendered {:?}: {:?}",
                parts,
                rendered,
                parsed
            );
            let parsed = parsed.unwrap();
            // Part by part first, so that a failure says which part moved.
            prop_assert_eq!(parsed.username(), url.username(), "{}", rendered);
            prop_assert_eq!(parsed.has_password(), url.has_password(), "{}", rendered);
            prop_assert_eq!(parsed.host(), url.host(), "{}", rendered);
            prop_assert_eq!(parsed.port(), url.port(), "{}", rendered);
            prop_assert_eq!(parsed.hosts(), url.hosts(), "{}", rendered);
            prop_assert_eq!(parsed.database(), url.database(), "{}", rendered);
            prop_assert_eq!(parsed.query(), url.query(), "{}", rendered);
            prop_assert_eq!(&parsed, &url, "{}", rendered);
            // What the builder stored is what was given (brackets around IPv6 aside).
            prop_assert_eq!(url.username(), parts.user.as_deref());
            prop_assert_eq!(url.database(), parts.database.as_deref());
            Ok(true)
        }
        Err(Error::Config { variable, message }) => {
            let variable = variable.unwrap_or_default();
            prop_assert!(variable.starts_with("URL "), "{}: {}", variable, message);
            // The message may quote the part it refuses; a password whose text is also another
            // part (a one-emoji password and an emoji host, say) would be found there.
            let elsewhere = |p: &str| {
                [&parts.user, &parts.host, &parts.database]
                    .into_iter()
                    .flatten()
                    .any(|s| s.contains(p))
                    || parts
                        .query
                        .iter()
                        .any(|(k, v)| k.contains(p) || v.contains(p))
                    || parts.more_hosts.iter().any(|(h, _)| h.contains(p))
            };
            if let Some(password) = parts
                .password
                .as_deref()
                .filter(|p| p.len() > 3 && !elsewhere(p))
            {
                prop_assert!(!message.contains(password), "{}", message);
            }
            Ok(false)
        }
        Err(other) => Err(TestCaseError::fail(format!(
            "not a Config error: {other:?}"
        ))),
    }
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

#[test]
fn postgres_urls_round_trip_exactly_and_never_show_the_password() {
    const CASES: u32 = 10_000;
    let mut runner = runner(CASES);
    let valid = std::cell::Cell::new(0u32);
    runner
        .run(&parts(), |parts| {
            if check(&parts)? {
                valid.set(valid.get() + 1);
            }
            Ok(())
        })
        .unwrap();
    // The round trip must really have been exercised, not only the refusals.
    assert!(valid.get() >= CASES / 4, "only {} valid URLs", valid.get());
}

#[test]
fn sqlite_paths_round_trip_exactly() {
    let mut runner = runner(4_000);
    runner
        .run(&text(24), |path| {
            let url = DbUrl::sqlite(path.clone());
            match url.validate() {
                Ok(()) => {
                    let rendered = url.render(Secrets::Shown);
                    prop_assert_eq!(DbUrl::parse(&rendered).ok(), Some(url), "{}", rendered);
                }
                Err(error) => prop_assert!(
                    path.is_empty() || path.contains('\0') || path.starts_with("file:"),
                    "{:?} refused: {}",
                    path,
                    error
                ),
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

/// Any text of [`CHARS`], empty one time in six and holding a NUL one time in twelve.
fn any_text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        9 => text_of(CHARS, 1..max),
        2 => Just(String::new()),
        1 => text_of(CHARS, 0..max).prop_map(|t| format!("{t}\0")),
    ]
}

/// Every port, 0 included (one time in ten).
fn any_port() -> impl Strategy<Value = u16> {
    prop_oneof![9 => 1u16.., 1 => Just(0u16)]
}

/// Hosts: valid spellings most of the time, the empty string, and anything else.
fn any_host() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => host(),
        1 => Just(String::new()),
        1 => any_text(12),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => any_text(12).prop_map(Step::Username),
        2 => any_text(16).prop_map(Step::Password),
        3 => any_host().prop_map(Step::Host),
        2 => any_port().prop_map(Step::Port),
        1 => (any_host(), proptest::option::of(any_port()))
            .prop_map(|(host, port)| Step::AdditionalHost(host, port)),
        3 => any_text(12).prop_map(Step::Database),
        2 => (prop_oneof![4 => query_key(), 1 => Just(String::new())], any_text(8))
            .prop_map(|(key, value)| Step::QueryParam(key, value)),
    ]
}

fn start() -> impl Strategy<Value = Start> {
    prop_oneof![
        4 => Just(Start::Postgres),
        2 => Just(Start::Postgresql),
        2 => prop_oneof![
            6 => any_text(24),
            1 => Just(":memory:".to_owned()),
            1 => text_of(CHARS, 0..8).prop_map(|t| format!("file:{t}")),
        ]
        .prop_map(Start::Sqlite),
    ]
}

/// A builder run: where it starts, then its calls in order (any number of each, repeated or not).
fn builder_run() -> impl Strategy<Value = (Start, Vec<Step>)> {
    (start(), proptest::collection::vec(step(), 0..8))
}

fn run_builder(start: &Start, steps: &[Step]) -> DbUrl {
    let mut url = match start {
        Start::Postgres => DbUrl::postgres(),
        Start::Postgresql => DbUrl::parse("postgresql://").unwrap(),
        Start::Sqlite(path) => DbUrl::sqlite(path.clone()),
    };
    for step in steps {
        url = match step.clone() {
            Step::Username(user) => url.with_username(user),
            Step::Password(password) => url.with_password(password),
            Step::Host(host) => url.with_host(host),
            Step::Port(port) => url.with_port(port),
            Step::AdditionalHost(host, port) => url.with_additional_host(host, port),
            Step::Database(database) => url.with_database(database),
            Step::QueryParam(key, value) => url.with_query_param(key, value),
        };
    }
    url
}

/// What the builder is documented to store, worked out independently of it.
#[derive(Debug, Default)]
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

impl Model {
    fn of(start: &Start, steps: &[Step]) -> Model {
        let mut model = match start {
            Start::Postgres | Start::Postgresql => Model::default(),
            Start::Sqlite(path) => Model {
                sqlite: true,
                database: Some(path.clone()),
                ..Model::default()
            },
        };
        for step in steps {
            match step {
                Step::Username(user) => model.user = Some(user.clone()),
                Step::Password(password) => model.password = Some(password.clone()),
                Step::Host(host) => model.first_host().0 = Some(without_brackets(host)),
                Step::Port(port) => model.first_host().1 = Some(*port),
                Step::AdditionalHost(host, port) => {
                    model.hosts.push((Some(without_brackets(host)), *port))
                }
                Step::Database(database) => model.database = Some(database.clone()),
                Step::QueryParam(key, value) => model.query.push((key.clone(), value.clone())),
            }
        }
        model
    }

    fn first_host(&mut self) -> &mut (Option<String>, Option<u16>) {
        if self.hosts.is_empty() {
            self.hosts.push((None, None));
        }
        &mut self.hosts[0]
    }

    /// The `variable` of the error `DbUrl::validate` is documented to give, `None` when the URL
    /// passes: the first part at fault, in the order user, password, hosts, port, database, query
    /// (SQLite: user, password, host, port, query, path).
    fn refusal(&self) -> Option<&'static str> {
        let bad_text =
            |s: &Option<String>| s.as_ref().is_some_and(|s| s.is_empty() || s.contains('\0'));
        if self.sqlite {
            let path = self.database.as_deref().unwrap_or_default();
            return [
                ("URL user", self.user.is_some()),
                ("URL password", self.password.is_some()),
                ("URL host", self.hosts.iter().any(|(h, _)| h.is_some())),
                ("URL port", self.hosts.iter().any(|(_, p)| p.is_some())),
                ("URL query", !self.query.is_empty()),
                (
                    "URL path",
                    path.is_empty() || path.contains('\0') || path.starts_with("file:"),
                ),
            ]
            .into_iter()
            .find_map(|(part, refused)| refused.then_some(part));
        }
        [
            ("URL user", bad_text(&self.user)),
            ("URL password", bad_text(&self.password)),
            (
                "URL host",
                self.hosts
                    .iter()
                    .any(|(h, _)| h.as_deref().is_some_and(|h| !is_host(h))),
            ),
            ("URL port", self.hosts.iter().any(|(_, p)| *p == Some(0))),
            ("URL database", bad_text(&self.database)),
            (
                "URL query",
                self.query
                    .iter()
                    .any(|(k, v)| k.is_empty() || k.contains('\0') || v.contains('\0')),
            ),
        ]
        .into_iter()
        .find_map(|(part, refused)| refused.then_some(part))
    }
}

/// The hosts `DbUrl::validate` documents as such: an absolute socket directory without `,` or
/// NUL; an IPv6 address with an optional zone id of name characters; an IPv4 address; a name
/// of ASCII letters, digits, `-`, `.` and `_` (1 to 253 of them).
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

/// The same run with every secret (the password, secret query values) replaced.
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

/// The builder's whole input space: every setter, in any order and number, from either scheme
/// or an SQLite path, with empty strings, NULs, port 0 and hosts of every kind. The builder
/// stores exactly what it is given; `validate` refuses exactly what its docs say, naming the
/// first part at fault; everything it accepts renders to a string that parses back to an equal
/// `DbUrl` (so nothing the builder accepted and `validate` passed can change on the way to
/// libpq); and no redacted rendering depends on a secret.
#[test]
fn the_builder_stores_what_it_is_given_and_validate_passes_only_what_round_trips() {
    const CASES: u32 = 20_000;
    let mut runner = runner(CASES);
    let valid = std::cell::Cell::new(0u32);
    runner
        .run(&builder_run(), |(start, steps)| {
            let url = run_builder(&start, &steps);
            let model = Model::of(&start, &steps);
            // Stored exactly as given.
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
            // Redacted renderings never depend on a secret, valid or not.
            prop_assert_eq!(
                redacted(&url),
                redacted(&run_builder(&start, &with_other_secrets(&steps)))
            );
            let verdict = url.validate();
            match (&verdict, model.refusal()) {
                (Ok(()), None) => {
                    valid.set(valid.get() + 1);
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
                    prop_assert_eq!(parsed.username(), url.username(), "{}", rendered);
                    prop_assert_eq!(parsed.hosts(), url.hosts(), "{}", rendered);
                    prop_assert_eq!(parsed.database(), url.database(), "{}", rendered);
                    prop_assert_eq!(parsed.query(), url.query(), "{}", rendered);
                    prop_assert_eq!(&parsed, &url, "{}", rendered);
                    // Parsing again what the parse gave is a fixed point.
                    prop_assert_eq!(
                        DbUrl::parse(&parsed.render(Secrets::Shown)).ok(),
                        Some(parsed)
                    );
                }
                (Err(Error::Config { variable, .. }), Some(part)) => {
                    prop_assert_eq!(variable.as_deref(), Some(part), "{:?}", url);
                    // Whatever `validate` refuses, `Database::new` refuses too.
                    prop_assert!(
                        userbase::Database::new(userbase::Settings::new(url.clone())).is_err(),
                        "{:?}",
                        url
                    );
                }
                (verdict, expected) => {
                    return Err(TestCaseError::fail(format!(
                        "{url:?}: validate gave {verdict:?}, the docs say {expected:?}"
                    )))
                }
            }
            Ok(())
        })
        .unwrap();
    assert!(valid.get() >= CASES / 5, "only {} valid URLs", valid.get());
}
