//! The command line: `rookery serve`, `rookery migrate` and `rookery user …`.

use std::io::BufRead;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "rookery", version, about = "An XMPP server")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve {
        /// The configuration file; without one, the embedded defaults apply.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Create or update the database schema, then exit (start-up does the same).
    Migrate {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Manage accounts.
    User {
        /// The configuration file that names the store.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: UserAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserAction {
    /// Create an account; the password is read from standard input when not given.
    Add {
        jid: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Change an account's password.
    Passwd {
        jid: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Delete an account and everything stored for it.
    Delete { jid: String },
    /// List the accounts.
    List,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("`{0}` is not a valid JID or username")]
    BadJid(String),
    #[error("`{jid}` is not on this server's domain `{domain}`")]
    WrongDomain { jid: String, domain: String },
    #[error("the password must not be empty")]
    EmptyPassword,
    #[error("cannot read the password from standard input: {0}")]
    Stdin(std::io::Error),
}

/// The username of a JID (or bare username) on `domain`.
pub fn username_for(jid: &str, domain: &str) -> Result<String, UserError> {
    let (user, dom) = match jid.split_once('@') {
        Some((u, d)) => (u, Some(d)),
        None => (jid, None),
    };
    if let Some(d) = dom {
        let d = crate::jid::normalize_domain(d).map_err(|_| UserError::BadJid(jid.into()))?;
        if d != domain {
            return Err(UserError::WrongDomain {
                jid: jid.into(),
                domain: domain.into(),
            });
        }
    }
    crate::jid::normalize_user(user).map_err(|_| UserError::BadJid(jid.into()))
}

/// The given password, or one line read from standard input.
pub fn password(given: Option<String>) -> Result<String, UserError> {
    let pw = match given {
        Some(p) => p,
        None => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(UserError::Stdin)?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    if pw.is_empty() {
        return Err(UserError::EmptyPassword);
    }
    Ok(pw)
}
