-- Room archives (XEP-0313 for XEP-0045 rooms), with their full-text index.

CREATE TABLE room_archive (
    id        BIGSERIAL PRIMARY KEY,
    room      TEXT NOT NULL,
    -- The sender's occupant JID (room@service/nick), as bare and full for the query builder.
    with_bare TEXT NOT NULL,
    with_full TEXT NOT NULL,
    stamp_ms  BIGINT NOT NULL,
    body      TEXT NOT NULL DEFAULT '',
    stanza    TEXT NOT NULL,
    body_tsv  TSVECTOR GENERATED ALWAYS AS (to_tsvector('simple', body)) STORED
);
CREATE INDEX room_archive_by_room ON room_archive (room, id);
CREATE INDEX room_archive_by_stamp ON room_archive (stamp_ms);
CREATE INDEX room_archive_fts ON room_archive USING GIN (body_tsv);
