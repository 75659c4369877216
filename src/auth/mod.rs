//! Authentication and authorization from Mosquitto-compatible files.
//!
//! Operators bring the files they already have:
//! - [`password`]: a `password_file` as `mosquitto_passwd` writes it (`$6$` and `$7$` hashes),
//!   checked at CONNECT, and edited by `roostd passwd` ([`password::set_user`]).
//! - [`acl`]: an `acl_file` (`user`, `topic`, `pattern` lines), checked on PUBLISH, SUBSCRIBE
//!   and every delivered message.
//!
//! Both parse the whole file up front and refuse anything they do not understand with
//! `file:line`, so a typo stops the broker at startup instead of silently opening (or closing)
//! access at runtime.

use std::path::PathBuf;

use thiserror::Error;

pub mod acl;
pub mod live;
pub mod password;

pub use acl::{filter_covers, filter_overlaps, Acl};
pub use password::{
    create_with_user, delete_user, hash_password, hash_plain_file, set_user, PasswordFile,
};

/// Why a password file or ACL file could not be read, parsed or written.
#[derive(Debug, Error)]
pub enum AuthError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file (or its temporary sibling) could not be written or renamed into place.
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A line of a password or ACL file is malformed; `origin` is usually the file name.
    #[error("{origin}:{line}: {message}")]
    Parse {
        origin: String,
        line: usize,
        message: String,
    },
    /// A username that cannot be stored in a password file.
    #[error("username {username:?} {reason}")]
    InvalidUsername {
        username: String,
        reason: &'static str,
    },
    /// A password that cannot be stored.
    #[error("password {0}")]
    InvalidPassword(&'static str),
    /// The operating system gave no random bytes for a salt.
    #[error("no randomness for the password salt: {0}")]
    Random(getrandom::Error),
}

impl AuthError {
    pub(crate) fn parse(origin: &str, line: usize, message: impl Into<String>) -> Self {
        AuthError::Parse {
            origin: origin.to_owned(),
            line,
            message: message.into(),
        }
    }
}
