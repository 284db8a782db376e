-- Places users visit.
CREATE TABLE locations (
    location_id   SERIAL PRIMARY KEY,
    location_name VARCHAR(128) NOT NULL UNIQUE,
    address       VARCHAR(128) NOT NULL,
    has_solarium  BOOLEAN      NOT NULL DEFAULT TRUE,
    created_at    TIMESTAMP    NOT NULL DEFAULT now()
);
