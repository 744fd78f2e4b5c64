-- Accounts, rosters, subscription requests, offline messages, block lists and vCards: the same
-- tables as the SQLite schema, in PostgreSQL's types.

CREATE TABLE accounts (
    username          TEXT PRIMARY KEY,
    salt              BYTEA NOT NULL,
    iterations        BIGINT NOT NULL,
    sha1_stored_key   BYTEA NOT NULL,
    sha1_server_key   BYTEA NOT NULL,
    sha256_stored_key BYTEA NOT NULL,
    sha256_server_key BYTEA NOT NULL,
    created_at        BIGINT NOT NULL
);

-- One row per account that has ever changed its roster: the XEP-0237 version counter.
CREATE TABLE roster_versions (
    username TEXT PRIMARY KEY REFERENCES accounts (username) ON DELETE CASCADE,
    version  BIGINT NOT NULL
);

CREATE TABLE roster_items (
    username     TEXT NOT NULL REFERENCES accounts (username) ON DELETE CASCADE,
    contact      TEXT NOT NULL,
    name         TEXT,
    subscription TEXT NOT NULL CHECK (subscription IN ('none', 'to', 'from', 'both')),
    ask          BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (username, contact)
);

CREATE TABLE roster_groups (
    username TEXT NOT NULL,
    contact  TEXT NOT NULL,
    grp      TEXT NOT NULL,
    PRIMARY KEY (username, contact, grp),
    FOREIGN KEY (username, contact) REFERENCES roster_items (username, contact) ON DELETE CASCADE
);

CREATE TABLE subscription_requests (
    username TEXT NOT NULL REFERENCES accounts (username) ON DELETE CASCADE,
    contact  TEXT NOT NULL,
    stanza   TEXT NOT NULL,
    PRIMARY KEY (username, contact)
);

CREATE TABLE offline_messages (
    id       BIGSERIAL PRIMARY KEY,
    username TEXT NOT NULL REFERENCES accounts (username) ON DELETE CASCADE,
    stanza   TEXT NOT NULL,
    stamp_ms BIGINT NOT NULL
);
CREATE INDEX offline_messages_by_user ON offline_messages (username, id);

CREATE TABLE blocklist (
    username TEXT NOT NULL REFERENCES accounts (username) ON DELETE CASCADE,
    jid      TEXT NOT NULL,
    PRIMARY KEY (username, jid)
);

CREATE TABLE vcards (
    username TEXT PRIMARY KEY REFERENCES accounts (username) ON DELETE CASCADE,
    vcard    TEXT NOT NULL
);
