-- Deterministic benchmark dataset (PostgreSQL), loaded after the migrations.
-- psql -v users=10000 -v locations=500 -f benches/data/dataset.sql
-- Users: ids 1..:users; every third user (from 3) has a referrer with a lower id.
-- Links: user g visits (g % 7) distinct locations.
TRUNCATE userlocations, locations, users RESTART IDENTITY CASCADE;

INSERT INTO users (user_id, username, full_name, language, active, logged_as, referrer_id, created_at)
SELECT g,
       CASE WHEN g % 11 = 0 THEN NULL ELSE 'user' || g END,
       'Full Name ' || g,
       (ARRAY['en', 'ru', 'uk', 'de', 'es'])[1 + g % 5],
       g % 10 <> 0,
       NULL,
       CASE WHEN g > 1 AND g % 3 = 0 THEN (g::bigint * 7919) % (g - 1) + 1 END,
       TIMESTAMP '2024-06-19 02:45:14' + g * INTERVAL '1 second'
FROM generate_series(1, :users) AS g;

INSERT INTO locations (location_name, address, has_solarium, created_at)
SELECT 'Location ' || l,
       l || ' Main Street',
       l % 2 = 0,
       TIMESTAMP '2024-06-19 03:00:30' + l * INTERVAL '1 second'
FROM generate_series(1, :locations) AS l;

INSERT INTO userlocations (location_id, user_id)
SELECT ((g * 31 + k * 17) % :locations) + 1, g
FROM generate_series(1, :users) AS g,
     generate_series(0, 6) AS k
WHERE k < g % 7;

ANALYZE users;
ANALYZE locations;
ANALYZE userlocations;
