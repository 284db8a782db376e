ALTER TABLE users ADD COLUMN lock_retry_probe integer;
