ALTER TABLE users DROP COLUMN lock_retry_probe;
