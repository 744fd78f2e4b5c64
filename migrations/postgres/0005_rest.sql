-- The REST bridge: applications, their numbered chats, the chats' numbered messages (with a
-- full-text index) and the JIDs allowed into each chat's room.
--
-- Counters live in the parent row (`chats_count`, `messages_count`, `revision`): a new number
-- is taken by the UPDATE that raises the counter, in the transaction that inserts the child.
-- The UPDATE's row lock, held to commit, makes concurrent writers on any node wait their turn,
-- so numbers are unique and gapless at READ COMMITTED.

CREATE TABLE rest_apps (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL,
    token       TEXT NOT NULL UNIQUE,
    chats_count BIGINT NOT NULL DEFAULT 0,
    created_ms  BIGINT NOT NULL
);

CREATE TABLE rest_chats (
    app_id         BIGINT NOT NULL REFERENCES rest_apps (id) ON DELETE CASCADE,
    number         BIGINT NOT NULL,
    messages_count BIGINT NOT NULL DEFAULT 0,
    -- Raised by every create and edit of a message: the live feed's event counter.
    revision       BIGINT NOT NULL DEFAULT 0,
    room           TEXT NOT NULL UNIQUE,
    created_ms     BIGINT NOT NULL,
    PRIMARY KEY (app_id, number)
);

CREATE TABLE rest_messages (
    app_id     BIGINT NOT NULL,
    chat       BIGINT NOT NULL,
    number     BIGINT NOT NULL,
    body       TEXT NOT NULL,
    sender     TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    revision   BIGINT NOT NULL,
    xmpp_id    TEXT NOT NULL,
    via_api    BOOLEAN NOT NULL,
    body_tsv   TSVECTOR GENERATED ALWAYS AS (to_tsvector('simple', body)) STORED,
    PRIMARY KEY (app_id, chat, number),
    FOREIGN KEY (app_id, chat) REFERENCES rest_chats (app_id, number) ON DELETE CASCADE
);
CREATE INDEX rest_messages_by_revision ON rest_messages (app_id, chat, revision);
CREATE INDEX rest_messages_fts ON rest_messages USING GIN (body_tsv);

CREATE TABLE rest_members (
    app_id BIGINT NOT NULL,
    chat   BIGINT NOT NULL,
    -- A bare JID.
    jid    TEXT NOT NULL,
    PRIMARY KEY (app_id, chat, jid),
    FOREIGN KEY (app_id, chat) REFERENCES rest_chats (app_id, number) ON DELETE CASCADE
);
