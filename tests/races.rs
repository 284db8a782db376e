//! Races between writers, provoked with real threads and repeated on PostgreSQL and SQLite:
//! writes of one user's links (`link`, `unlink`, `replace_user_locations`, `import_links`) never
//! deadlock one another and leave a link set some serial order of the calls produces; concurrent referral
//! changes, and bulk imports racing them, never store a referral cycle.

mod common;

use std::collections::BTreeSet;
use std::sync::Barrier;
use std::time::Duration;

use userbase::models::{NewLocation, NewUser, UserLocation};
use userbase::{Backend, Database, Error, Repo, RetryPolicy, UpsertOptions};

use common::{eventually, Flag, TestDb};

// ---- links -------------------------------------------------------------------------------

/// The user whose links the threads fight over.
const BUSY_USER: i64 = 7;
/// Locations 1..=LOCATIONS exist.
const LOCATIONS: i32 = 12;
const THREADS: u64 = 8;
const CALLS_PER_THREAD: usize = 150;

/// One call on the busy user's links, as a thread made it.
#[derive(Debug, Clone)]
enum LinkCall {
    Link(i32),
    Unlink(i32),
    Replace(Vec<i32>),
    /// `import_links` of these locations.
    Import(Vec<i32>),
}

impl LinkCall {
    /// Whether the call leaves location `l` linked, or `None` when it does not touch `l`.
    fn effect_on(&self, l: i32) -> Option<bool> {
        match self {
            LinkCall::Link(at) => (*at == l).then_some(true),
            LinkCall::Unlink(at) => (*at == l).then_some(false),
            LinkCall::Replace(set) => Some(set.contains(&l)),
            LinkCall::Import(set) => set.contains(&l).then_some(true),
        }
    }

    fn is_replace(&self) -> bool {
        matches!(self, LinkCall::Replace(_))
    }
}

/// What the last call of `calls` touching `l` left, if one touched it.
fn last_effect(calls: &[LinkCall], l: i32) -> Option<bool> {
    calls.iter().rev().find_map(|call| call.effect_on(l))
}

/// Whether some serial order of the threads' calls (each thread's calls in its own order) can
/// leave exactly `stored`, checked location by location: the last replacement `R` of a serial
/// order is some thread's last one; after it come that thread's later calls and, from each other
/// thread, calls made after its own last replacement, interleaved freely. So each location ends
/// as `R` left it, or as the last call touching it after `R` left it, and any thread whose calls
/// after its last replacement touch it may go last. A necessary condition of a serial order.
fn serially_explainable(threads: &[Vec<LinkCall>], stored: &BTreeSet<i32>) -> bool {
    threads.iter().enumerate().any(|(t, calls)| {
        let Some(r) = calls.iter().rposition(LinkCall::is_replace) else {
            return false;
        };
        let LinkCall::Replace(base) = &calls[r] else {
            unreachable!("position of a replace")
        };
        (1..=LOCATIONS).all(|l| {
            let mut allowed = BTreeSet::new();
            allowed.insert(last_effect(&calls[r + 1..], l).unwrap_or(base.contains(&l)));
            for (u, other) in threads.iter().enumerate() {
                if u == t {
                    continue;
                }
                let after_own = other
                    .iter()
                    .rposition(LinkCall::is_replace)
                    .map_or(0, |i| i + 1);
                allowed.extend(last_effect(&other[after_own..], l));
            }
            allowed.contains(&stored.contains(&l))
        })
    })
}

fn busy_user_locations(db: &Database) -> BTreeSet<i32> {
    db.session()
        .unwrap()
        .repo()
        .user_locations()
        .unwrap()
        .into_iter()
        .filter(|link| link.user_id == BUSY_USER)
        .map(|link| link.location_id)
        .collect()
}

/// A xorshift step.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Makes `call` on the busy user's links.
fn apply(repo: &mut Repo<'_>, call: &LinkCall) -> Result<(), Error> {
    match call {
        LinkCall::Link(l) => repo.link(BUSY_USER, *l).map(drop),
        LinkCall::Unlink(l) => repo.unlink(BUSY_USER, *l).map(drop),
        LinkCall::Replace(ids) => repo.replace_user_locations(BUSY_USER, ids),
        LinkCall::Import(ids) => {
            let links: Vec<UserLocation> = ids
                .iter()
                .map(|&location_id| UserLocation {
                    location_id,
                    user_id: BUSY_USER,
                })
                .collect();
            repo.import_links(&links).map(drop)
        }
    }
}

/// One round: `THREADS` threads, started together, each making `CALLS_PER_THREAD` random calls
/// (a session each; half of the threads two calls in each transaction). Returns each thread's
/// calls and every error met.
fn link_round(db: &Database, round: u64) -> (Vec<Vec<LinkCall>>, Vec<String>) {
    let start = Barrier::new(THREADS as usize);
    let per_thread: Vec<(Vec<LinkCall>, Vec<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|thread| {
                let (db, start) = (db, &start);
                scope.spawn(move || {
                    let mut seed =
                        (round * THREADS + thread + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    let mut calls = Vec::with_capacity(CALLS_PER_THREAD);
                    let mut errors = Vec::new();
                    start.wait();
                    for _ in 0..CALLS_PER_THREAD {
                        let r = next(&mut seed);
                        let location = ((r >> 8) % LOCATIONS as u64) as i32 + 1;
                        // A random subset, in a random order.
                        let bits = next(&mut seed);
                        let mut ids: Vec<i32> =
                            (1..=LOCATIONS).filter(|i| bits >> i & 1 == 1).collect();
                        if bits & 1 == 1 {
                            ids.reverse();
                        }
                        let call = match r % 4 {
                            0 => LinkCall::Link(location),
                            1 => LinkCall::Unlink(location),
                            2 => LinkCall::Replace(ids),
                            _ => LinkCall::Import(ids),
                        };
                        calls.push(call);
                        // Even threads make each call on its own; odd ones make two calls in
                        // each transaction (where link writes take the user's lock first).
                        let result = if thread % 2 == 0 {
                            apply(&mut db.session().unwrap().repo(), &calls[calls.len() - 1])
                        } else if calls.len() % 2 == 0 {
                            let pair = &calls[calls.len() - 2..];
                            db.transaction(|repo| {
                                apply(repo, &pair[0])?;
                                apply(repo, &pair[1])
                            })
                        } else {
                            continue;
                        };
                        if let Err(error) = result {
                            let made = if thread % 2 == 0 { 1 } else { 2 };
                            errors.push(format!("{:?}: {error:?}", &calls[calls.len() - made..]));
                        }
                    }
                    (calls, errors)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut threads = Vec::new();
    let mut errors = Vec::new();
    for (calls, errs) in per_thread {
        threads.push(calls);
        errors.extend(errs);
    }
    (threads, errors)
}

both_backends! {
    fn link_writes_never_deadlock(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        {
            let mut session = db.session().unwrap();
            let mut repo = session.repo();
            let names: Vec<String> = (1..=LOCATIONS).map(|i| format!("L{i}")).collect();
            let new: Vec<NewLocation> = names.iter().map(|n| NewLocation::new(n, "Main Street")).collect();
            repo.import_locations(&new).unwrap();
            repo.insert_user(&NewUser::new(BUSY_USER, "Busy")).unwrap();
        }
        for round in 0..3 {
            let (threads, errors) = link_round(&db, round);
            let calls: usize = threads.iter().map(Vec::len).sum();
            assert_eq!(calls, THREADS as usize * CALLS_PER_THREAD);
            assert!(errors.is_empty(), "round {round}: {} errors: {errors:#?}", errors.len());
            let stored = busy_user_locations(&db);
            assert!(
                serially_explainable(&threads, &stored),
                "round {round}: no serial order of the calls leaves {stored:?}"
            );
        }
    }
}

#[test]
fn explanation_check_rejects_a_set_no_order_makes() {
    // The check above can fail: thread 0 replaces with {1}, thread 1 replaces with {2} then
    // unlinks 3. Any serial order ends with {1} or {2}.
    let threads = vec![
        vec![LinkCall::Replace(vec![1])],
        vec![LinkCall::Replace(vec![2]), LinkCall::Unlink(3)],
    ];
    assert!(serially_explainable(&threads, &BTreeSet::from([1])));
    assert!(serially_explainable(&threads, &BTreeSet::from([2])));
    assert!(!serially_explainable(&threads, &BTreeSet::from([1, 2])));
    assert!(!serially_explainable(&threads, &BTreeSet::new()));
    // A link after thread 1's replacement may come last: {2, 4} is a serial outcome.
    let threads = vec![
        vec![LinkCall::Replace(vec![1]), LinkCall::Link(4)],
        vec![LinkCall::Replace(vec![2])],
    ];
    assert!(serially_explainable(&threads, &BTreeSet::from([2, 4])));
    assert!(serially_explainable(&threads, &BTreeSet::from([1, 4])));
    assert!(!serially_explainable(&threads, &BTreeSet::from([1])));
}

// ---- referrals -----------------------------------------------------------------------------

const TRIALS: usize = 60;

fn referrers(db: &Database, ids: &[i64]) -> Vec<Option<i64>> {
    let mut session = db.session().unwrap();
    let mut repo = session.repo();
    ids.iter()
        .map(|&id| repo.user(id).unwrap().referrer_id)
        .collect()
}

/// How one side of a referral race changes user `user`'s referrer to `referrer`.
#[derive(Debug, Clone, Copy)]
enum Change {
    /// `set_referrer`.
    Plain,
    /// `upsert_user_with` overwriting the referrer.
    Upsert,
    /// `set_referrer` inside `transaction_with_retry` (`SERIALIZABLE` on PostgreSQL).
    Retried,
}

fn change(
    db: &Database,
    how: Change,
    user: i64,
    referrer: i64,
    start: &Barrier,
) -> Result<(), Error> {
    let mut session = db.session().unwrap();
    let mut repo = session.repo();
    start.wait();
    match how {
        Change::Plain => repo.set_referrer(user, Some(referrer)).map(drop),
        Change::Upsert => {
            let name = format!("User {user}");
            let new = NewUser::new(user, &name).referrer(referrer);
            repo.upsert_user_with(&new, UpsertOptions::default().with_referrer(true))
                .map(drop)
        }
        Change::Retried => {
            let policy = RetryPolicy::default().with_max_attempts(20);
            db.transaction_with_retry(policy, |repo| {
                repo.set_referrer(user, Some(referrer)).map(drop)
            })
        }
    }
}

both_backends! {
    fn plain_set_referrer_never_stores_a_cycle(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        {
            let mut session = db.session().unwrap();
            let mut repo = session.repo();
            for id in [1, 2] {
                repo.insert_user(&NewUser::new(id, &format!("User {id}"))).unwrap();
            }
        }
        let mut first_won = 0;
        for trial in 0..TRIALS {
            // set_referrer races itself, the upsert that overwrites the referrer, and itself
            // inside a SERIALIZABLE transaction (whose snapshot may predate the lock).
            let second = match trial % 3 {
                0 => Change::Plain,
                1 => Change::Upsert,
                _ => Change::Retried,
            };
            let start = Barrier::new(2);
            let (one, two) = std::thread::scope(|scope| {
                let one = scope.spawn(|| change(&db, Change::Plain, 1, 2, &start));
                let two = scope.spawn(|| change(&db, second, 2, 1, &start));
                (one.join().unwrap(), two.join().unwrap())
            });
            let stored = referrers(&db, &[1, 2]);
            match (&one, &two) {
                (Ok(()), Err(Error::ReferralCycle { user_id: 2, referrer_id: 1 })) => {
                    first_won += 1;
                    assert_eq!(stored, [Some(2), None], "trial {trial}");
                }
                (Err(Error::ReferralCycle { user_id: 1, referrer_id: 2 }), Ok(())) => {
                    assert_eq!(stored, [None, Some(1)], "trial {trial}");
                }
                other => panic!("trial {trial} ({second:?}): {other:?}, stored {stored:?}"),
            }
            let mut session = db.session().unwrap();
            session.repo().set_referrer(1, None).unwrap();
            session.repo().set_referrer(2, None).unwrap();
        }
        println!("{backend:?}: the first caller won {first_won} of {TRIALS} trials");
    }

    fn import_racing_set_referrer_never_stores_a_cycle(backend: Backend) {
        // Thread A imports new users, one of them (`new_id`) referred by user 1; thread B makes
        // `new_id` user 1's referrer. Serially: B fails (no such user yet, or a cycle), never
        // both succeed.
        let test = TestDb::new(backend);
        let db = test.database();
        db.session().unwrap().repo().insert_user(&NewUser::new(1, "Root")).unwrap();
        let (mut cycles, mut missing) = (0, 0);
        for trial in 0..TRIALS as i64 {
            let new_id = 1_000_000 + trial * 1_000;
            let names: Vec<String> = (0..300).map(|k| format!("New {}", new_id + k)).collect();
            // The referred user last, so the import runs a while before it is written.
            let mut batch: Vec<NewUser> =
                (1..300).map(|k| NewUser::new(new_id + k, &names[k as usize])).collect();
            batch.push(NewUser::new(new_id, &names[0]).referrer(1));
            // import_users, copy_users, or one insert_user of the referred user (which takes no
            // lock: set_referrer's check after its write must see it).
            let way = trial % 3;
            let start = Barrier::new(2);
            let (imported, set) = std::thread::scope(|scope| {
                let a = scope.spawn(|| {
                    let mut session = db.session().unwrap();
                    let mut repo = session.repo();
                    start.wait();
                    match way {
                        0 => repo.import_users(&batch),
                        1 => repo.copy_users(&batch),
                        _ => repo.insert_user(&batch[batch.len() - 1]).map(|_| 1),
                    }
                });
                let b = scope.spawn(|| {
                    let mut session = db.session().unwrap();
                    let mut repo = session.repo();
                    start.wait();
                    repo.set_referrer(1, Some(new_id))
                });
                (a.join().unwrap(), b.join().unwrap())
            });
            let written = if way == 2 { 1 } else { 300 };
            assert_eq!(imported.as_ref().ok(), Some(&written), "trial {trial}: {imported:?}");
            match &set {
                Err(Error::ReferralCycle { user_id: 1, referrer_id }) if *referrer_id == new_id => cycles += 1,
                Err(Error::ForeignKeyViolation { .. }) => missing += 1,
                other => panic!("trial {trial}: set_referrer gave {other:?}"),
            }
            assert_eq!(referrers(&db, &[1, new_id]), [None, Some(1)], "trial {trial}");
        }
        println!("{backend:?}: set_referrer saw a cycle {cycles} times, no user {missing} times");
    }
}

#[test]
fn set_referrer_waits_for_an_import_holding_the_referral_lock() {
    // PostgreSQL: an import with referrals holds the referral lock until its transaction ends, so
    // a set_referrer that would close a cycle through the imported user waits, then sees it.
    let test = TestDb::new(Backend::Postgres);
    let db = test.database();
    db.session()
        .unwrap()
        .repo()
        .insert_user(&NewUser::new(1, "Root"))
        .unwrap();
    let waiting = |db: &Database| {
        db.session()
            .unwrap()
            .repo()
            .load_sql::<Flag>(
                "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
                 WHERE l.locktype = 'advisory' AND NOT l.granted \
                 AND d.datname = current_database()) AS flag",
            )
            .unwrap()[0]
            .flag
    };
    for round in 0..5_i64 {
        let new_id = 100 + round;
        let started = Barrier::new(2);
        let set = std::thread::scope(|scope| {
            let mut importer = db.session().unwrap();
            let setter = scope.spawn(|| {
                started.wait();
                db.session().unwrap().repo().set_referrer(1, Some(new_id))
            });
            importer
                .transaction(|repo| {
                    repo.import_users(&[NewUser::new(new_id, "New").referrer(1)])?;
                    started.wait();
                    assert!(
                        eventually(Duration::from_secs(30), || waiting(&db)),
                        "round {round}: set_referrer never waited for the lock"
                    );
                    Ok::<_, Error>(())
                })
                .unwrap();
            setter.join().unwrap()
        });
        assert!(
            matches!(set, Err(Error::ReferralCycle { user_id: 1, referrer_id }) if referrer_id == new_id),
            "round {round}: {set:?}"
        );
        assert_eq!(referrers(&db, &[1, new_id]), [None, Some(1)]);
    }
}
