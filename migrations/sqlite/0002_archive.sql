-- The message archive (XEP-0313) with its full-text index (FTS5) and archiving preferences
-- (XEP-0441).

CREATE TABLE archive (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    username  TEXT NOT NULL REFERENCES accounts (username) ON DELETE CASCADE,
    -- The other party, as a bare and as a full JID ("with" can name either).
    with_bare TEXT NOT NULL,
    with_full TEXT NOT NULL,
    stamp_ms  INTEGER NOT NULL,
    body      TEXT NOT NULL DEFAULT '',
    stanza    TEXT NOT NULL
);
CREATE INDEX archive_by_user ON archive (username, id);
CREATE INDEX archive_by_with ON archive (username, with_bare, id);
CREATE INDEX archive_by_stamp ON archive (stamp_ms);

CREATE VIRTUAL TABLE archive_fts USING fts5 (body, content = 'archive', content_rowid = 'id');
CREATE TRIGGER archive_fts_insert AFTER INSERT ON archive BEGIN
    INSERT INTO archive_fts (rowid, body) VALUES (new.id, new.body);
END;
CREATE TRIGGER archive_fts_delete AFTER DELETE ON archive BEGIN
    INSERT INTO archive_fts (archive_fts, rowid, body) VALUES ('delete', old.id, old.body);
END;

CREATE TABLE archive_prefs (
    username     TEXT PRIMARY KEY NOT NULL REFERENCES accounts (username) ON DELETE CASCADE,
    default_mode TEXT NOT NULL CHECK (default_mode IN ('always', 'roster', 'never')),
    -- Newline-separated JIDs.
    always       TEXT NOT NULL DEFAULT '',
    never        TEXT NOT NULL DEFAULT ''
);
