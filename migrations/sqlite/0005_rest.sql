-- The REST bridge: applications, their numbered chats, the chats' numbered messages (with a
-- full-text index) and the JIDs allowed into each chat's room.
--
-- Counters live in the parent row (`chats_count`, `messages_count`, `revision`): a new number
-- is taken by the UPDATE that raises the counter, in the transaction that inserts the child.

CREATE TABLE rest_apps (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL,
    token       TEXT NOT NULL UNIQUE,
    chats_count INTEGER NOT NULL DEFAULT 0,
    created_ms  INTEGER NOT NULL
);

CREATE TABLE rest_chats (
    app_id         INTEGER NOT NULL REFERENCES rest_apps (id) ON DELETE CASCADE,
    number         INTEGER NOT NULL,
    messages_count INTEGER NOT NULL DEFAULT 0,
    -- Raised by every create and edit of a message: the live feed's event counter.
    revision       INTEGER NOT NULL DEFAULT 0,
    room           TEXT NOT NULL UNIQUE,
    created_ms     INTEGER NOT NULL,
    PRIMARY KEY (app_id, number)
);

CREATE TABLE rest_messages (
    -- Only the full-text index's content_rowid: messages are known by (app_id, chat, number).
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id     INTEGER NOT NULL,
    chat       INTEGER NOT NULL,
    number     INTEGER NOT NULL,
    body       TEXT NOT NULL,
    sender     TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    revision   INTEGER NOT NULL,
    xmpp_id    TEXT NOT NULL,
    via_api    INTEGER NOT NULL CHECK (via_api IN (0, 1)),
    UNIQUE (app_id, chat, number),
    FOREIGN KEY (app_id, chat) REFERENCES rest_chats (app_id, number) ON DELETE CASCADE
);
CREATE INDEX rest_messages_by_revision ON rest_messages (app_id, chat, revision);

CREATE VIRTUAL TABLE rest_messages_fts USING fts5 (body, content = 'rest_messages', content_rowid = 'id');
CREATE TRIGGER rest_messages_fts_insert AFTER INSERT ON rest_messages BEGIN
    INSERT INTO rest_messages_fts (rowid, body) VALUES (new.id, new.body);
END;
CREATE TRIGGER rest_messages_fts_update AFTER UPDATE ON rest_messages BEGIN
    INSERT INTO rest_messages_fts (rest_messages_fts, rowid, body) VALUES ('delete', old.id, old.body);
    INSERT INTO rest_messages_fts (rowid, body) VALUES (new.id, new.body);
END;
CREATE TRIGGER rest_messages_fts_delete AFTER DELETE ON rest_messages BEGIN
    INSERT INTO rest_messages_fts (rest_messages_fts, rowid, body) VALUES ('delete', old.id, old.body);
END;

CREATE TABLE rest_members (
    app_id INTEGER NOT NULL,
    chat   INTEGER NOT NULL,
    -- A bare JID.
    jid    TEXT NOT NULL,
    PRIMARY KEY (app_id, chat, jid),
    FOREIGN KEY (app_id, chat) REFERENCES rest_chats (app_id, number) ON DELETE CASCADE
);
