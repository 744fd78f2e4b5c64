//! The SQLite store (the embedded default).

use super::StoreResult;

/// Placeholder until the SQLite implementation lands.
pub struct SqliteStore;

impl SqliteStore {
    pub async fn open(url: &str) -> StoreResult<SqliteStore> {
        Err(super::StoreError::UnsupportedUrl(url.to_owned()))
    }
}
