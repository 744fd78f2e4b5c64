//! Creating the benchmark accounts quickly: straight into rookery's store, and as Prosody
//! account files. `rookery user add` and `prosodyctl register` cost a process and a key
//! derivation per user, which for tens of thousands of users takes minutes.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("store: {0}")]
    Store(#[from] rookery::store::StoreError),
    #[error("credentials: {0}")]
    Auth(#[from] rookery::auth::AuthError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Accounts in rookery's store. Every account gets the same password and, so that provisioning
/// derives keys once, the same salt: acceptable for throwaway benchmark accounts only.
pub async fn rookery(
    url: &str,
    users: usize,
    prefix: &str,
    password: &str,
) -> Result<(), ProvisionError> {
    let store = rookery::store::open(url).await?;
    let creds = rookery::auth::scram::derive_credentials(
        password,
        rookery::auth::scram::DEFAULT_ITERATIONS,
    )?;
    for i in 1..=users {
        match store.create_account(&format!("{prefix}{i}"), &creds).await {
            Ok(()) | Err(rookery::store::StoreError::AccountExists) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Prosody's internal_hashed account files (`<data>/<host>/accounts/<user>.dat`), holding the
/// SCRAM-SHA-1 keys Prosody 0.12 uses.
pub fn prosody(
    data_dir: &Path,
    domain: &str,
    users: usize,
    prefix: &str,
    password: &str,
) -> Result<(), ProvisionError> {
    let creds = rookery::auth::scram::derive_credentials(
        password,
        rookery::auth::scram::DEFAULT_ITERATIONS,
    )?;
    // Prosody escapes '.' and other characters in host directory names as %XX.
    let host: String = domain
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_string()
            } else {
                format!("%{:02x}", c as u32)
            }
        })
        .collect();
    let dir = data_dir.join(host).join("accounts");
    std::fs::create_dir_all(&dir).map_err(|source| ProvisionError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let salt: String = creds.salt.iter().map(|b| format!("\\{b:03}")).collect();
    let body = format!(
        "return {{\n\t[\"iteration_count\"] = {};\n\t[\"salt\"] = \"{salt}\";\n\t\
         [\"stored_key\"] = \"{}\";\n\t[\"server_key\"] = \"{}\";\n}};\n",
        creds.iterations,
        hex(&creds.sha1.stored_key),
        hex(&creds.sha1.server_key),
    );
    for i in 1..=users {
        let path = dir.join(format!("{prefix}{i}.dat"));
        std::fs::write(&path, &body).map_err(|source| ProvisionError::Io {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(())
}
