-- People the application knows. `user_id` comes from outside (a chat platform's id), so it is not generated.
CREATE TABLE users (
    user_id     BIGINT PRIMARY KEY,
    username    VARCHAR(128),
    full_name   VARCHAR(128) NOT NULL,
    language    VARCHAR(10)  NOT NULL DEFAULT 'en',
    active      BOOLEAN      NOT NULL DEFAULT TRUE,
    logged_as   VARCHAR(128),
    referrer_id BIGINT REFERENCES users (user_id) ON DELETE SET NULL,
    created_at  TIMESTAMP    NOT NULL DEFAULT now()
);

CREATE INDEX users_referrer_id_idx ON users (referrer_id);
