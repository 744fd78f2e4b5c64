-- Private XML storage (XEP-0049): each account's fragments, one per element name and namespace.
CREATE TABLE private_data (
    username  TEXT NOT NULL REFERENCES accounts (username) ON DELETE CASCADE,
    namespace TEXT NOT NULL,
    name      TEXT NOT NULL,
    xml       TEXT NOT NULL,
    PRIMARY KEY (username, namespace, name)
);
