-- The message archive (XEP-0313) with its full-text index (tsvector + GIN) and archiving
-- preferences (XEP-0441).

CREATE TABLE archive (
    id        BIGSERIAL PRIMARY KEY,
    username  TEXT NOT NULL REFERENCES accounts (username) ON DELETE CASCADE,
    -- The other party, as a bare and as a full JID ("with" can name either).
    with_bare TEXT NOT NULL,
    with_full TEXT NOT NULL,
    stamp_ms  BIGINT NOT NULL,
    body      TEXT NOT NULL DEFAULT '',
    stanza    TEXT NOT NULL,
    body_tsv  TSVECTOR GENERATED ALWAYS AS (to_tsvector('simple', body)) STORED
);
CREATE INDEX archive_by_user ON archive (username, id);
CREATE INDEX archive_by_with ON archive (username, with_bare, id);
CREATE INDEX archive_by_stamp ON archive (stamp_ms);
CREATE INDEX archive_fts ON archive USING GIN (body_tsv);

CREATE TABLE archive_prefs (
    username     TEXT PRIMARY KEY REFERENCES accounts (username) ON DELETE CASCADE,
    default_mode TEXT NOT NULL CHECK (default_mode IN ('always', 'roster', 'never')),
    -- Newline-separated JIDs.
    always       TEXT NOT NULL DEFAULT '',
    never        TEXT NOT NULL DEFAULT ''
);
