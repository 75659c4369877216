//! Mosquitto password files: `username:hash`, one per line.
//!
//! The hash formats are the two that `mosquitto_passwd` writes (read from Mosquitto's
//! `src/password_mosq.c` / `common/password_mosq.c`, checked against the real tool):
//! - `$6$<salt>$<hash>`: hash = SHA-512(password || salt). Mosquitto's own scheme, *not*
//!   glibc's sha512-crypt, although the prefix looks the same. Written by `mosquitto_passwd -H sha512`
//!   and by Mosquitto 1.6 and earlier.
//! - `$7$<iterations>$<salt>$<hash>`: PBKDF2-HMAC-SHA512 with that iteration count, 64-byte
//!   output. The default of `mosquitto_passwd` 2.0 (101 iterations, 12-byte salt).
//!
//! Salt and hash are standard base64 (`+/`) with `=` padding and no line breaks (OpenSSL's
//! base64 BIO with `BIO_FLAGS_BASE64_NO_NL`); we also read them without padding. Salts are 12
//! bytes (Mosquitto 2.0) or 64 bytes (later Mosquitto); the hash is always 64 bytes.
//! Plain-text passwords and other formats (`$argon2id$` from newer Mosquitto) are refused
//! with `file:line`: an operator must never believe a file protects what it does not.
//!
//! A password containing a NUL byte never verifies and cannot be set. Mosquitto hashes a
//! password only up to its first NUL (a C string there), so `"abc\0x"` would log in as `"abc"`;
//! and HMAC zero-pads its key, so for `$7$` `"abc\0"` derives the same hash as `"abc"`.
//! `mosquitto_passwd` cannot write such a password, so no existing entry is affected.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use sha2::{Digest, Sha512};

use super::AuthError;

/// `mosquitto_passwd`'s default PBKDF2 iteration count (`PW_DEFAULT_ITERATIONS` in Mosquitto 2.0).
pub const DEFAULT_ITERATIONS: u32 = 101;

/// Salt length `mosquitto_passwd` 2.0 writes, and the only one Mosquitto 2.0 reads back.
const SALT_LEN: usize = 12;
/// Salt length later Mosquitto versions write; we read it too.
const LONG_SALT_LEN: usize = 64;
/// SHA-512 output, and the PBKDF2 output length Mosquitto uses.
const HASH_LEN: usize = 64;

const FORMAT_HINT: &str = "create entries with mosquitto_passwd or roostd passwd";

/// Standard alphabet, reading with or without `=` padding (Mosquitto writes it padded).
const BASE64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// One user's stored hash.
#[derive(Clone, PartialEq, Eq)]
enum StoredHash {
    /// `$6$`: SHA-512(password || salt).
    Sha512 { salt: Vec<u8>, hash: [u8; HASH_LEN] },
    /// `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        hash: [u8; HASH_LEN],
    },
}

impl StoredHash {
    /// Parses the part after `username:`; the error is the reason, without file or user.
    fn decode(text: &str) -> Result<StoredHash, String> {
        let unknown = || "plain-text or unknown password hash format".to_owned();
        if let Some(rest) = text.strip_prefix("$6$") {
            let parts: Vec<&str> = rest.split('$').collect();
            let [salt, hash] = parts.as_slice() else {
                return Err("malformed $6$ hash (expected $6$<salt>$<hash>)".to_owned());
            };
            Ok(StoredHash::Sha512 {
                salt: decode_salt("$6$", salt)?,
                hash: decode_hash("$6$", hash)?,
            })
        } else if let Some(rest) = text.strip_prefix("$7$") {
            let parts: Vec<&str> = rest.split('$').collect();
            let [iterations, salt, hash] = parts.as_slice() else {
                return Err(
                    "malformed $7$ hash (expected $7$<iterations>$<salt>$<hash>)".to_owned(),
                );
            };
            let iterations = match iterations.parse::<u32>() {
                Ok(n) if n >= 1 => n,
                _ => {
                    return Err(format!(
                    "malformed $7$ hash (iteration count {iterations:?} is not a positive integer)"
                ))
                }
            };
            Ok(StoredHash::Pbkdf2 {
                iterations,
                salt: decode_salt("$7$", salt)?,
                hash: decode_hash("$7$", hash)?,
            })
        } else {
            Err(unknown())
        }
    }

    /// Mosquitto's textual form (what follows `username:` in the file).
    fn encode(&self) -> String {
        match self {
            StoredHash::Sha512 { salt, hash } => {
                format!("$6${}${}", STANDARD.encode(salt), STANDARD.encode(hash))
            }
            StoredHash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => format!(
                "$7${iterations}${}${}",
                STANDARD.encode(salt),
                STANDARD.encode(hash)
            ),
        }
    }

    /// Derives the hash of `password` with this entry's algorithm, salt and cost.
    fn derive(&self, password: &[u8]) -> [u8; HASH_LEN] {
        let mut out = [0u8; HASH_LEN];
        match self {
            StoredHash::Sha512 { salt, .. } => {
                let mut digest = Sha512::new();
                digest.update(password);
                digest.update(salt);
                out.copy_from_slice(&digest.finalize());
            }
            StoredHash::Pbkdf2 {
                iterations, salt, ..
            } => pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out),
        }
        out
    }

    fn expected(&self) -> &[u8; HASH_LEN] {
        match self {
            StoredHash::Sha512 { hash, .. } | StoredHash::Pbkdf2 { hash, .. } => hash,
        }
    }

    fn matches(&self, password: &[u8]) -> bool {
        constant_time_eq(&self.derive(password), self.expected())
    }

    /// What decides the cost of a verification: `None` for `$6$`, the iterations for `$7$`.
    fn cost(&self) -> Option<u32> {
        match self {
            StoredHash::Sha512 { .. } => None,
            StoredHash::Pbkdf2 { iterations, .. } => Some(*iterations),
        }
    }

    /// An entry no password matches (all-zero hash), with the given cost.
    fn dummy(cost: Option<u32>) -> StoredHash {
        let salt = vec![0x5a; SALT_LEN];
        let hash = [0u8; HASH_LEN];
        match cost {
            None => StoredHash::Sha512 { salt, hash },
            Some(iterations) => StoredHash::Pbkdf2 {
                iterations,
                salt,
                hash,
            },
        }
    }
}

fn decode_salt(kind: &str, text: &str) -> Result<Vec<u8>, String> {
    let salt = BASE64_LENIENT
        .decode(text)
        .map_err(|_| format!("malformed {kind} hash (salt is not base64)"))?;
    if salt.len() != SALT_LEN && salt.len() != LONG_SALT_LEN {
        return Err(format!(
            "malformed {kind} hash (salt is {} bytes, expected {SALT_LEN} or {LONG_SALT_LEN})",
            salt.len()
        ));
    }
    Ok(salt)
}

fn decode_hash(kind: &str, text: &str) -> Result<[u8; HASH_LEN], String> {
    let bytes = BASE64_LENIENT
        .decode(text)
        .map_err(|_| format!("malformed {kind} hash (hash is not base64)"))?;
    <[u8; HASH_LEN]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "malformed {kind} hash (hash is {} bytes, expected {HASH_LEN})",
            bytes.len()
        )
    })
}

/// Compares two byte strings in time that depends only on their length (no early exit), so
/// the position of the first wrong byte of a derived hash does not show in response times.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    // Keeps the optimizer from turning the fold back into a short-circuiting comparison.
    std::hint::black_box(diff) == 0
}

/// A parsed password file: who may log in, with which password.
pub struct PasswordFile {
    /// Username -> stored hash.
    users: HashMap<String, StoredHash>,
    /// Derived against when the username is unknown, so that costs what a known user costs
    /// (the most common algorithm and iteration count in the file).
    dummy: StoredHash,
}

impl fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFile")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl PasswordFile {
    /// Parses password file text. `origin` (usually the file name) prefixes error messages.
    ///
    /// Blank lines and lines starting with `#` are ignored; whitespace around the username and
    /// the hash is trimmed (as Mosquitto does). Every other line must be `username:hash` in a
    /// format described in the [module docs](self); a duplicate username is an error.
    pub fn parse(text: &str, origin: &str) -> Result<PasswordFile, AuthError> {
        let mut users: HashMap<String, StoredHash> = HashMap::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        // (count, first line) per cost, to pick the dummy entry deterministically.
        let mut costs: HashMap<Option<u32>, (usize, usize)> = HashMap::new();

        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((username, hash)) = line.split_once(':') else {
                return Err(AuthError::parse(
                    origin,
                    line_no,
                    format!("expected username:password_hash; {FORMAT_HINT}"),
                ));
            };
            let username = username.trim();
            let hash = hash.trim();
            if username.is_empty() {
                return Err(AuthError::parse(origin, line_no, "empty username"));
            }
            if let Some(first) = first_line.get(username) {
                return Err(AuthError::parse(
                    origin,
                    line_no,
                    format!("user {username:?} appears again (first on line {first})"),
                ));
            }
            let stored = StoredHash::decode(hash).map_err(|reason| {
                AuthError::parse(
                    origin,
                    line_no,
                    format!("user {username:?}: {reason}; {FORMAT_HINT}"),
                )
            })?;
            costs.entry(stored.cost()).or_insert((0, line_no)).0 += 1;
            first_line.insert(username.to_owned(), line_no);
            users.insert(username.to_owned(), stored);
        }

        // Most common cost wins; among equals, the one seen first.
        let dummy_cost = costs
            .into_iter()
            .max_by(|(_, (count_a, line_a)), (_, (count_b, line_b))| {
                count_a.cmp(count_b).then(line_b.cmp(line_a))
            })
            .map_or(Some(DEFAULT_ITERATIONS), |(cost, _)| cost);
        Ok(PasswordFile {
            users,
            dummy: StoredHash::dummy(dummy_cost),
        })
    }

    /// Reads and parses a password file; errors name the path and line.
    pub fn load(path: &Path) -> Result<PasswordFile, AuthError> {
        let text = fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        PasswordFile::parse(&text, &path.display().to_string())
    }

    /// Does `password` match the entry of `username`?
    ///
    /// The derived hash is compared in constant time, and an unknown username is derived
    /// against a dummy entry of the same cost, so response time tells neither how much of a
    /// password was right nor whether the user exists.
    ///
    /// A password containing a NUL byte is always refused (see the module docs).
    ///
    /// CPU-heavy for `$7$` entries (PBKDF2: about a millisecond at 101 iterations, linear in the
    /// iteration count): call it from `tokio::task::spawn_blocking`, never on a runtime worker.
    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        let (entry, known) = match self.users.get(username) {
            Some(entry) => (entry, true),
            None => (&self.dummy, false),
        };
        let matches = entry.matches(password);
        // See the module docs; checked after deriving so it costs the same.
        let no_nul = !password.contains(&0);
        // Non-short-circuiting: everything was computed whatever the user and password.
        known & matches & no_nul
    }

    /// Number of users in the file.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when the file has no users (nobody can log in with a password).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `username` has an entry (for tools and logs, not for the CONNECT path: there,
    /// use [`verify`](Self::verify) alone so user existence does not leak).
    pub fn contains_user(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }
}

/// Hashes `password` the way `mosquitto_passwd` 2.0 does by default:
/// `$7$101$<12-byte salt>$<64-byte PBKDF2-HMAC-SHA512>`, base64 with padding, so Mosquitto
/// accepts the entries we write. The salt comes from the operating system's CSPRNG.
pub fn hash_password(password: &[u8]) -> Result<String, AuthError> {
    let mut salt = vec![0u8; SALT_LEN];
    getrandom::getrandom(&mut salt).map_err(AuthError::Random)?;
    let mut stored = StoredHash::Pbkdf2 {
        iterations: DEFAULT_ITERATIONS,
        salt,
        hash: [0u8; HASH_LEN],
    };
    let derived = stored.derive(password);
    if let StoredHash::Pbkdf2 { hash, .. } = &mut stored {
        *hash = derived;
    }
    Ok(stored.encode())
}

/// Checks that `username` survives a round trip through a password file.
fn validate_username(username: &str) -> Result<(), AuthError> {
    let invalid = |reason| {
        Err(AuthError::InvalidUsername {
            username: username.to_owned(),
            reason,
        })
    };
    if username.is_empty() {
        return invalid("is empty");
    }
    if username.len() > usize::from(u16::MAX) {
        return invalid("is longer than 65535 bytes");
    }
    if username.contains(':') {
        return invalid("contains ':', which separates username and hash in the file");
    }
    if username.chars().any(char::is_control) {
        return invalid("contains a control character");
    }
    if username.trim() != username {
        return invalid("has leading or trailing whitespace, which the file format trims");
    }
    if username.starts_with('#') {
        return invalid("starts with '#', which would make its line a comment");
    }
    Ok(())
}

/// The username a password file line is about, if it is an entry at all.
fn line_username(line: &str) -> Option<&str> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    line.split_once(':').map(|(user, _)| user.trim())
}

/// `text` with `username`'s entry replaced by `entry` (a whole `user:hash` line without line
/// ending), or `entry` appended. Every other line, comments included, is kept byte for byte;
/// later duplicates of the user are dropped.
fn replace_user_line(text: &str, username: &str, entry: &str) -> String {
    let mut out = String::with_capacity(text.len() + entry.len() + 1);
    let mut replaced = false;
    for line in text.split_inclusive('\n') {
        let content = line.trim_end_matches(['\n', '\r']);
        if line_username(content) == Some(username) {
            if !replaced {
                out.push_str(entry);
                out.push_str(&line[content.len()..]);
                if !line.ends_with('\n') {
                    out.push('\n');
                }
                replaced = true;
            }
            continue;
        }
        out.push_str(line);
    }
    if !replaced {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(entry);
        out.push('\n');
    }
    out
}

/// Adds `username` with a new `$7$` hash of `password` to the password file at `path`, or
/// replaces its entry, keeping every other line and comment as it was. Refuses usernames the
/// file format cannot hold (`:`, control characters, surrounding spaces, a leading `#`) and
/// passwords containing NUL.
///
/// The file is created if missing (mode 0600 on unix); an existing file keeps its permission
/// bits. The new content goes to a temporary file in the same directory which is then renamed
/// over the old one, so a crash leaves either the old or the new file, never half of one.
/// A symlink is followed: the file it points to is replaced.
pub fn set_user(path: &Path, username: &str, password: &[u8]) -> Result<(), AuthError> {
    validate_username(username)?;
    if password.contains(&0) {
        return Err(AuthError::InvalidPassword(
            "contains a NUL byte, which Mosquitto and roostd never accept at login",
        ));
    }
    let entry = format!("{username}:{}", hash_password(password)?);

    let read_error = |source| AuthError::Read {
        path: path.to_path_buf(),
        source,
    };
    let target = match fs::canonicalize(path) {
        Ok(target) => target,
        Err(e) if e.kind() == io::ErrorKind::NotFound => path.to_path_buf(),
        Err(e) => return Err(read_error(e)),
    };
    let (existing, permissions) = match fs::read_to_string(&target) {
        Ok(text) => {
            let permissions = fs::metadata(&target).map_err(read_error)?.permissions();
            (text, Some(permissions))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => (String::new(), None),
        Err(e) => return Err(read_error(e)),
    };
    let updated = replace_user_line(&existing, username, &entry);
    write_atomically(&target, updated.as_bytes(), permissions)
}

/// `mosquitto_passwd -c`: writes a new password file at `path` holding only `username`
/// (replacing any file there), mode 0600.
pub fn create_with_user(path: &Path, username: &str, password: &[u8]) -> Result<(), AuthError> {
    validate_username(username)?;
    if password.contains(&0) {
        return Err(AuthError::InvalidPassword(
            "contains a NUL byte, which Mosquitto and roostd never accept at login",
        ));
    }
    let entry = format!("{username}:{}\n", hash_password(password)?);
    write_atomically(path, entry.as_bytes(), None)
}

/// An existing password file to edit in place: the file a link points to, its text and its
/// permission bits (kept when it is written back).
fn read_for_update(path: &Path) -> Result<(PathBuf, String, fs::Permissions), AuthError> {
    let read_error = |source| AuthError::Read {
        path: path.to_path_buf(),
        source,
    };
    let target = fs::canonicalize(path).map_err(read_error)?;
    let text = fs::read_to_string(&target).map_err(read_error)?;
    let permissions = fs::metadata(&target).map_err(read_error)?.permissions();
    Ok((target, text, permissions))
}

/// `mosquitto_passwd -D`: removes `username`'s entry, keeping every other line. False if the
/// file has no such user (the file is then left untouched).
pub fn delete_user(path: &Path, username: &str) -> Result<bool, AuthError> {
    let (target, text, permissions) = read_for_update(path)?;
    let mut out = String::with_capacity(text.len());
    let mut found = false;
    for line in text.split_inclusive('\n') {
        if line_username(line.trim_end_matches(['\n', '\r'])) == Some(username) {
            found = true;
            continue;
        }
        out.push_str(line);
    }
    if found {
        write_atomically(&target, out.as_bytes(), Some(permissions))?;
    }
    Ok(found)
}

/// `mosquitto_passwd -U`: hashes, in place, every `user:password` line whose password is
/// plain text. Lines already holding a hash (`$6$`, `$7$`) are kept as they are (Mosquitto
/// would hash them again and lock their users out). Returns how many were hashed.
pub fn hash_plain_file(path: &Path) -> Result<usize, AuthError> {
    let (target, text, permissions) = read_for_update(path)?;
    let origin = path.display().to_string();
    let mut out = String::with_capacity(text.len() * 2);
    let mut hashed = 0;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let content = line.trim_end_matches(['\n', '\r']);
        let entry = line_username(content).and_then(|user| {
            let (_, secret) = content.split_once(':')?;
            Some((user, secret))
        });
        match entry {
            Some((user, secret)) if !secret.starts_with("$6$") && !secret.starts_with("$7$") => {
                validate_username(user)
                    .map_err(|e| AuthError::parse(&origin, n + 1, e.to_string()))?;
                out.push_str(user);
                out.push(':');
                out.push_str(&hash_password(secret.as_bytes())?);
                out.push_str(&line[content.len()..]);
                if !line.ends_with('\n') {
                    out.push('\n');
                }
                hashed += 1;
            }
            _ => out.push_str(line),
        }
    }
    if hashed > 0 {
        write_atomically(&target, out.as_bytes(), Some(permissions))?;
    }
    Ok(hashed)
}

/// Distinguishes temporary files of concurrent writers within one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `contents` to `target` through a temporary sibling and a rename.
fn write_atomically(
    target: &Path,
    contents: &[u8],
    permissions: Option<fs::Permissions>,
) -> Result<(), AuthError> {
    let write_error = |path: &Path, source| AuthError::Write {
        path: path.to_path_buf(),
        source,
    };
    let Some(file_name) = target.file_name() else {
        return Err(write_error(
            target,
            io::Error::new(io::ErrorKind::InvalidInput, "not a file path"),
        ));
    };
    let dir = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let temp = dir.join(format!(
        ".{}.tmp-{}-{}",
        file_name.to_string_lossy(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));

    let result = (|| {
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&temp)?;
        if let Some(permissions) = permissions {
            file.set_permissions(permissions)?;
        }
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temp, target)
    })();
    if let Err(source) = result {
        let _ = fs::remove_file(&temp);
        return Err(write_error(target, source));
    }
    // Make the rename itself durable; the file is already complete, so this is best effort.
    #[cfg(unix)]
    if let Ok(dir) = fs::File::open(&dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by the real `mosquitto_passwd` 2.0.11 (Debian 12):
    /// `-b` (default `$7$`, 101 iterations), `-H sha512 -b` (`$6$`), `-I 1000 -b`.
    const MOSQUITTO_FILE: &str = "\
alice:$7$101$3pOJUFZSyDi/mtMh$MhMvJfQkFw4y4FVcXYBdqZ+6KzAMo6JRzZeG6mfUrv/Q+ZxtQeZv6QbfBRPYcYDWaL8UrS4Emavfd3ux7xcnVg==
bob:$6$3dxiKjUkyf4v5IDf$uIn5p7KhW4D4otWUNdJ6WDvYwrMrffPevtvMYhXo6loTQnQMyzbFy15U4P3S5uUoG6dp7jLMwcSbLpPXH6/pNg==
carol:$7$1000$0nCnDLAhgYcVlF+V$w4rTHaKNTShK98OCRYbvEoLMePa6y0TePHZ6fYA/tqP7gRQSf5a+24HA+28rsYNxG4NvGQddjQhHI7r1MRDAFA==
dave:$6$/sOkmFrGu0CNXsxL$8Ar3+hTabAPVgUj6KwDYk6fyay42wyillBS1h0wGvibCrHQjaS5YwhN0MN2VaxhaQZ9KW4irSM4SzfIIicphxA==
erin:$7$101$lYQIClAi5H1wjZ1r$pC7prEc0wJ4IJbpo+qsZOBDa7SSj9i0CIWRUhBByu182sOTUD3ZfyGXmg5Gc39tNbpc3CkasdzHmfCWN4ruIrQ==
";

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "roostd-auth-{name}-{}-{}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    fn parse_error(text: &str) -> String {
        match PasswordFile::parse(text, "passwords.txt") {
            Ok(_) => panic!("expected an error for {text:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn mosquitto_pbkdf2_entries_verify() {
        let file = PasswordFile::parse(MOSQUITTO_FILE, "vectors").expect("parse");
        assert_eq!(file.len(), 5);
        assert!(file.verify("alice", b"correct horse"));
        assert!(file.verify("carol", "pässwörd ✓".as_bytes()));
        assert!(file.verify("erin", b""));
    }

    #[test]
    fn mosquitto_sha512_entries_verify() {
        let file = PasswordFile::parse(MOSQUITTO_FILE, "vectors").expect("parse");
        assert!(file.verify("bob", b"hunter2"));
        assert!(file.verify("dave", b""));
    }

    #[test]
    fn long_salts_and_unpadded_base64_are_read() {
        // Made with Python's hashlib: a 64-byte salt (later Mosquitto) and a hash without '='.
        let text = "\
frank:$7$1000$AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==$n+V9SCsiO+gwA/qjdjQMMw7MwGYSwyA29DHs/gIKEAHGcxsim2Cn/dWUam7T2Rni4QEEwPvg22OiDMZDREfxaQ==
gina:$6$ZGVmZ2hpamtsbW5v$lgLANuZVMVEgeUn9pb4gRyKrXjxFB9NXO8yq0ZPwq4qqZZjVsdW4Ou0vZCndv2LeQf45S2fAdkqsJFyBOP+39g
";
        let file = PasswordFile::parse(text, "vectors").expect("parse");
        assert!(file.verify("frank", b"long salt"));
        assert!(file.verify("gina", b"unpadded"));
    }

    #[test]
    fn wrong_password_is_refused() {
        let file = PasswordFile::parse(MOSQUITTO_FILE, "vectors").expect("parse");
        assert!(!file.verify("alice", b"correct horsE"));
        assert!(!file.verify("alice", b""));
        assert!(!file.verify("bob", b"hunter2 "));
        assert!(!file.verify("erin", b"x"));
        // Another user's password.
        assert!(!file.verify("alice", b"hunter2"));
    }

    #[test]
    fn password_with_nul_byte_never_verifies() {
        let file = PasswordFile::parse(MOSQUITTO_FILE, "vectors").expect("parse");
        // HMAC zero-pads its key: for $7$ these derive the stored hash, yet are refused.
        assert!(!file.verify("erin", b"\0"));
        assert!(!file.verify("alice", b"correct horse\0"));
        // Mosquitto would stop at the NUL and accept these.
        assert!(!file.verify("bob", b"hunter2\0extra"));
        assert!(!file.verify("alice", b"correct horse\0x"));
    }

    #[test]
    fn unknown_user_is_refused() {
        let file = PasswordFile::parse(MOSQUITTO_FILE, "vectors").expect("parse");
        assert!(!file.verify("mallory", b"correct horse"));
        assert!(!file.verify("", b""));
        assert!(!file.verify("Alice", b"correct horse"));
        assert!(!file.contains_user("mallory"));
        assert!(file.contains_user("alice"));
    }

    #[test]
    fn unknown_user_is_derived_against_the_most_common_cost() {
        let file = PasswordFile::parse(MOSQUITTO_FILE, "vectors").expect("parse");
        // Two $7$ 101, two $6$, one $7$ 1000: the tie goes to the first seen ($7$ 101).
        assert_eq!(file.dummy.cost(), Some(101));
        let empty = PasswordFile::parse("# nobody\n", "empty").expect("parse");
        assert!(empty.is_empty());
        assert_eq!(empty.dummy.cost(), Some(DEFAULT_ITERATIONS));
        assert!(!empty.verify("anyone", b""));
        let sha = PasswordFile::parse(
            "bob:$6$3dxiKjUkyf4v5IDf$uIn5p7KhW4D4otWUNdJ6WDvYwrMrffPevtvMYhXo6loTQnQMyzbFy15U4P3S5uUoG6dp7jLMwcSbLpPXH6/pNg==\n",
            "sha",
        )
        .expect("parse");
        assert_eq!(sha.dummy.cost(), None);
    }

    #[test]
    fn comments_blank_lines_and_whitespace_are_ignored() {
        let text = format!(
            "# users\n\n   \n  # indented comment\r\n  {}  \r\n",
            MOSQUITTO_FILE.lines().next().expect("line")
        );
        let file = PasswordFile::parse(&text, "p").expect("parse");
        assert_eq!(file.len(), 1);
        assert!(file.verify("alice", b"correct horse"));
    }

    #[test]
    fn plain_text_password_is_refused_with_file_line_and_user() {
        let text = "# comment\nalice:$7$101$3pOJUFZSyDi/mtMh$MhMvJfQkFw4y4FVcXYBdqZ+6KzAMo6JRzZeG6mfUrv/Q+ZxtQeZv6QbfBRPYcYDWaL8UrS4Emavfd3ux7xcnVg==\nbob:hunter2\n";
        assert_eq!(
            parse_error(text),
            "passwords.txt:3: user \"bob\": plain-text or unknown password hash format; \
             create entries with mosquitto_passwd or roostd passwd"
        );
    }

    #[test]
    fn unknown_hash_formats_are_refused() {
        for hash in [
            "$argon2id$v=19$m=47104,t=1,p=1$c2FsdA$aGFzaA",
            "$5$abc$def",
            "$1$abc$def",
            "$6$only-one-part",
            "$7$101$salt",
            "",
        ] {
            let message = parse_error(&format!("bob:{hash}\n"));
            assert!(
                message.starts_with("passwords.txt:1: user \"bob\": "),
                "{hash}: {message}"
            );
            assert!(message.ends_with("roostd passwd"), "{hash}: {message}");
        }
    }

    #[test]
    fn bad_base64_salt_or_hash_is_refused() {
        let good_hash = "MhMvJfQkFw4y4FVcXYBdqZ+6KzAMo6JRzZeG6mfUrv/Q+ZxtQeZv6QbfBRPYcYDWaL8UrS4Emavfd3ux7xcnVg==";
        let message = parse_error(&format!("\nbob:$7$101$not*base64!$${good_hash}\n"));
        assert!(
            message.starts_with("passwords.txt:2: user \"bob\""),
            "{message}"
        );
        let message = parse_error(&format!("bob:$7$101$no*base64*$ {good_hash}\n"));
        assert!(message.contains("salt is not base64"), "{message}");
        let message = parse_error("bob:$6$3dxiKjUkyf4v5IDf$%%%%\n");
        assert!(message.contains("hash is not base64"), "{message}");
        // Valid base64 of the wrong lengths.
        let message = parse_error(&format!("bob:$7$101$AAAA${good_hash}\n"));
        assert!(message.contains("salt is 3 bytes"), "{message}");
        let message = parse_error("bob:$6$3dxiKjUkyf4v5IDf$AAAA\n");
        assert!(message.contains("hash is 3 bytes"), "{message}");
    }

    #[test]
    fn bad_iteration_counts_are_refused() {
        let rest = "3pOJUFZSyDi/mtMh$MhMvJfQkFw4y4FVcXYBdqZ+6KzAMo6JRzZeG6mfUrv/Q+ZxtQeZv6QbfBRPYcYDWaL8UrS4Emavfd3ux7xcnVg==";
        for iterations in ["0", "-1", "abc", "", "101abc", "99999999999"] {
            let message = parse_error(&format!("bob:$7${iterations}${rest}\n"));
            assert!(
                message.contains("iteration count"),
                "{iterations}: {message}"
            );
        }
    }

    #[test]
    fn line_without_colon_or_username_is_refused() {
        assert_eq!(
            parse_error("alice\n"),
            "passwords.txt:1: expected username:password_hash; \
             create entries with mosquitto_passwd or roostd passwd"
        );
        assert_eq!(
            parse_error("\n\n :$6$x$y\n"),
            "passwords.txt:3: empty username"
        );
    }

    #[test]
    fn duplicate_user_is_refused() {
        let alice = MOSQUITTO_FILE.lines().next().expect("line");
        let text = format!("{alice}\n# again\n{alice}\n");
        assert_eq!(
            parse_error(&text),
            "passwords.txt:3: user \"alice\" appears again (first on line 1)"
        );
    }

    #[test]
    fn load_names_the_path_in_errors() {
        let dir = temp_dir("load");
        let path = dir.join("passwords.txt");
        fs::write(&path, "bob:hunter2\n").expect("write");
        let message = PasswordFile::load(&path)
            .expect_err("plain text")
            .to_string();
        assert!(
            message.starts_with(&format!("{}:1: user \"bob\"", path.display())),
            "{message}"
        );
        let missing = dir.join("missing.txt");
        let message = PasswordFile::load(&missing)
            .expect_err("missing")
            .to_string();
        assert!(
            message.starts_with(&format!("reading {}: ", missing.display())),
            "{message}"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn hash_password_round_trips_in_mosquitto_format() {
        let entry = hash_password(b"s3cret").expect("hash");
        let parts: Vec<&str> = entry.split('$').collect();
        assert_eq!(parts.len(), 5, "{entry}");
        assert_eq!((parts[0], parts[1], parts[2]), ("", "7", "101"));
        // 12 bytes -> 16 base64 chars without padding; 64 bytes -> 88 chars ending "==".
        assert_eq!(parts[3].len(), 16, "{entry}");
        assert_eq!(STANDARD.decode(parts[3]).expect("salt").len(), SALT_LEN);
        assert_eq!(parts[4].len(), 88, "{entry}");
        assert!(parts[4].ends_with("=="), "{entry}");

        let file = PasswordFile::parse(&format!("me:{entry}\n"), "new").expect("parse");
        assert!(file.verify("me", b"s3cret"));
        assert!(!file.verify("me", b"s3cret!"));
        // Fresh salt each time.
        assert_ne!(hash_password(b"s3cret").expect("hash"), entry);
    }

    #[test]
    fn stored_hash_encoding_round_trips() {
        for line in MOSQUITTO_FILE.lines() {
            let (_, text) = line.split_once(':').expect("colon");
            let stored = StoredHash::decode(text).expect("decode");
            assert_eq!(stored.encode(), text);
        }
    }

    #[test]
    fn constant_time_eq_compares_all_bytes() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"xbc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        let a = [7u8; 64];
        let mut b = a;
        b[63] ^= 0x80;
        assert!(!constant_time_eq(&a, &b));
    }

    #[test]
    fn set_user_creates_a_private_file() {
        let dir = temp_dir("create");
        let path = dir.join("passwd");
        set_user(&path, "alice", b"pw1").expect("set_user");
        let text = fs::read_to_string(&path).expect("read");
        assert!(
            text.starts_with("alice:$7$101$") && text.ends_with('\n'),
            "{text}"
        );
        assert_eq!(text.lines().count(), 1);
        assert!(PasswordFile::load(&path)
            .expect("load")
            .verify("alice", b"pw1"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temporary file left behind.
        assert_eq!(fs::read_dir(&dir).expect("dir").count(), 1);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn set_user_adds_and_replaces_preserving_other_lines_and_comments() {
        let dir = temp_dir("replace");
        let path = dir.join("passwd");
        let original = format!(
            "# operators: keep this comment\n{}\n\n# second comment\n{}",
            MOSQUITTO_FILE.lines().next().expect("alice"),
            MOSQUITTO_FILE.lines().nth(1).expect("bob"),
        );
        fs::write(&path, &original).expect("write");

        set_user(&path, "alice", b"new alice").expect("replace alice");
        set_user(&path, "zoe", b"zoe pw").expect("add zoe");

        let text = fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        assert_eq!(lines[0], "# operators: keep this comment");
        assert!(lines[1].starts_with("alice:$7$101$"), "{text}");
        assert_ne!(lines[1], MOSQUITTO_FILE.lines().next().expect("alice"));
        assert_eq!(lines[2], "");
        assert_eq!(lines[3], "# second comment");
        assert_eq!(lines[4], MOSQUITTO_FILE.lines().nth(1).expect("bob"));
        assert!(lines[5].starts_with("zoe:$7$101$"), "{text}");

        let file = PasswordFile::load(&path).expect("load");
        assert!(file.verify("alice", b"new alice"));
        assert!(!file.verify("alice", b"correct horse"));
        assert!(file.verify("bob", b"hunter2"));
        assert!(file.verify("zoe", b"zoe pw"));
        let _ = fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn set_user_keeps_the_mode_of_an_existing_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("mode");
        let path = dir.join("passwd");
        fs::write(&path, "").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).expect("chmod");
        set_user(&path, "alice", b"pw").expect("set_user");
        let mode = fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn replace_user_line_keeps_line_endings_and_drops_duplicates() {
        let text = "a:1\r\nb:2\r\n# b:commented\r\nb:3\nc:4";
        assert_eq!(
            replace_user_line(text, "b", "b:new"),
            "a:1\r\nb:new\r\n# b:commented\r\nc:4"
        );
        assert_eq!(replace_user_line("c:4", "d", "d:5"), "c:4\nd:5\n");
        assert_eq!(replace_user_line("", "d", "d:5"), "d:5\n");
        assert_eq!(replace_user_line("d:1", "d", "d:5"), "d:5\n");
        assert_eq!(replace_user_line(" d : x\n", "d", "d:5"), "d:5\n");
    }

    #[test]
    fn set_user_refuses_usernames_the_file_cannot_hold() {
        let dir = temp_dir("names");
        let path = dir.join("passwd");
        for bad in ["a:b", "", "new\nline", " padded", "#comment", "tab\t"] {
            let err = set_user(&path, bad, b"pw").expect_err(bad);
            assert!(
                matches!(err, AuthError::InvalidUsername { .. }),
                "{bad}: {err}"
            );
        }
        let err = set_user(&path, "ok", b"a\0b").expect_err("nul");
        assert!(matches!(err, AuthError::InvalidPassword(_)), "{err}");
        assert!(!path.exists());
        let _ = fs::remove_dir_all(&dir);
    }

    /// Creates entries with the real `mosquitto_passwd` and verifies them with ours.
    /// Skipped when the tool is missing, unless `ROOSTD_REQUIRE_INTEROP=1`.
    #[test]
    fn mosquitto_passwd_interop() {
        let tool = Path::new("/usr/bin/mosquitto_passwd");
        if !tool.exists() {
            if std::env::var("ROOSTD_REQUIRE_INTEROP").as_deref() == Ok("1") {
                panic!("ROOSTD_REQUIRE_INTEROP=1 but {} not found", tool.display());
            }
            println!("skipped: mosquitto_passwd not found");
            return;
        }
        let dir = temp_dir("interop");
        let path = dir.join("passwd");
        // Empty: mosquitto_passwd 2.0 stops at a comment or blank line ("Corrupt password
        // file"), drops the rest of the file and still exits 0.
        fs::write(&path, "").expect("write");
        let cases: [(&[&str], &str, &str); 4] = [
            (&[], "pbkdf2", "pässwörd ✓ with spaces"),
            (&["-H", "sha512"], "sha512", "hunter2"),
            (&["-H", "sha512-pbkdf2", "-I", "1234"], "many", "iterations"),
            (&[], "empty", ""),
        ];
        for (flags, user, password) in cases {
            let status = std::process::Command::new(tool)
                .args(flags)
                .arg("-b")
                .arg(&path)
                .arg(user)
                .arg(password)
                .status()
                .expect("run mosquitto_passwd");
            assert!(status.success(), "mosquitto_passwd {flags:?} {user}");
        }
        // And one of ours in the same file, which mosquitto_passwd must then keep.
        set_user(&path, "ours", b"roostd").expect("set_user");
        let status = std::process::Command::new(tool)
            .arg("-b")
            .arg(&path)
            .arg("late")
            .arg("after ours")
            .status()
            .expect("run mosquitto_passwd");
        assert!(status.success());

        let file = PasswordFile::load(&path).expect("load mosquitto's file");
        assert_eq!(file.len(), 6);
        for (_, user, password) in cases {
            assert!(file.verify(user, password.as_bytes()), "{user}");
            assert!(!file.verify(user, b"wrong"), "{user}");
        }
        assert!(file.verify("ours", b"roostd"));
        assert!(file.verify("late", b"after ours"));
        let text = fs::read_to_string(&path).expect("read");
        assert!(text.contains("many:$7$1234$"), "{text}");
        assert!(text.contains("sha512:$6$"), "{text}");
        let _ = fs::remove_dir_all(&dir);
    }

    /// mosquitto_passwd's -c, -D and -U (issue 12): create replaces the file with one user,
    /// delete keeps every other line, -U hashes plain-text lines only.
    #[test]
    fn create_delete_and_hash_plain_text_in_place() {
        let dir = temp_dir("flags");
        let path = dir.join("passwd");
        set_user(&path, "old", b"x").unwrap();
        create_with_user(&path, "alice", b"secret").unwrap();
        let f = PasswordFile::load(&path).unwrap();
        assert!(f.verify("alice", b"secret") && !f.contains_user("old"));
        set_user(&path, "bob", b"builder").unwrap();
        assert!(delete_user(&path, "alice").unwrap());
        assert!(!delete_user(&path, "alice").unwrap());
        let f = PasswordFile::load(&path).unwrap();
        assert!(!f.contains_user("alice") && f.verify("bob", b"builder"));
        let hashed_bob = fs::read_to_string(&path).unwrap();
        fs::write(&path, format!("# users\ncarol:plain pw\n{hashed_bob}")).unwrap();
        assert_eq!(hash_plain_file(&path).unwrap(), 1);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# users\ncarol:$7$"), "{text}");
        assert!(
            text.ends_with(&hashed_bob),
            "the hashed line is kept byte for byte"
        );
        let f = PasswordFile::load(&path).unwrap();
        assert!(f.verify("carol", b"plain pw") && f.verify("bob", b"builder"));
        assert_eq!(hash_plain_file(&path).unwrap(), 0);
        let _ = fs::remove_dir_all(&dir);
    }
}
