//! The password file and ACL in force, shared by every connection, and their reload: on
//! SIGHUP and when a file's contents change, the file is parsed again; a file with an error is
//! refused (logged, counted) and the previous rules stay in force.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::{Acl, AuthError, PasswordFile};

/// Password checks (PBKDF2, deliberately slow) running at once at most; the rest wait, so a
/// flood of bad CONNECTs occupies a bounded number of blocking threads.
pub const MAX_CONCURRENT_PASSWORD_CHECKS: usize = 4;

/// One watched file and what was last loaded from it.
struct Watched<T> {
    path: PathBuf,
    contents: Vec<u8>,
    value: Arc<T>,
}

/// Authentication and authorization in force.
pub struct AuthState {
    passwords: RwLock<Option<Watched<PasswordFile>>>,
    acl: RwLock<Option<Watched<Acl>>>,
    /// Bounds concurrent password checks.
    pub checks: Arc<Semaphore>,
}

fn read(path: &PathBuf) -> Result<Vec<u8>, AuthError> {
    std::fs::read(path).map_err(|source| AuthError::Read {
        path: path.clone(),
        source,
    })
}

fn load_watched<T>(
    path: &PathBuf,
    parse: fn(&str, &str) -> Result<T, AuthError>,
) -> Result<Watched<T>, AuthError> {
    let contents = read(path)?;
    let text = String::from_utf8_lossy(&contents);
    let value = parse(&text, &path.display().to_string())?;
    Ok(Watched {
        path: path.clone(),
        contents,
        value: Arc::new(value),
    })
}

impl AuthState {
    /// Loads the configured files; any error stops startup.
    pub fn load(
        password_file: Option<&PathBuf>,
        acl_file: Option<&PathBuf>,
    ) -> Result<AuthState, AuthError> {
        let passwords = password_file
            .map(|p| load_watched(p, PasswordFile::parse))
            .transpose()?;
        let acl = acl_file.map(|p| load_watched(p, Acl::parse)).transpose()?;
        Ok(AuthState {
            passwords: RwLock::new(passwords),
            acl: RwLock::new(acl),
            checks: Arc::new(Semaphore::new(MAX_CONCURRENT_PASSWORD_CHECKS)),
        })
    }

    /// The password file in force, if one is configured.
    pub fn passwords(&self) -> Option<Arc<PasswordFile>> {
        self.passwords.read().as_ref().map(|w| w.value.clone())
    }

    /// The ACL in force, if one is configured.
    pub fn acl(&self) -> Option<Arc<Acl>> {
        self.acl.read().as_ref().map(|w| w.value.clone())
    }

    /// Re-reads both files; a changed file that parses replaces the old rules. Returns the
    /// errors of files that were refused.
    pub fn reload(&self) -> Vec<AuthError> {
        let mut errors = Vec::new();
        if let Err(e) = reload_one(&self.passwords, PasswordFile::parse, "password file") {
            errors.push(e);
        }
        if let Err(e) = reload_one(&self.acl, Acl::parse, "ACL file") {
            errors.push(e);
        }
        errors
    }
}

fn reload_one<T>(
    slot: &RwLock<Option<Watched<T>>>,
    parse: fn(&str, &str) -> Result<T, AuthError>,
    what: &str,
) -> Result<(), AuthError> {
    let Some(path) = slot.read().as_ref().map(|w| w.path.clone()) else {
        return Ok(());
    };
    let contents = read(&path)?;
    if slot.read().as_ref().is_some_and(|w| w.contents == contents) {
        return Ok(());
    }
    // An editor or tool that empties a file before writing it: read in between, it would
    // lock every user out (or deny everything). Kept as it was until it has content again.
    let blank = |c: &[u8]| c.iter().all(u8::is_ascii_whitespace);
    if blank(&contents) && slot.read().as_ref().is_some_and(|w| !blank(&w.contents)) {
        return Err(AuthError::parse(
            &path.display().to_string(),
            0,
            format!("the {what} became empty (being rewritten?); the previous rules stay"),
        ));
    }
    let fresh = load_watched(&path, parse)?;
    *slot.write() = Some(fresh);
    info!(
        "Reloaded {what} {}: new rules apply to new operations.",
        path.display()
    );
    Ok(())
}

impl std::fmt::Debug for AuthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthState")
            .field(
                "password_file",
                &self.passwords.read().as_ref().map(|w| w.path.clone()),
            )
            .field(
                "acl_file",
                &self.acl.read().as_ref().map(|w| w.path.clone()),
            )
            .finish()
    }
}

/// Polls the files every `interval` (if non-zero) and reloads on `sighup`.
pub async fn watch(
    state: Arc<AuthState>,
    interval: Duration,
    sighup: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let poll = !interval.is_zero();
    let mut tick = tokio::time::interval(if poll {
        interval
    } else {
        Duration::from_secs(3600)
    });
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut last_errors: Vec<String> = Vec::new();
    // Registered before the first wait and again as soon as it fires, so a SIGHUP that comes
    // while a reload runs is not lost (`notify_waiters` only wakes registered waiters).
    let mut hup = Box::pin(sighup.notified());
    hup.as_mut().enable();
    loop {
        let forced = tokio::select! {
            _ = tick.tick(), if poll => false,
            _ = &mut hup => {
                hup = Box::pin(sighup.notified());
                hup.as_mut().enable();
                true
            }
            _ = shutdown.cancelled() => return,
        };
        let errors: Vec<String> = state.reload().iter().map(|e| e.to_string()).collect();
        if forced || errors != last_errors {
            for e in &errors {
                error!("Reload refused, keeping the previous rules: {e}");
            }
        }
        last_errors = errors;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_acl_is_refused_and_the_old_rules_stay() {
        let dir = std::env::temp_dir().join(format!("roostd-live-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("acl");
        std::fs::write(&path, "user alice\ntopic read a/#\n").unwrap();
        let state = AuthState::load(None, Some(&path)).unwrap();
        assert!(state.acl().unwrap().check_read("c", Some("alice"), "a/1"));
        std::fs::write(&path, "user alice\ntopic read b/#\n").unwrap();
        assert!(state.reload().is_empty());
        let acl = state.acl().unwrap();
        assert!(!acl.check_read("c", Some("alice"), "a/1"));
        assert!(acl.check_read("c", Some("alice"), "b/1"));
        std::fs::write(&path, "user alice\nbogus line\n").unwrap();
        let errors = state.reload();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains(":2:"), "{}", errors[0]);
        assert!(state.acl().unwrap().check_read("c", Some("alice"), "b/1"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
