-- A counter that every change of an account's credentials moves (a password set, an account
-- deleted), whoever made it: each node keeps credentials in memory and drops them when the
-- counter has moved (auth::cache), also after `rookery user` or another node changed them.

CREATE TABLE credentials_version (
    version BIGINT NOT NULL
);
INSERT INTO credentials_version (version) VALUES (0);

CREATE FUNCTION bump_credentials_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE credentials_version SET version = version + 1;
    RETURN NULL;
END
$$;

CREATE TRIGGER credentials_changed
AFTER UPDATE OF salt, iterations, sha1_stored_key, sha1_server_key, sha256_stored_key,
    sha256_server_key OR DELETE ON accounts
FOR EACH STATEMENT EXECUTE FUNCTION bump_credentials_version();
