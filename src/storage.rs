//! Durable state: retained messages, persistent sessions (clean session 0) with their
//! subscriptions, queued and in-flight QoS 1/2 messages, and inbound QoS 2 packet ids.
//!
//! Backed by redb (see ARCHITECTURE.md for the choice): one file, copy-on-write B-trees,
//! atomic commits with checksums, repaired on open after a crash. All writes go through one
//! writer thread that takes every pending operation into one transaction (group commit), so
//! the publish path never waits for the disk unless fsync = "always", where acknowledgements
//! are held until the commit that contains their message has been fsynced.
//!
//! Keys: `client id 0x00 seq(u64 BE)` for messages and in-flight marks (client ids cannot
//! contain U+0000, [MQTT-1.5.3-2]), `client id 0x00 packet id(u16 BE)` for inbound QoS 2 ids,
//! the client id for sessions and the topic for retained messages. Sequence numbers are global
//! and increase, so one client's messages come back in the order they were queued.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use thiserror::Error;
use tokio::sync::Notify;
use tracing::{error, info, warn};

const MESSAGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("messages");
const INFLIGHT: TableDefinition<&[u8], &[u8]> = TableDefinition::new("inflight");
const INCOMING: TableDefinition<&[u8], &[u8]> = TableDefinition::new("incoming_qos2");
const SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sessions");
const RETAINED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("retained");
/// One key per subscription of a persistent session (client, 0, filter) -> granted QoS, so a
/// SUBSCRIBE writes one small record whatever the session's number of filters.
const SUBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("subscriptions");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Per persistent session: the highest sequence number of a message already sent to it. After
/// a restart a QoS 1 message at or below it goes out again with DUP=1 [MQTT-3.3.1-1]. One
/// record per delivery batch, not per message: within a session, sequence numbers follow the
/// queue's order (they are taken under the session's lock).
const SENT: TableDefinition<&[u8], u64> = TableDefinition::new("sent");

/// How soon a failed commit is retried when nothing new arrives.
const FAILED_COMMIT_RETRY: Duration = Duration::from_secs(1);

/// redb's page cache.
const STORE_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Most operations applied in one transaction.
const MAX_BATCH: usize = 16_384;

/// With fsync = "never", commits skip the fsync, but redb only recovers fsynced commits
/// after a crash: a checkpoint this often bounds what a crash loses.
const NEVER_CHECKPOINT: Duration = Duration::from_secs(60);

/// Storage errors at startup (at runtime they are logged and counted).
#[derive(Debug, Error)]
pub enum StorageError {
    #[error("creating persistence_location {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("opening the database {path}: permission denied. roostd runs as {user}; {owner}. Run it as that user, or give the directory to this one (chown), or set persistence_location / --data-dir")]
    PermissionDenied {
        path: PathBuf,
        /// Who runs the broker ("user roostd (uid 998)").
        user: String,
        /// Who owns the file or its directory.
        owner: String,
    },
    #[error("the database {path} is in use by another roostd (or another program holds its lock): stop that one, or give this broker a directory of its own (persistence_location / --data-dir)")]
    InUse { path: PathBuf },
    #[error("the database {path} is damaged beyond repair ({detail}). Moving it aside starts the broker empty (retained messages and persistent sessions in it are then gone): mv {path} {path}.broken")]
    Corrupt { path: PathBuf, detail: String },
    #[error("opening the database {path}: {detail}")]
    Open { path: PathBuf, detail: String },
    #[error("reading the database {path}: {detail}")]
    Read { path: PathBuf, detail: String },
    #[error("starting the storage writer thread: {0}")]
    Thread(std::io::Error),
}

/// When commits reach the disk (the `fsync` option).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every commit is fsynced before the acknowledgements that depend on it are sent.
    Always,
    /// An fsync at least every interval; a crash loses at most the last interval.
    Interval(Duration),
    /// No fsync on the way; a checkpoint every 60 s and at clean shutdown.
    Never,
}

/// One change to the durable state.
#[derive(Debug)]
enum Op {
    PutMessage {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    SetInflight {
        key: Vec<u8>,
        pkid: u16,
        awaiting_pubcomp: bool,
    },
    DeleteMessage {
        key: Vec<u8>,
    },
    SetSent {
        client: Vec<u8>,
        seq: u64,
    },
    PutRetained {
        topic: Bytes,
        value: Vec<u8>,
    },
    DeleteRetained {
        topic: Bytes,
    },
    PutSession {
        client: Vec<u8>,
        value: Vec<u8>,
    },
    PutSubscription {
        key: Vec<u8>,
        qos: u8,
    },
    DeleteSubscription {
        key: Vec<u8>,
    },
    DeleteSession {
        client: Vec<u8>,
    },
    AddIncoming {
        key: Vec<u8>,
    },
    RemoveIncoming {
        key: Vec<u8>,
    },
    Shutdown,
}

impl Op {
    /// Memory the operation holds while it waits for the writer (keys, values, overhead).
    fn cost(&self) -> usize {
        const OVERHEAD: usize = 48;
        OVERHEAD
            + match self {
                Op::PutMessage { key, value } => key.len() + value.len(),
                Op::SetInflight { key, .. }
                | Op::DeleteMessage { key }
                | Op::AddIncoming { key }
                | Op::RemoveIncoming { key }
                | Op::PutSubscription { key, .. }
                | Op::DeleteSubscription { key } => key.len(),
                Op::PutRetained { topic, value } => topic.len() + value.len(),
                Op::DeleteRetained { topic } => topic.len(),
                Op::PutSession { client, value } => client.len() + value.len(),
                Op::DeleteSession { client } | Op::SetSent { client, .. } => client.len(),
                Op::Shutdown => 0,
            }
    }
}

/// Default bound on operations waiting for the writer (`max_storage_backlog`).
pub const DEFAULT_BACKLOG_LIMIT: usize = 64 * 1024 * 1024;

/// A stored message of a persistent session.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub seq: u64,
    pub qos: u8,
    pub topic: Bytes,
    pub payload: Bytes,
    /// Packet id and whether PUBREC was received, if it was in flight.
    pub inflight: Option<(u16, bool)>,
    /// It was sent before (a re-send carries DUP=1).
    pub sent: bool,
}

/// One chunk of a session's stored messages (`Store::load_messages`).
#[derive(Debug, Default)]
pub struct LoadedChunk {
    pub messages: Vec<StoredMessage>,
    /// Records of the range that could not be decoded (dropped, but they were counted).
    pub skipped: usize,
    /// Sequence number of the last record read: the next chunk starts after it.
    pub last_seq: u64,
}

/// A stored persistent session.
#[derive(Debug, Clone)]
pub struct StoredSession {
    pub client_id: String,
    pub subscriptions: Vec<(String, u8)>,
    /// Seconds since the epoch when its client went away (0: it was connected at the crash).
    pub disconnected_at: u64,
    pub incoming_qos2: Vec<u16>,
    /// Messages on disk for it (loaded when the client comes back).
    pub stored_messages: usize,
    /// Their bytes as stored (about topic + payload each).
    pub stored_bytes: usize,
}

/// What startup recovered.
#[derive(Debug, Default)]
pub struct Recovered {
    pub retained: Vec<(Bytes, u8, Bytes)>,
    pub sessions: Vec<StoredSession>,
    /// Records that could not be decoded and were dropped (reported, never used).
    pub dropped_records: usize,
}

/// Handle to the durable store.
pub struct Store {
    path: PathBuf,
    /// The database; taken on close so that its file lock is released.
    db: Mutex<Option<Arc<Database>>>,
    tx: Mutex<Option<Sender<(u64, Op)>>>,
    /// Last ticket issued to an operation.
    issued: AtomicU64,
    /// Last ticket whose operation is committed (fsynced under `Always`).
    committed: Arc<AtomicU64>,
    /// Signalled after every commit.
    pub commit_notify: Arc<Notify>,
    /// False after a failed commit, until one succeeds: new persistent messages are refused.
    healthy: Arc<AtomicBool>,
    /// Failed commits so far.
    pub errors: Arc<AtomicU64>,
    /// Bytes of operations sent to the writer and not yet committed.
    backlog: Arc<AtomicUsize>,
    /// Above this backlog publishers are paused until it halves (`max_storage_backlog`).
    backlog_limit: AtomicUsize,
    next_seq: AtomicU64,
    policy: FsyncPolicy,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("policy", &self.policy)
            .finish()
    }
}

/// What went wrong opening the database, in the words the operator needs: a permission
/// problem and a lock held by another broker are not corruption, and moving the file aside
/// (which throws its data away) is only advised for real damage.
fn open_error(path: &Path, e: redb::DatabaseError) -> StorageError {
    let path = path.to_path_buf();
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen | redb::DatabaseError::LockProtocolMismatch => {
            StorageError::InUse { path }
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            let owner = owner_of(&path);
            StorageError::PermissionDenied {
                path,
                user: who_runs(),
                owner,
            }
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::WouldBlock =>
        {
            StorageError::InUse { path }
        }
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(detail)) => {
            StorageError::Corrupt { path, detail }
        }
        redb::DatabaseError::RepairAborted => StorageError::Corrupt {
            path,
            detail: "the repair after an unclean shutdown did not finish".to_string(),
        },
        other => StorageError::Open {
            path,
            detail: other.to_string(),
        },
    }
}

/// "user roostd (uid 998)", from /proc and /etc/passwd.
fn who_runs() -> String {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(str::to_string))
        });
    match uid {
        Some(uid) => format!("{} (uid {uid})", user_name(&uid).unwrap_or("?".into())),
        None => "an unknown user".to_string(),
    }
}

/// "the file is owned by root (uid 0), mode 600", or for a missing file its directory's.
fn owner_of(path: &Path) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let (what, meta) = match std::fs::metadata(path) {
            Ok(m) => ("it is", Some(m)),
            Err(_) => (
                "its directory is",
                path.parent()
                    .map(|p| {
                        if p.as_os_str().is_empty() {
                            Path::new(".")
                        } else {
                            p
                        }
                    })
                    .and_then(|p| std::fs::metadata(p).ok()),
            ),
        };
        if let Some(m) = meta {
            let uid = m.uid().to_string();
            return format!(
                "{what} owned by {} (uid {uid}), mode {:o}",
                user_name(&uid).unwrap_or("?".into()),
                m.mode() & 0o7777
            );
        }
    }
    let _ = path;
    "its owner could not be read".to_string()
}

fn user_name(uid: &str) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)? == uid).then(|| name.to_string())
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `client 0x00 n` keys.
fn key(client: &str, n: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(client.len() + 1 + n.len());
    k.extend_from_slice(client.as_bytes());
    k.push(0);
    k.extend_from_slice(n);
    k
}

fn client_range(client: &str) -> (Vec<u8>, Vec<u8>) {
    let mut lo = client.as_bytes().to_vec();
    lo.push(0);
    let mut hi = client.as_bytes().to_vec();
    hi.push(1);
    (lo, hi)
}

fn split_key(k: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = k.iter().position(|&b| b == 0)?;
    Some((&k[..i], &k[i + 1..]))
}

/// The sequence number of a message key.
fn seq_of(k: &[u8]) -> Option<u64> {
    split_key(k)
        .and_then(|(_, s)| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_be_bytes)
}

fn encode_message(qos: u8, topic: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(3 + topic.len() + payload.len());
    v.push(qos);
    v.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    v.extend_from_slice(topic);
    v.extend_from_slice(payload);
    v
}

fn decode_message(v: &[u8]) -> Option<(u8, Bytes, Bytes)> {
    let qos = *v.first()?;
    let len = u16::from_be_bytes([*v.get(1)?, *v.get(2)?]) as usize;
    let topic = v.get(3..3 + len)?;
    let payload = v.get(3 + len..)?;
    (qos <= 2).then(|| {
        (
            qos,
            Bytes::copy_from_slice(topic),
            Bytes::copy_from_slice(payload),
        )
    })
}

fn encode_session(subscriptions: &[(String, u8)], disconnected_at: u64) -> Vec<u8> {
    let mut v = vec![1u8];
    v.extend_from_slice(&disconnected_at.to_be_bytes());
    v.extend_from_slice(&(subscriptions.len() as u32).to_be_bytes());
    for (f, q) in subscriptions {
        v.push(*q);
        v.extend_from_slice(&(f.len() as u16).to_be_bytes());
        v.extend_from_slice(f.as_bytes());
    }
    v
}

fn decode_session(v: &[u8]) -> Option<(Vec<(String, u8)>, u64)> {
    if *v.first()? != 1 {
        return None;
    }
    let at = u64::from_be_bytes(v.get(1..9)?.try_into().ok()?);
    let n = u32::from_be_bytes(v.get(9..13)?.try_into().ok()?) as usize;
    let mut subs = Vec::with_capacity(n.min(1024));
    let mut i = 13;
    for _ in 0..n {
        let q = *v.get(i)?;
        let len = u16::from_be_bytes([*v.get(i + 1)?, *v.get(i + 2)?]) as usize;
        let f = std::str::from_utf8(v.get(i + 3..i + 3 + len)?).ok()?;
        if q > 2 || crate::protocol::topic::validate_topic_filter(f).is_err() {
            return None;
        }
        subs.push((f.to_string(), q));
        i += 3 + len;
    }
    (i == v.len()).then_some((subs, at))
}

impl Store {
    /// Opens (creating if needed) `dir/roostd.redb` and starts the writer thread. A database
    /// that redb cannot repair stops startup with a message naming the file.
    pub fn open(dir: &Path, policy: FsyncPolicy) -> Result<Store, StorageError> {
        std::fs::create_dir_all(dir).map_err(|source| {
            if source.kind() == std::io::ErrorKind::PermissionDenied {
                StorageError::PermissionDenied {
                    path: dir.to_path_buf(),
                    user: who_runs(),
                    owner: owner_of(dir),
                }
            } else {
                StorageError::CreateDir {
                    path: dir.to_path_buf(),
                    source,
                }
            }
        })?;
        let path = dir.join("roostd.redb");
        let mut builder = Database::builder();
        // redb caches the pages it reads; a bound keeps a restart with millions of stored
        // messages (whose keys are scanned to count them) from growing the broker's memory.
        builder.set_cache_size(STORE_CACHE_BYTES);
        // redb calls this with its progress, several times per repair: say it once.
        let told = AtomicBool::new(false);
        builder.set_repair_callback(move |_| {
            if !told.swap(true, Relaxed) {
                warn!("The database was not closed cleanly (crash or power loss): repairing it.");
            }
        });
        let db = builder.create(&path).map_err(|e| open_error(&path, e))?;
        let db = Arc::new(db);
        // Make sure every table exists, and learn the next sequence number.
        let open_err = |e: &dyn std::fmt::Display| StorageError::Open {
            path: path.clone(),
            detail: e.to_string(),
        };
        let next_seq = {
            let w = db.begin_write().map_err(|e| open_err(&e))?;
            let seq = {
                w.open_table(MESSAGES).map_err(|e| open_err(&e))?;
                w.open_table(INFLIGHT).map_err(|e| open_err(&e))?;
                w.open_table(INCOMING).map_err(|e| open_err(&e))?;
                w.open_table(SESSIONS).map_err(|e| open_err(&e))?;
                w.open_table(RETAINED).map_err(|e| open_err(&e))?;
                w.open_table(SUBS).map_err(|e| open_err(&e))?;
                w.open_table(SENT).map_err(|e| open_err(&e))?;
                let meta = w.open_table(META).map_err(|e| open_err(&e))?;
                let recorded = meta
                    .get("next_seq")
                    .map_err(|e| open_err(&e))?
                    .map(|g| g.value())
                    .unwrap_or(1);
                // From the data itself too: a sequence number must never be handed out again
                // while a message with it is stored (the meta record alone was once reset by
                // a run that stored nothing, and new messages then hid older ones).
                let messages = w.open_table(MESSAGES).map_err(|e| open_err(&e))?;
                let mut highest = 0u64;
                for item in messages.iter().map_err(|e| open_err(&e))? {
                    let (k, _) = item.map_err(|e| open_err(&e))?;
                    if let Some(seq) = seq_of(k.value()) {
                        highest = highest.max(seq);
                    }
                }
                recorded.max(highest.saturating_add(1)).max(1)
            };
            w.commit().map_err(|e| open_err(&e))?;
            seq
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let committed = Arc::new(AtomicU64::new(0));
        let commit_notify = Arc::new(Notify::new());
        let healthy = Arc::new(AtomicBool::new(true));
        let errors = Arc::new(AtomicU64::new(0));
        let backlog = Arc::new(AtomicUsize::new(0));
        let writer = {
            let shared = Shared {
                committed: committed.clone(),
                notify: commit_notify.clone(),
                healthy: healthy.clone(),
                errors: errors.clone(),
                backlog: backlog.clone(),
            };
            let db = db.clone();
            std::thread::Builder::new()
                .name("roostd-storage".into())
                .spawn(move || writer_loop(db, rx, policy, shared, next_seq))
                .map_err(StorageError::Thread)?
        };
        info!("Persistence in {} (fsync {policy:?}).", path.display());
        Ok(Store {
            path,
            db: Mutex::new(Some(db)),
            tx: Mutex::new(Some(tx)),
            issued: AtomicU64::new(0),
            committed,
            commit_notify,
            healthy,
            errors,
            backlog,
            backlog_limit: AtomicUsize::new(DEFAULT_BACKLOG_LIMIT),
            next_seq: AtomicU64::new(next_seq),
            policy,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// The fsync policy.
    pub fn policy(&self) -> FsyncPolicy {
        self.policy
    }

    /// Whether acknowledgements must wait for commits (fsync = always).
    pub fn acks_wait(&self) -> bool {
        self.policy == FsyncPolicy::Always
    }

    /// False while commits fail: new persistent QoS 1/2 messages are refused.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    /// Ticket of the last operation issued.
    pub fn issued(&self) -> u64 {
        self.issued.load(SeqCst)
    }

    /// Ticket of the last operation committed.
    pub fn committed(&self) -> u64 {
        self.committed.load(SeqCst)
    }

    /// A new message sequence number (global, increasing).
    pub fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Relaxed)
    }

    fn send(&self, op: Op) {
        let guard = self.tx.lock();
        if let Some(tx) = guard.as_ref() {
            let ticket = self.issued.fetch_add(1, SeqCst) + 1;
            let cost = op.cost();
            self.backlog.fetch_add(cost, Relaxed);
            if tx.send((ticket, op)).is_err() {
                self.backlog.fetch_sub(cost, Relaxed);
                self.healthy.store(false, Relaxed);
            }
        }
    }

    /// Sets `max_storage_backlog` (bytes).
    pub fn set_backlog_limit(&self, bytes: usize) {
        self.backlog_limit.store(bytes.max(1), Relaxed);
    }

    /// Bytes of operations waiting for the writer.
    pub fn backlog_bytes(&self) -> usize {
        self.backlog.load(Relaxed)
    }

    /// The disk is behind by more than `max_storage_backlog`: publishers pause.
    pub fn backlogged(&self) -> bool {
        self.backlog_bytes() > self.backlog_limit.load(Relaxed)
    }

    /// A paused publisher may go on: the backlog is down to half the limit.
    pub fn backlog_eased(&self) -> bool {
        self.backlog_bytes() <= self.backlog_limit.load(Relaxed) / 2
    }

    pub fn put_message(&self, client: &str, seq: u64, qos: u8, topic: &[u8], payload: &[u8]) {
        self.send(Op::PutMessage {
            key: key(client, &seq.to_be_bytes()),
            value: encode_message(qos, topic, payload),
        });
    }

    pub fn set_inflight(&self, client: &str, seq: u64, pkid: u16, awaiting_pubcomp: bool) {
        self.send(Op::SetInflight {
            key: key(client, &seq.to_be_bytes()),
            pkid,
            awaiting_pubcomp,
        });
    }

    /// Messages of `client` up to `seq` were sent (see `SENT`).
    pub fn set_sent(&self, client: &str, seq: u64) {
        self.send(Op::SetSent {
            client: client.as_bytes().to_vec(),
            seq,
        });
    }

    pub fn delete_message(&self, client: &str, seq: u64) {
        self.send(Op::DeleteMessage {
            key: key(client, &seq.to_be_bytes()),
        });
    }

    pub fn put_retained(&self, topic: &Bytes, qos: u8, payload: &[u8]) {
        let mut value = Vec::with_capacity(1 + payload.len());
        value.push(qos);
        value.extend_from_slice(payload);
        self.send(Op::PutRetained {
            topic: topic.clone(),
            value,
        });
    }

    pub fn delete_retained(&self, topic: &Bytes) {
        self.send(Op::DeleteRetained {
            topic: topic.clone(),
        });
    }

    /// Writes a persistent session's record: when it went offline (0 = online). Its
    /// subscriptions are records of their own (`put_subscription`).
    pub fn put_session(&self, client: &str, disconnected: bool) {
        let at = if disconnected { unix_now() } else { 0 };
        self.send(Op::PutSession {
            client: client.as_bytes().to_vec(),
            value: encode_session(&[], at),
        });
    }

    /// Adds or replaces one subscription of a persistent session.
    pub fn put_subscription(&self, client: &str, filter: &str, qos: u8) {
        self.send(Op::PutSubscription {
            key: key(client, filter.as_bytes()),
            qos,
        });
    }

    /// Removes one subscription of a persistent session.
    pub fn delete_subscription(&self, client: &str, filter: &str) {
        self.send(Op::DeleteSubscription {
            key: key(client, filter.as_bytes()),
        });
    }

    /// Removes a session with its subscriptions, messages and inbound QoS 2 ids.
    pub fn delete_session(&self, client: &str) {
        self.send(Op::DeleteSession {
            client: client.as_bytes().to_vec(),
        });
    }

    pub fn add_incoming(&self, client: &str, pkid: u16) {
        self.send(Op::AddIncoming {
            key: key(client, &pkid.to_be_bytes()),
        });
    }

    pub fn remove_incoming(&self, client: &str, pkid: u16) {
        self.send(Op::RemoveIncoming {
            key: key(client, &pkid.to_be_bytes()),
        });
    }

    /// Waits (blocking) until everything issued so far is committed. For loading and tests.
    pub fn flush_blocking(&self) {
        let target = self.issued();
        let start = Instant::now();
        while self.committed() < target
            && self.healthy()
            && start.elapsed() < Duration::from_secs(30)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Reads everything but the messages (those stay on disk until their session returns).
    pub fn recover(&self) -> Result<Recovered, StorageError> {
        let err = |e: &dyn std::fmt::Display| StorageError::Read {
            path: self.path.clone(),
            detail: e.to_string(),
        };
        let db = self
            .db
            .lock()
            .clone()
            .ok_or_else(|| err(&"the store is closed"))?;
        let r = db.begin_read().map_err(|e| err(&e))?;
        let mut out = Recovered::default();
        let retained = r.open_table(RETAINED).map_err(|e| err(&e))?;
        for item in retained.iter().map_err(|e| err(&e))? {
            let (k, v) = item.map_err(|e| err(&e))?;
            let (topic, v) = (k.value(), v.value());
            let valid = std::str::from_utf8(topic).is_ok()
                && crate::protocol::topic::validate_topic_name(topic).is_ok()
                && v.first().is_some_and(|q| *q <= 2)
                && v.len() > 1;
            if valid {
                out.retained.push((
                    Bytes::copy_from_slice(topic),
                    v[0],
                    Bytes::copy_from_slice(&v[1..]),
                ));
            } else {
                out.dropped_records += 1;
            }
        }
        let sessions = r.open_table(SESSIONS).map_err(|e| err(&e))?;
        let mut by_client = std::collections::HashMap::new();
        for item in sessions.iter().map_err(|e| err(&e))? {
            let (k, v) = item.map_err(|e| err(&e))?;
            let client = std::str::from_utf8(k.value()).ok().map(str::to_string);
            match (client, decode_session(v.value())) {
                (Some(client_id), Some((subscriptions, disconnected_at))) => {
                    by_client.insert(
                        client_id.clone(),
                        StoredSession {
                            client_id,
                            subscriptions,
                            disconnected_at,
                            incoming_qos2: Vec::new(),
                            stored_messages: 0,
                            stored_bytes: 0,
                        },
                    );
                }
                _ => out.dropped_records += 1,
            }
        }
        // Records written before subscriptions had their own table carry them in the session
        // value: moved into the table below (the next session record is written without).
        let migrate: Vec<(String, String, u8)> = by_client
            .values()
            .flat_map(|s| {
                s.subscriptions
                    .iter()
                    .map(|(f, q)| (s.client_id.clone(), f.clone(), *q))
            })
            .collect();
        let old_format: std::collections::HashSet<(&str, &str)> = migrate
            .iter()
            .map(|(c, f, _)| (c.as_str(), f.as_str()))
            .collect();
        let subs = r.open_table(SUBS).map_err(|e| err(&e))?;
        for item in subs.iter().map_err(|e| err(&e))? {
            let (k, v) = item.map_err(|e| err(&e))?;
            let parsed = split_key(k.value()).and_then(|(c, f)| {
                let c = std::str::from_utf8(c).ok()?;
                let f = std::str::from_utf8(f).ok()?;
                let q = *v.value().first()?;
                let valid = q <= 2 && crate::protocol::topic::validate_topic_filter(f).is_ok();
                valid.then(|| (c.to_string(), f.to_string(), q))
            });
            match parsed.and_then(|(c, f, q)| by_client.get_mut(&c).map(|s| (s, f, q))) {
                Some((s, f, q)) => {
                    // Only a filter still in an old-format record can be here twice.
                    if !old_format.contains(&(s.client_id.as_str(), f.as_str())) {
                        s.subscriptions.push((f, q));
                    }
                }
                None => out.dropped_records += 1,
            }
        }
        for (client, filter, qos) in &migrate {
            self.put_subscription(client, filter, *qos);
        }
        let incoming = r.open_table(INCOMING).map_err(|e| err(&e))?;
        for item in incoming.iter().map_err(|e| err(&e))? {
            let (k, _) = item.map_err(|e| err(&e))?;
            let parsed = split_key(k.value()).and_then(|(c, id)| {
                let c = std::str::from_utf8(c).ok()?;
                let id: [u8; 2] = id.try_into().ok()?;
                Some((c.to_string(), u16::from_be_bytes(id)))
            });
            match parsed.and_then(|(c, id)| by_client.get_mut(&c).map(|s| (s, id))) {
                Some((s, id)) => s.incoming_qos2.push(id),
                None => out.dropped_records += 1,
            }
        }
        // Count each session's messages from the keys only.
        let messages = r.open_table(MESSAGES).map_err(|e| err(&e))?;
        for item in messages.iter().map_err(|e| err(&e))? {
            let (k, v) = item.map_err(|e| err(&e))?;
            let client = split_key(k.value()).and_then(|(c, _)| std::str::from_utf8(c).ok());
            match client.and_then(|c| by_client.get_mut(c)) {
                Some(s) => {
                    s.stored_messages += 1;
                    s.stored_bytes += v.value().len();
                }
                None => out.dropped_records += 1,
            }
        }
        out.sessions = by_client.into_values().collect();
        Ok(out)
    }

    /// Reads the next chunk of a session's stored messages: sequence numbers above `after`,
    /// in order, at most `max_messages` and (past the first) `max_bytes` of topic + payload.
    /// Blocking: call from spawn_blocking.
    pub fn load_messages(
        &self,
        client: &str,
        after: u64,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<LoadedChunk, StorageError> {
        let err = |e: &dyn std::fmt::Display| StorageError::Read {
            path: self.path.clone(),
            detail: e.to_string(),
        };
        let db = self
            .db
            .lock()
            .clone()
            .ok_or_else(|| err(&"the store is closed"))?;
        let r = db.begin_read().map_err(|e| err(&e))?;
        let messages = r.open_table(MESSAGES).map_err(|e| err(&e))?;
        let inflight = r.open_table(INFLIGHT).map_err(|e| err(&e))?;
        let sent_through = r
            .open_table(SENT)
            .map_err(|e| err(&e))?
            .get(client.as_bytes())
            .map_err(|e| err(&e))?
            .map(|g| g.value())
            .unwrap_or(0);
        let lo = key(client, &after.saturating_add(1).to_be_bytes());
        let (_, hi) = client_range(client);
        let mut chunk = LoadedChunk {
            last_seq: after,
            ..LoadedChunk::default()
        };
        let mut bytes = 0;
        if after == u64::MAX {
            return Ok(chunk);
        }
        let first = after == 0;
        if first {
            // Every message that was in flight comes first, whatever its place in the queue:
            // their packet ids are taken before any new delivery gets one (QoS 2 exactly once
            // across a restart needs the id it had). Later chunks meet them again and the
            // session skips them.
            let (ilo, ihi) = client_range(client);
            for item in inflight
                .range(ilo.as_slice()..ihi.as_slice())
                .map_err(|e| err(&e))?
            {
                let (k, v) = item.map_err(|e| err(&e))?;
                let v = v.value();
                let (Some(seq), true) = (seq_of(k.value()), v.len() == 3) else {
                    continue;
                };
                let mark = (u16::from_be_bytes([v[0], v[1]]), v[2] == 1);
                let stored = messages.get(k.value()).map_err(|e| err(&e))?;
                if let Some((qos, topic, payload)) = stored.and_then(|g| decode_message(g.value()))
                {
                    bytes += topic.len() + payload.len();
                    chunk.messages.push(StoredMessage {
                        seq,
                        qos,
                        topic,
                        payload,
                        inflight: Some(mark),
                        sent: true,
                    });
                }
            }
        }
        let early = chunk.messages.len();
        for item in messages
            .range(lo.as_slice()..hi.as_slice())
            .map_err(|e| err(&e))?
        {
            if chunk.messages.len() - early >= max_messages
                || (chunk.messages.len() > early && bytes >= max_bytes)
            {
                break;
            }
            let (k, v) = item.map_err(|e| err(&e))?;
            let Some(seq) = seq_of(k.value()) else {
                chunk.skipped += 1;
                continue;
            };
            chunk.last_seq = seq;
            let Some((qos, topic, payload)) = decode_message(v.value()) else {
                warn!("Dropping an undecodable stored message of {client} (seq {seq}).");
                chunk.skipped += 1;
                continue;
            };
            let mark = inflight.get(k.value()).map_err(|e| err(&e))?.and_then(|g| {
                let v = g.value();
                (v.len() == 3).then(|| (u16::from_be_bytes([v[0], v[1]]), v[2] == 1))
            });
            if first && mark.is_some() {
                continue; // taken above already
            }
            bytes += topic.len() + payload.len();
            chunk.messages.push(StoredMessage {
                seq,
                qos,
                topic,
                payload,
                inflight: mark,
                sent: seq <= sent_through,
            });
        }
        Ok(chunk)
    }

    /// Commits what is pending with an fsync and stops the writer (clean shutdown).
    pub fn close(&self) {
        if let Some(tx) = self.tx.lock().take() {
            let _ = tx.send((u64::MAX, Op::Shutdown));
        }
        if let Some(w) = self.writer.lock().take() {
            let _ = w.join();
        }
        self.db.lock().take();
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

fn apply(
    w: &redb::WriteTransaction,
    ops: &[(u64, Op)],
    next_seq_seen: &mut u64,
) -> Result<(), redb::Error> {
    let mut messages = w.open_table(MESSAGES)?;
    let mut inflight = w.open_table(INFLIGHT)?;
    let mut incoming = w.open_table(INCOMING)?;
    let mut sessions = w.open_table(SESSIONS)?;
    let mut retained = w.open_table(RETAINED)?;
    let mut subs = w.open_table(SUBS)?;
    let mut sent = w.open_table(SENT)?;
    for (_, op) in ops {
        match op {
            Op::PutMessage { key, value } => {
                if let Some(seq) = seq_of(key) {
                    *next_seq_seen = (*next_seq_seen).max(seq + 1);
                }
                messages.insert(key.as_slice(), value.as_slice())?;
            }
            Op::SetInflight {
                key,
                pkid,
                awaiting_pubcomp,
            } => {
                let p = pkid.to_be_bytes();
                inflight.insert(
                    key.as_slice(),
                    [p[0], p[1], *awaiting_pubcomp as u8].as_slice(),
                )?;
            }
            Op::DeleteMessage { key } => {
                messages.remove(key.as_slice())?;
                inflight.remove(key.as_slice())?;
            }
            Op::SetSent { client, seq } => {
                let old = sent.get(client.as_slice())?.map(|g| g.value()).unwrap_or(0);
                if *seq > old {
                    sent.insert(client.as_slice(), *seq)?;
                }
            }
            Op::PutRetained { topic, value } => {
                retained.insert(topic.as_ref(), value.as_slice())?;
            }
            Op::DeleteRetained { topic } => {
                retained.remove(topic.as_ref())?;
            }
            Op::PutSession { client, value } => {
                sessions.insert(client.as_slice(), value.as_slice())?;
            }
            Op::DeleteSession { client } => {
                sessions.remove(client.as_slice())?;
                sent.remove(client.as_slice())?;
                let c = std::str::from_utf8(client).unwrap_or_default();
                let (lo, hi) = client_range(c);
                messages.retain_in(lo.as_slice()..hi.as_slice(), |_, _| false)?;
                inflight.retain_in(lo.as_slice()..hi.as_slice(), |_, _| false)?;
                incoming.retain_in(lo.as_slice()..hi.as_slice(), |_, _| false)?;
                subs.retain_in(lo.as_slice()..hi.as_slice(), |_, _| false)?;
            }
            Op::PutSubscription { key, qos } => {
                subs.insert(key.as_slice(), [*qos].as_slice())?;
            }
            Op::DeleteSubscription { key } => {
                subs.remove(key.as_slice())?;
            }
            Op::AddIncoming { key } => {
                incoming.insert(key.as_slice(), [].as_slice())?;
            }
            Op::RemoveIncoming { key } => {
                incoming.remove(key.as_slice())?;
            }
            Op::Shutdown => {}
        }
    }
    let mut meta = w.open_table(META)?;
    // Never backwards (a run that stores nothing keeps what the last one recorded).
    let recorded = meta.get("next_seq")?.map(|g| g.value()).unwrap_or(0);
    if *next_seq_seen > recorded {
        meta.insert("next_seq", *next_seq_seen)?;
    }
    Ok(())
}

/// What the writer thread shares with the `Store`.
struct Shared {
    committed: Arc<AtomicU64>,
    notify: Arc<Notify>,
    healthy: Arc<AtomicBool>,
    errors: Arc<AtomicU64>,
    backlog: Arc<AtomicUsize>,
}

fn writer_loop(
    db: Arc<Database>,
    rx: Receiver<(u64, Op)>,
    policy: FsyncPolicy,
    shared: Shared,
    next_seq: u64,
) {
    let Shared {
        committed,
        notify,
        healthy,
        errors,
        backlog,
    } = shared;
    let mut last_sync = Instant::now();
    let mut unsynced = false;
    let mut next_seq_seen = next_seq;
    let mut batch: Vec<(u64, Op)> = Vec::new();
    let tick = match policy {
        FsyncPolicy::Interval(d) => d,
        FsyncPolicy::Never => NEVER_CHECKPOINT,
        FsyncPolicy::Always => Duration::from_secs(3600),
    };
    loop {
        // A batch left over from a failed commit is retried within a second even when no new
        // operation arrives: acknowledgements waiting for it (fsync = always) must not hang.
        let wait = if batch.is_empty() {
            tick
        } else {
            FAILED_COMMIT_RETRY
        };
        let first = match rx.recv_timeout(wait) {
            Ok(op) => Some(op),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut shutdown = false;
        if let Some(op) = first {
            batch.push(op);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            shutdown = batch.iter().any(|(_, op)| matches!(op, Op::Shutdown));
        }
        let sync = match policy {
            FsyncPolicy::Always => true,
            FsyncPolicy::Interval(d) => shutdown || last_sync.elapsed() >= d,
            FsyncPolicy::Never => shutdown || last_sync.elapsed() >= NEVER_CHECKPOINT,
        };
        if batch.is_empty() && !(sync && unsynced) {
            continue;
        }
        let result = (|| -> Result<(), redb::Error> {
            let mut w = db.begin_write()?;
            w.set_durability(if sync {
                Durability::Immediate
            } else {
                Durability::None
            })
            .map_err(|e| {
                redb::Error::from(redb::StorageError::Io(std::io::Error::other(e.to_string())))
            })?;
            apply(&w, &batch, &mut next_seq_seen)?;
            w.commit()?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                // Before `committed` moves: whoever that wakes sees the smaller backlog.
                backlog.fetch_sub(batch.iter().map(|(_, op)| op.cost()).sum(), Relaxed);
                if let Some(last) = batch
                    .iter()
                    .map(|(t, _)| *t)
                    .filter(|t| *t != u64::MAX)
                    .max()
                {
                    committed.fetch_max(last, SeqCst);
                }
                if sync {
                    last_sync = Instant::now();
                    unsynced = false;
                } else {
                    unsynced = true;
                }
                if !healthy.swap(true, Relaxed) {
                    info!("Storage writes succeed again.");
                }
            }
            Err(e) => {
                errors.fetch_add(1, Relaxed);
                if healthy.swap(false, Relaxed) {
                    error!("Storage commit failed ({e}); refusing new persistent QoS 1/2 messages until writes succeed.");
                }
                // Retried with the next batch: the operations stay queued.
                std::thread::sleep(Duration::from_millis(100));
                notify.notify_waiters();
                if shutdown {
                    return;
                }
                continue;
            }
        }
        batch.clear();
        notify.notify_waiters();
        if shutdown {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("roostd-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn backlog_counts_writes_until_committed() {
        let d = dir("backlog");
        let s = Store::open(&d, FsyncPolicy::Never).unwrap();
        s.set_backlog_limit(4096);
        assert_eq!(s.backlog_bytes(), 0);
        assert!(!s.backlogged() && s.backlog_eased());
        for _ in 0..100 {
            let seq = s.next_seq();
            s.put_message("c", seq, 1, b"t", &[0u8; 1024]);
        }
        // The writer may have taken some already; never more than was sent.
        assert!(s.backlog_bytes() <= 100 * (1024 + 128));
        s.flush_blocking();
        assert_eq!(s.backlog_bytes(), 0, "committed writes leave the backlog");
        assert!(!s.backlogged() && s.backlog_eased());
        s.close();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn records_round_trip_and_messages_load_lazily_in_order() {
        let d = dir("roundtrip");
        {
            let s = Store::open(&d, FsyncPolicy::Always).unwrap();
            s.put_session("dev1", true);
            s.put_subscription("dev1", "a/#", 1);
            s.put_subscription("dev1", "gone/+", 0);
            s.delete_subscription("dev1", "gone/+");
            for i in 0..5u64 {
                let seq = s.next_seq();
                s.put_message("dev1", seq, 1, b"a/b", format!("m{i}").as_bytes());
                if i == 0 {
                    s.set_inflight("dev1", seq, 7, false);
                }
                if i == 1 {
                    s.delete_message("dev1", seq);
                }
            }
            s.add_incoming("dev1", 42);
            s.put_retained(&Bytes::from_static(b"r/1"), 1, b"kept");
            s.put_retained(&Bytes::from_static(b"r/2"), 0, b"gone");
            s.delete_retained(&Bytes::from_static(b"r/2"));
            s.flush_blocking();
        }
        let s = Store::open(&d, FsyncPolicy::Always).unwrap();
        let rec = s.recover().unwrap();
        assert_eq!(rec.dropped_records, 0);
        assert_eq!(rec.retained.len(), 1);
        assert_eq!(&rec.retained[0].2[..], b"kept");
        assert_eq!(rec.sessions.len(), 1);
        let sess = &rec.sessions[0];
        assert_eq!(sess.subscriptions, vec![("a/#".to_string(), 1)]);
        assert_eq!(sess.incoming_qos2, vec![42]);
        assert_eq!(sess.stored_messages, 4);
        let msgs = s
            .load_messages("dev1", 0, 100, usize::MAX)
            .unwrap()
            .messages;
        let payloads: Vec<&[u8]> = msgs.iter().map(|m| &m.payload[..]).collect();
        assert_eq!(payloads, vec![&b"m0"[..], b"m2", b"m3", b"m4"]);
        assert_eq!(msgs[0].inflight, Some((7, false)));
        // Sequence numbers continue after a restart.
        assert!(s.next_seq() > msgs[3].seq);
        s.delete_session("dev1");
        s.flush_blocking();
        assert!(s
            .load_messages("dev1", 0, 100, usize::MAX)
            .unwrap()
            .messages
            .is_empty());
        assert!(s.recover().unwrap().sessions.is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Issue 11, item 11: a run that stores nothing must not reset the sequence counter (it
    /// was written back as 1 on every commit), or the next run's messages reuse numbers of
    /// stored ones and hide them. Recovered from the data itself at open, never backwards.
    #[test]
    fn sequence_numbers_never_go_back_across_restarts() {
        let d = dir("seq");
        let first = {
            let s = Store::open(&d, FsyncPolicy::Always).unwrap();
            s.put_session("c", true);
            let seqs: Vec<u64> = (0..5).map(|_| s.next_seq()).collect();
            for &q in &seqs {
                s.put_message("c", q, 1, b"t", b"x");
            }
            s.flush_blocking();
            s.close();
            seqs
        };
        {
            // A run that commits something unrelated (a session record) but no message.
            let s = Store::open(&d, FsyncPolicy::Always).unwrap();
            s.put_session("other", true);
            s.flush_blocking();
            s.close();
        }
        // The meta record alone is not trusted: set it back as an old build did.
        {
            let db = Database::create(d.join("roostd.redb")).unwrap();
            let w = db.begin_write().unwrap();
            w.open_table(META)
                .unwrap()
                .insert("next_seq", 1u64)
                .unwrap();
            w.commit().unwrap();
        }
        let s = Store::open(&d, FsyncPolicy::Always).unwrap();
        let next = s.next_seq();
        assert!(
            next > *first.last().unwrap(),
            "{next} reuses a stored number"
        );
        s.put_message("c", next, 1, b"t", b"new");
        s.flush_blocking();
        let chunk = s.load_messages("c", 0, 100, usize::MAX).unwrap();
        assert_eq!(chunk.messages.len(), 6, "every stored message is loaded");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Chunks: at most N messages or (past the first) B bytes, resuming after the last one;
    /// the sent mark makes QoS 1 re-sends DUP [MQTT-3.3.1-1].
    #[test]
    fn messages_load_in_bounded_chunks_with_their_sent_mark() {
        let d = dir("chunks");
        let s = Store::open(&d, FsyncPolicy::Always).unwrap();
        let seqs: Vec<u64> = (0..10).map(|_| s.next_seq()).collect();
        for &q in &seqs {
            s.put_message("c", q, 1, b"t", &[0u8; 100]);
        }
        s.set_sent("c", seqs[3]);
        s.set_sent("c", seqs[1]); // never backwards
        s.flush_blocking();
        let a = s.load_messages("c", 0, 4, usize::MAX).unwrap();
        assert_eq!(a.messages.len(), 4);
        assert!(a.messages.iter().all(|m| m.sent));
        let b = s.load_messages("c", a.last_seq, 100, 250).unwrap();
        assert_eq!(b.messages.len(), 3, "about 250 bytes: three of 101");
        assert!(b.messages.iter().all(|m| !m.sent));
        let c = s.load_messages("c", b.last_seq, 100, 1).unwrap();
        assert_eq!(c.messages.len(), 1, "at least one message per chunk");
        s.delete_session("c");
        s.flush_blocking();
        assert!(s
            .load_messages("c", 0, 100, usize::MAX)
            .unwrap()
            .messages
            .is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_garbage_file_stops_startup_with_its_name() {
        let d = dir("garbage");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("roostd.redb"), vec![0x5au8; 8192]).unwrap();
        let e = Store::open(&d, FsyncPolicy::Always)
            .unwrap_err()
            .to_string();
        assert!(e.contains("roostd.redb"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn corrupt_records_are_dropped_and_reported() {
        let d = dir("corrupt");
        {
            let s = Store::open(&d, FsyncPolicy::Always).unwrap();
            s.put_session("ok", true);
            s.put_subscription("ok", "x", 0);
            s.send(Op::PutSession {
                client: b"bad".to_vec(),
                value: vec![9, 9, 9],
            });
            // A subscription of no stored session, and one with an invalid filter.
            s.put_subscription("nobody", "y", 1);
            s.put_subscription("ok", "a/#/b", 1);
            s.flush_blocking();
        }
        let s = Store::open(&d, FsyncPolicy::Always).unwrap();
        let rec = s.recover().unwrap();
        assert_eq!(rec.sessions.len(), 1);
        assert_eq!(rec.sessions[0].subscriptions, vec![("x".to_string(), 0)]);
        assert_eq!(rec.dropped_records, 3);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Session records written before subscriptions had their own table keep their
    /// subscriptions: recovered from the record and moved into the table.
    #[test]
    fn subscriptions_in_old_session_records_are_migrated() {
        let d = dir("migrate");
        {
            let s = Store::open(&d, FsyncPolicy::Always).unwrap();
            s.send(Op::PutSession {
                client: b"old".to_vec(),
                value: encode_session(&[("legacy/#".into(), 1)], 0),
            });
            s.flush_blocking();
        }
        {
            let s = Store::open(&d, FsyncPolicy::Always).unwrap();
            let rec = s.recover().unwrap();
            assert_eq!(
                rec.sessions[0].subscriptions,
                vec![("legacy/#".to_string(), 1)]
            );
            // The next record of the session is written without its subscriptions.
            s.put_session("old", false);
            s.flush_blocking();
        }
        let s = Store::open(&d, FsyncPolicy::Always).unwrap();
        let rec = s.recover().unwrap();
        assert_eq!(
            rec.sessions[0].subscriptions,
            vec![("legacy/#".to_string(), 1)]
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Removing a session removes its subscriptions; others keep theirs.
    #[test]
    fn deleting_a_session_deletes_its_subscriptions() {
        let d = dir("delsubs");
        {
            let s = Store::open(&d, FsyncPolicy::Always).unwrap();
            for c in ["a", "ab"] {
                s.put_session(c, true);
                s.put_subscription(c, "t/1", 1);
            }
            s.delete_session("a");
            s.put_session("a", true);
            s.flush_blocking();
        }
        let s = Store::open(&d, FsyncPolicy::Always).unwrap();
        let mut rec = s.recover().unwrap();
        rec.sessions.sort_by(|x, y| x.client_id.cmp(&y.client_id));
        assert_eq!(rec.sessions.len(), 2);
        assert!(
            rec.sessions[0].subscriptions.is_empty(),
            "{:?}",
            rec.sessions[0]
        );
        assert_eq!(rec.sessions[1].subscriptions, vec![("t/1".to_string(), 1)]);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Issue 12: a lock held by another broker, a permission problem and real damage get
    /// different advice; only damage suggests moving the file aside.
    #[test]
    fn open_errors_tell_lock_permission_and_damage_apart() {
        let d = dir("lock");
        let first = Store::open(&d, FsyncPolicy::Never).unwrap();
        let e = Store::open(&d, FsyncPolicy::Never).unwrap_err();
        assert!(matches!(e, StorageError::InUse { .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains("in use by another roostd") && text.contains("--data-dir"));
        assert!(
            !text.contains("move it aside") && !text.contains("mv "),
            "{text}"
        );
        drop(first);
        let path = d.join("roostd.redb");
        let denied = open_error(
            &path,
            redb::DatabaseError::Storage(redb::StorageError::Io(std::io::Error::from(
                std::io::ErrorKind::PermissionDenied,
            ))),
        );
        let text = denied.to_string();
        assert!(
            text.contains("permission denied") && text.contains("roostd runs as"),
            "{text}"
        );
        assert!(text.contains("owned by"), "{text}");
        assert!(!text.contains("mv "), "{text}");
        let damaged = open_error(
            &path,
            redb::DatabaseError::Storage(redb::StorageError::Corrupted("bad page".into())),
        );
        let text = damaged.to_string();
        assert!(
            text.contains("damaged beyond repair") && text.contains(".broken"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Messages that were in flight come with the first chunk, wherever they are in the
    /// queue, so their packet ids are restored before any new delivery takes one.
    #[test]
    fn in_flight_messages_come_with_the_first_chunk() {
        let d = dir("early");
        let s = Store::open(&d, FsyncPolicy::Always).unwrap();
        let seqs: Vec<u64> = (0..10).map(|_| s.next_seq()).collect();
        for &q in &seqs {
            s.put_message("c", q, 2, b"t", b"x");
        }
        s.set_inflight("c", seqs[7], 42, true);
        s.flush_blocking();
        let first = s.load_messages("c", 0, 3, usize::MAX).unwrap();
        let got: Vec<u64> = first.messages.iter().map(|m| m.seq).collect();
        assert_eq!(got, vec![seqs[7], seqs[0], seqs[1], seqs[2]]);
        assert_eq!(first.messages[0].inflight, Some((42, true)));
        assert_eq!(first.last_seq, seqs[2]);
        // A later chunk meets it in its place (the session skips it).
        let later = s
            .load_messages("c", first.last_seq, 100, usize::MAX)
            .unwrap();
        assert!(later.messages.iter().any(|m| m.seq == seqs[7]));
        let _ = std::fs::remove_dir_all(&d);
    }
}
