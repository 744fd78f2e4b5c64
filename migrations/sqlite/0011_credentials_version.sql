-- A counter that every change of an account's credentials moves (a password set, an account
-- deleted), whoever made it: a running server keeps credentials in memory and drops them when
-- the counter has moved (auth::cache), also after `rookery user` changed the store beside it.

CREATE TABLE credentials_version (
    version INTEGER NOT NULL
);
INSERT INTO credentials_version (version) VALUES (0);

CREATE TRIGGER credentials_changed
AFTER UPDATE OF salt, iterations, sha1_stored_key, sha1_server_key, sha256_stored_key,
    sha256_server_key ON accounts
BEGIN
    UPDATE credentials_version SET version = version + 1;
END;

CREATE TRIGGER account_deleted AFTER DELETE ON accounts
BEGIN
    UPDATE credentials_version SET version = version + 1;
END;
