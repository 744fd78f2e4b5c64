-- Personal eventing (XEP-0163): each account's pubsub nodes with their configuration (JSON),
-- and the items published to them. `seq` orders a node's items, newest highest; publishing an
-- item id again makes it the newest.
CREATE TABLE pep_nodes (
    username TEXT NOT NULL REFERENCES accounts (username) ON DELETE CASCADE,
    node     TEXT NOT NULL,
    config   TEXT NOT NULL,
    PRIMARY KEY (username, node)
);

CREATE TABLE pep_items (
    username     TEXT NOT NULL,
    node         TEXT NOT NULL,
    item_id      TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    published_ms INTEGER NOT NULL,
    payload      TEXT NOT NULL,
    PRIMARY KEY (username, node, item_id),
    FOREIGN KEY (username, node) REFERENCES pep_nodes (username, node) ON DELETE CASCADE
);

CREATE INDEX pep_items_by_seq ON pep_items (username, node, seq);
