-- Room archives (XEP-0313 for XEP-0045 rooms), with their full-text index.

CREATE TABLE room_archive (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    room      TEXT NOT NULL,
    -- The sender's occupant JID (room@service/nick), as bare and full for the query builder.
    with_bare TEXT NOT NULL,
    with_full TEXT NOT NULL,
    stamp_ms  INTEGER NOT NULL,
    body      TEXT NOT NULL DEFAULT '',
    stanza    TEXT NOT NULL
);
CREATE INDEX room_archive_by_room ON room_archive (room, id);
CREATE INDEX room_archive_by_stamp ON room_archive (stamp_ms);

CREATE VIRTUAL TABLE room_archive_fts USING fts5 (body, content = 'room_archive', content_rowid = 'id');
CREATE TRIGGER room_archive_fts_insert AFTER INSERT ON room_archive BEGIN
    INSERT INTO room_archive_fts (rowid, body) VALUES (new.id, new.body);
END;
CREATE TRIGGER room_archive_fts_delete AFTER DELETE ON room_archive BEGIN
    INSERT INTO room_archive_fts (room_archive_fts, rowid, body) VALUES ('delete', old.id, old.body);
END;
