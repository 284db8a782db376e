CREATE TABLE userlocations (
    location_id INTEGER NOT NULL REFERENCES locations (location_id) ON DELETE CASCADE,
    user_id     BIGINT  NOT NULL REFERENCES users (user_id) ON DELETE RESTRICT,
    PRIMARY KEY (location_id, user_id)
);

CREATE INDEX userlocations_user_id_idx ON userlocations (user_id);
