-- Push notification registrations (XEP-0357): an app server's pubsub service and node per
-- device, and the publish-options form it wants with each notification.
CREATE TABLE push_registrations (
    username TEXT NOT NULL REFERENCES accounts (username) ON DELETE CASCADE,
    service  TEXT NOT NULL,
    node     TEXT NOT NULL,
    options  TEXT,
    PRIMARY KEY (username, service, node)
);
