CREATE TABLE locations (
    location_id   INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    location_name VARCHAR(128) NOT NULL UNIQUE,
    address       VARCHAR(128) NOT NULL,
    has_solarium  BOOLEAN      NOT NULL DEFAULT TRUE,
    created_at    TIMESTAMP    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
);
