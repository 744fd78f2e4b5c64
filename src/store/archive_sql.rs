//! The archive query, built once for both engines: only the full-text clause differs.

use sqlx::{Database, Encode, QueryBuilder, Type};

use super::{ArchiveQuery, search_words};

/// How an engine matches words in `body`.
#[derive(Debug, Clone, Copy)]
pub enum FullText {
    /// SQLite FTS5 over the `archive_fts` table.
    Fts5,
    /// PostgreSQL's `body_tsv` column.
    TsVector,
}

/// Which archive: a user's (`archive`) or a room's (`room_archive`).
#[derive(Debug, Clone, Copy)]
pub enum Archive {
    Account,
    Room,
}

impl Archive {
    fn table(self) -> &'static str {
        match self {
            Archive::Account => "archive",
            Archive::Room => "room_archive",
        }
    }

    fn owner(self) -> &'static str {
        match self {
            Archive::Account => "username",
            Archive::Room => "room",
        }
    }
}

/// SQLite: the highest id the archive ever held. AUTOINCREMENT remembers it in
/// `sqlite_sequence` after the row is gone, so no id is handed out twice.
pub fn sqlite_last_id(archive: Archive) -> &'static str {
    match archive {
        Archive::Account => {
            "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'archive'), 0), \
             coalesce((SELECT max(id) FROM archive), 0))"
        }
        Archive::Room => {
            "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'room_archive'), 0), \
             coalesce((SELECT max(id) FROM room_archive), 0))"
        }
    }
}

/// SQLite: the statements that record `$1` as the highest id handed out, an UPDATE and, for
/// an archive that never had a row, the INSERT.
pub fn sqlite_reserve(archive: Archive) -> (&'static str, &'static str) {
    match archive {
        Archive::Account => (
            "UPDATE sqlite_sequence SET seq = ? WHERE name = 'archive'",
            "INSERT INTO sqlite_sequence (name, seq) VALUES ('archive', ?)",
        ),
        Archive::Room => (
            "UPDATE sqlite_sequence SET seq = ? WHERE name = 'room_archive'",
            "INSERT INTO sqlite_sequence (name, seq) VALUES ('room_archive', ?)",
        ),
    }
}

/// PostgreSQL: `$1` new ids from the archive's sequence, which every node of a cluster shares.
pub fn postgres_new_ids(archive: Archive) -> &'static str {
    match archive {
        Archive::Account => {
            "SELECT nextval(pg_get_serial_sequence('archive', 'id')) FROM generate_series(1, $1)"
        }
        Archive::Room => {
            "SELECT nextval(pg_get_serial_sequence('room_archive', 'id')) \
             FROM generate_series(1, $1)"
        }
    }
}

/// Rows per multi-row INSERT: 7 values each stays far below SQLite's 32,766 bound parameters.
pub const INSERT_CHUNK: usize = 1000;

/// One INSERT of up to [`INSERT_CHUNK`] archived messages, each under the id it was given.
pub fn insert<'a, DB>(archive: Archive, rows: &'a [super::NewArchived<'a>]) -> QueryBuilder<DB>
where
    DB: Database,
    i64: for<'t> Encode<'t, DB> + Type<DB>,
    &'a str: Encode<'a, DB> + Type<DB>,
{
    let mut qb = QueryBuilder::new(format!(
        "INSERT INTO {} (id, {}, with_bare, with_full, stamp_ms, body, stanza) ",
        archive.table(),
        archive.owner()
    ));
    qb.push_values(rows, |mut b, m| {
        b.push_bind(m.id)
            .push_bind(m.user)
            .push_bind(m.with_bare)
            .push_bind(m.with_full)
            .push_bind(m.stamp_ms)
            .push_bind(m.body)
            .push_bind(m.stanza);
    });
    qb
}

/// `SELECT id, stamp_ms, stanza` for one page of `query` (one row more than the page, to tell
/// whether the page is the last one).
pub fn page<DB>(
    archive: Archive,
    owner: &str,
    query: &ArchiveQuery,
    full_text: FullText,
) -> QueryBuilder<DB>
where
    DB: Database,
    i64: for<'t> Encode<'t, DB> + Type<DB>,
    String: for<'t> Encode<'t, DB> + Type<DB>,
{
    let table = archive.table();
    let mut qb = QueryBuilder::new(format!(
        "SELECT id, stamp_ms, stanza FROM {table} WHERE {} = ",
        archive.owner()
    ));
    qb.push_bind(owner.to_owned());
    if let Some(with) = &query.with {
        qb.push(if with.contains('/') {
            " AND with_full = "
        } else {
            " AND with_bare = "
        });
        qb.push_bind(with.clone());
    }
    if let Some(start) = query.start_ms {
        qb.push(" AND stamp_ms >= ");
        qb.push_bind(start);
    }
    if let Some(end) = query.end_ms {
        qb.push(" AND stamp_ms <= ");
        qb.push_bind(end);
    }
    if let Some(after) = query.after_id {
        qb.push(" AND id > ");
        qb.push_bind(after);
    }
    if let Some(before) = query.before_id {
        qb.push(" AND id < ");
        qb.push_bind(before);
    }
    if !query.ids.is_empty() {
        qb.push(" AND id IN (");
        let mut ids = qb.separated(", ");
        for id in &query.ids {
            ids.push_bind(*id);
        }
        qb.push(")");
    }
    if let Some(text) = &query.text {
        let words = search_words(text);
        match full_text {
            FullText::Fts5 => {
                // Each word quoted: FTS5 reads the sequence as "all of these".
                let expr = words
                    .iter()
                    .map(|w| format!("\"{w}\""))
                    .collect::<Vec<_>>()
                    .join(" ");
                qb.push(format!(
                    " AND id IN (SELECT rowid FROM {table}_fts WHERE {table}_fts MATCH "
                ));
                qb.push_bind(if expr.is_empty() {
                    "\"\"".to_owned()
                } else {
                    expr
                });
                qb.push(")");
            }
            FullText::TsVector => {
                qb.push(" AND body_tsv @@ plainto_tsquery('simple', ");
                qb.push_bind(words.join(" "));
                qb.push(")");
            }
        }
    }
    qb.push(if query.from_end {
        " ORDER BY id DESC LIMIT "
    } else {
        " ORDER BY id ASC LIMIT "
    });
    qb.push_bind(i64::try_from(query.max.saturating_add(1)).unwrap_or(i64::MAX));
    qb
}

/// Turns the rows of [`page`] into a page: at most `max`, oldest first.
pub fn finish(mut rows: Vec<super::ArchivedMessage>, query: &ArchiveQuery) -> super::ArchivePage {
    let complete = rows.len() <= query.max;
    rows.truncate(query.max);
    if query.from_end {
        rows.reverse();
    }
    super::ArchivePage {
        messages: rows,
        complete,
    }
}
