-- SQLite twin of migrations/postgres: same tables, constraints, defaults and indexes.
-- Lengths are declared for documentation; SQLite does not enforce them (userbase validates before writing).
-- `created_at` defaults to the current UTC time, as PostgreSQL's now() does for a UTC server.
CREATE TABLE users (
    user_id     BIGINT PRIMARY KEY NOT NULL,
    username    VARCHAR(128),
    full_name   VARCHAR(128) NOT NULL,
    language    VARCHAR(10)  NOT NULL DEFAULT 'en',
    active      BOOLEAN      NOT NULL DEFAULT TRUE,
    logged_as   VARCHAR(128),
    referrer_id BIGINT REFERENCES users (user_id) ON DELETE SET NULL,
    created_at  TIMESTAMP    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
);

CREATE INDEX users_referrer_id_idx ON users (referrer_id);
