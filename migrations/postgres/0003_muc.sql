-- Persistent multi-user chat rooms (XEP-0045): configuration and subject as JSON, and the
-- affiliations.

CREATE TABLE muc_rooms (
    name    TEXT PRIMARY KEY,
    config  TEXT NOT NULL,
    subject TEXT NOT NULL DEFAULT ''
);

CREATE TABLE muc_affiliations (
    room        TEXT NOT NULL REFERENCES muc_rooms (name) ON DELETE CASCADE,
    jid         TEXT NOT NULL,
    affiliation TEXT NOT NULL CHECK (affiliation IN ('outcast', 'member', 'admin', 'owner')),
    PRIMARY KEY (room, jid)
);
