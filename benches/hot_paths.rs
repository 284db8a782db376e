//! In-process hot paths, without a server (an in-memory SQLite database), so regressions show up
//! anywhere: pool checkout and return, a point query (build, bind, run, decode) with and without
//! Diesel's MultiConnection wrapper, building a join's SQL for each dialect, and decoding a larger
//! result (`users_with_locations` over 200 users). `cargo bench --bench hot_paths`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use diesel::prelude::*;
use userbase::models::{user, NewLocation, NewUser, User};
use userbase::{AnyConnection, Database, DbUrl, Error, PoolConfig, Settings};

fn database(pre_ping_bypass: Duration) -> Database {
    let pool = PoolConfig::default().with_pre_ping_bypass(pre_ping_bypass);
    let db = Database::new(Settings::new(DbUrl::sqlite(":memory:").unwrap()).with_pool(pool))
        .expect("engine");
    db.run_pending_migrations().expect("migrate");
    db.transaction(|repo| {
        for i in 0..10 {
            repo.insert_location(&NewLocation::new(&format!("Location {i}"), "Main Street"))?;
        }
        for id in 1..=200_i64 {
            let name = format!("User {id}");
            repo.insert_user(&NewUser::new(id, &name).username("handle"))?;
            for k in 0..(id % 4) {
                repo.link(id, (id + k) as i32 % 10 + 1)?;
            }
        }
        Ok::<_, Error>(())
    })
    .expect("rows");
    db
}

fn hot_paths(c: &mut Criterion) {
    let db = database(Duration::from_millis(500));
    let no_bypass = database(Duration::ZERO);

    c.bench_function("checkout+return (pre_ping, 500 ms bypass)", |b| {
        b.iter(|| drop(black_box(db.session().unwrap())))
    });
    c.bench_function("checkout+return (pre_ping, no bypass)", |b| {
        b.iter(|| drop(black_box(no_bypass.session().unwrap())))
    });
    let mut held = db.session().unwrap();
    c.bench_function("point query on a held connection", |b| {
        b.iter(|| black_box(held.repo().user(black_box(150)).unwrap()))
    });
    // The same query on the concrete connection inside `AnyConnection`: what Diesel's
    // MultiConnection wrapper costs (it renders the SQL text on every execution).
    c.bench_function(
        "point query on a held connection, concrete SqliteConnection",
        |b| {
            b.iter(|| match held.connection() {
                AnyConnection::Sqlite(conn) => {
                    black_box(user::by_id(black_box(150_i64)).first::<User>(conn).unwrap())
                }
                AnyConnection::Pg(_) => unreachable!("an SQLite engine"),
            })
        },
    );
    c.bench_function("point query with checkout", |b| {
        b.iter(|| black_box(db.session().unwrap().repo().user(black_box(150)).unwrap()))
    });
    // Building a query: the SQL text of `users_by_location`'s join (the library's own fragment),
    // per dialect.
    c.bench_function("build SQL: users_by_location (PostgreSQL)", |b| {
        b.iter(|| {
            let query = user::by_location::<diesel::pg::Pg>(black_box(3));
            black_box(diesel::debug_query::<diesel::pg::Pg, _>(&query).to_string())
        })
    });
    c.bench_function("build SQL: users_by_location (SQLite)", |b| {
        b.iter(|| {
            let query = user::by_location::<diesel::sqlite::Sqlite>(black_box(3));
            black_box(diesel::debug_query::<diesel::sqlite::Sqlite, _>(&query).to_string())
        })
    });
    c.bench_function("users_with_locations (200 users, 2 queries)", |b| {
        b.iter(|| black_box(held.repo().users_with_locations().unwrap()))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = hot_paths
}
criterion_main!(benches);
