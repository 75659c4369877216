//! Session state: what the broker keeps per client id, which outlives the connection when
//! clean session is 0. Subscriptions, the bounded outbound queue, the in-flight window with
//! packet ids, and inbound QoS 2 state.

use std::collections::VecDeque;
use std::sync::Arc;

use mqttbytes::QoS;
use parking_lot::Mutex;
use std::task::Waker;
use tokio::time::Instant;

use crate::message::{qos_from_stored, Publication};
use crate::storage::Store;

/// Per-session limits, from the config.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// Unacknowledged outgoing QoS 1/2 messages at most (max_inflight_messages).
    pub max_inflight: usize,
    /// Messages waiting beyond the in-flight window at most (max_queued_messages).
    pub max_queued_messages: usize,
    /// Topic + payload bytes waiting beyond the in-flight window at most (max_queued_bytes).
    pub max_queued_bytes: usize,
    /// Whether QoS 0 messages are queued for offline persistent sessions (queue_qos0_messages).
    pub queue_qos0: bool,
    /// How long a connected subscriber whose QoS 1/2 queue is full may hold its publishers
    /// back before further messages to it are dropped (backpressure_timeout; zero: drop at
    /// once, as Mosquitto does).
    pub backpressure: std::time::Duration,
}

/// A delivery that was queued.
#[derive(Debug, Default)]
pub struct Enqueued {
    /// The attached connection's waker, taken: wake it once the session lock is released.
    pub wake: Option<Waker>,
    /// The QoS 1/2 queue is over max_queued_messages: the publisher should pause reading
    /// until it drains (instead of this message being dropped after it was acknowledged).
    pub congested: bool,
}

/// Why a message was not delivered. Each is a label value of `roostd_messages_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The session's queue is at max_queued_messages or max_queued_bytes.
    QueueFull,
    /// QoS 0 message for an offline session while queue_qos0_messages is false.
    Qos0Offline,
    /// The session expired or was discarded with messages still queued or in flight.
    SessionExpired,
    /// A PUBLISH larger than message_size_limit (the connection is closed).
    TooLarge,
    /// The ACL did not allow the publish or the delivery.
    NotAuthorized,
    /// Storage writes are failing: a message for a persistent session could not be kept.
    StorageError,
}

impl DropReason {
    /// Every reason, in index order.
    pub const ALL: [DropReason; 6] = [
        DropReason::QueueFull,
        DropReason::Qos0Offline,
        DropReason::SessionExpired,
        DropReason::TooLarge,
        DropReason::NotAuthorized,
        DropReason::StorageError,
    ];

    /// Label value for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Qos0Offline => "qos0_offline",
            DropReason::SessionExpired => "session_expired",
            DropReason::TooLarge => "too_large",
            DropReason::NotAuthorized => "not_authorized",
            DropReason::StorageError => "storage_error",
        }
    }

    /// What the reason means, for log lines and the metric's help text.
    pub fn explain(self) -> &'static str {
        match self {
            DropReason::QueueFull => "its queue is at max_queued_messages or max_queued_bytes",
            DropReason::Qos0Offline => {
                "QoS 0 for an offline session while queue_qos0_messages is false"
            }
            DropReason::SessionExpired => "the session expired or was discarded",
            DropReason::TooLarge => "a PUBLISH over message_size_limit",
            DropReason::NotAuthorized => "the ACL refused the publish or the delivery",
            DropReason::StorageError => "storage writes are failing",
        }
    }

    /// Position in `ALL`.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One client id's session. Shared between the router (deliveries from publishers' tasks)
/// and the connection task currently attached.
#[derive(Debug)]
pub struct Session {
    /// Unique per session object; keys the session's entries in the trie.
    pub id: u64,
    /// The MQTT client identifier.
    pub client_id: Arc<str>,
    /// Everything mutable; held briefly, never across an await.
    pub state: Mutex<SessionState>,
    /// Id of the connection attached (0: none). A connection that finds another id here was
    /// taken over [MQTT-3.1.4-2]; cheaper than a cancellation token per connection.
    pub attached_conn: std::sync::atomic::AtomicU64,
    /// When the attached client last sent a packet, in ms of the router's clock.
    pub activity: std::sync::atomic::AtomicU64,
    /// 1.5 x the attached client's keepalive, in ms; 0 when it has none or is offline. The
    /// router's sweep wakes connections past it, which then close [MQTT-3.1.2-24].
    pub keepalive_ms: std::sync::atomic::AtomicU32,
    /// Set by the sweep before it wakes the connection: the connection then measures the
    /// client's silence (keepalive, freeing buffers) instead of reading the clock every time
    /// it goes to sleep.
    pub swept: std::sync::atomic::AtomicBool,
}

impl Session {
    pub(crate) fn new(
        id: u64,
        client_id: Arc<str>,
        clean: bool,
        store: Option<Arc<Store>>,
    ) -> Session {
        let mut state = SessionState::new(clean);
        if !clean {
            state.store = store.map(|s| (s, client_id.clone()));
        }
        Session {
            id,
            client_id,
            state: Mutex::new(state),
            attached_conn: std::sync::atomic::AtomicU64::new(0),
            activity: std::sync::atomic::AtomicU64::new(0),
            keepalive_ms: std::sync::atomic::AtomicU32::new(0),
            swept: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Wakes the attached connection so it looks at its session again (takeover, shutdown).
    pub fn wake_connection(&self) {
        let waker = self.state.lock().waker.take();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The connection a session is attached to.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// Connection id; a connection only detaches the session if it is still its own.
    pub conn_id: u64,
    /// The connection's user name (after authentication), for ACL checks.
    pub username: Option<Arc<str>>,
    /// 1.5 x the client's keepalive in ms (0: none), stored in the session under its lock
    /// when attaching, so a connection being taken over cannot overwrite its successor's.
    pub keepalive_ms: u32,
}

/// A message waiting for delivery.
#[derive(Debug, Clone)]
pub struct Queued {
    pub msg: Arc<Publication>,
    /// min(publish QoS, granted QoS).
    pub qos: QoS,
    /// Set only for retained messages sent because of a new subscription [MQTT-3.3.1-8].
    pub retain: bool,
    /// Storage sequence number; 0 when the message is not persisted.
    pub seq: u64,
    /// Sent before a restart (restored from disk): goes out with DUP=1 [MQTT-3.3.1-1].
    pub dup: bool,
}

/// Where an outgoing QoS 1/2 message is in its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflightState {
    AwaitPubAck,
    AwaitPubRec,
    AwaitPubComp,
}

/// An outgoing QoS 1/2 message sent and not yet fully acknowledged.
#[derive(Debug, Clone)]
pub struct Inflight {
    pub pkid: u16,
    pub item: Queued,
    pub state: InflightState,
}

/// A packet the connection should write, produced under the session lock and encoded after.
#[derive(Debug, Clone)]
pub enum Outgoing {
    Publish { item: Queued, pkid: u16, dup: bool },
    PubRel(u16),
}

/// A persistent session's queue while it is on disk (after a restart): bounded like the
/// in-memory queue, and brought into memory a chunk at a time as the client takes it.
#[derive(Debug, Default)]
pub struct OnDisk {
    /// Messages stored.
    pub count: usize,
    /// Their bytes (as stored: about topic + payload each).
    pub bytes: usize,
    /// Sequence number of the last message loaded: the next chunk starts after it.
    pub after: u64,
    /// Messages appended since the session was restored.
    pub appends: u64,
    /// Connection whose load is under way (0: none); only its result is taken, so a load
    /// started by a connection that was taken over is dropped and the new one loads again.
    pub loader: u64,
    /// `appends` when that load started.
    pub loader_appends: u64,
}

/// A chunk load to start (`SessionState::load_request`).
#[derive(Debug, Clone, Copy)]
pub struct LoadRequest {
    pub after: u64,
}

/// Messages per chunk loaded from disk.
pub const LOAD_MESSAGES: usize = 128;
/// Bytes per chunk loaded from disk (at least one message).
pub const LOAD_BYTES: usize = 1024 * 1024;

/// Mutable session state.
#[derive(Debug)]
pub struct SessionState {
    /// Clean session flag of the connection that created it: state ends with that connection.
    pub clean: bool,
    /// User name of the attached (or last) connection, for per-delivery ACL checks.
    pub username: Option<Arc<str>>,
    /// The connection currently attached, if any.
    pub attached: Option<Attachment>,
    /// Set when the session was removed from the router; later subscribes are ignored.
    pub discarded: bool,
    /// Id of the newest connection that attached: an older one finishing its handshake
    /// later does not take the session back [MQTT-3.1.4-2].
    pub newest_conn: u64,
    /// Topic filter -> granted QoS.
    pub subscriptions: Subscriptions,
    /// Messages not yet sent (beyond the in-flight window), oldest first.
    pub queue: VecDeque<Queued>,
    /// Topic + payload bytes in `queue`.
    pub queued_bytes: usize,
    /// Of `queue`, the QoS 0 entries and their bytes. QoS 0 and QoS 1/2 are bounded
    /// separately, each by max_queued_messages/max_queued_bytes, so that a backlog of QoS 0
    /// never costs a client its QoS 1/2 messages (Mosquitto's limit counts QoS 1/2 only).
    pub queued_qos0: usize,
    pub queued_bytes_qos0: usize,
    /// Sent QoS 1/2 messages awaiting acknowledgement, in send order.
    pub inflight: VecDeque<Inflight>,
    /// Last packet id handed out.
    next_pkid: u16,
    /// Inbound QoS 2 packet ids received and not yet released by PUBREL: a re-sent PUBLISH
    /// with one of these ids is acknowledged but not routed again.
    pub incoming_qos2: PacketIds,
    /// When the last connection went away (for persistent_client_expiration).
    pub disconnected_at: Option<Instant>,
    /// Since when this connected client's QoS 1/2 queue has been over its limit.
    pub congested_since: Option<Instant>,
    /// For persistent sessions with persistence on: the store and this client's id.
    pub store: Option<(Arc<Store>, Arc<str>)>,
    /// Messages kept on disk and not loaded (after a restart, until the client returns and
    /// has taken them all, a chunk at a time); while set, new messages go to disk only.
    pub on_disk: Option<Box<OnDisk>>,
    /// Messages dropped for this client since the session began, by `DropReason::index`.
    pub dropped: DropCounts,
    /// The attached connection's task, left here each time it looks at the queue: a new
    /// delivery, a takeover or shutdown takes and wakes it. Checking the queue and leaving
    /// the waker under one lock is what makes a missed wake-up impossible.
    pub waker: Option<Waker>,
    /// Publishers paused by this session's full QoS 1/2 queue, woken once it drains.
    pub space_waiters: Vec<Waker>,
    /// Retained messages still to send for new subscriptions, fed into the queue a chunk at
    /// a time as it drains (`Router::feed_retained`): boxed, most sessions have none.
    pub retained_feeds: Option<Box<VecDeque<RetainedFeed>>>,
}

/// The retained messages of one new subscription still to send [MQTT-3.3.1-6]: every one is
/// sent, paced by the in-flight window and TCP, none dropped by the queue limits, and a
/// filter matching a million is never copied into the queue at once.
#[derive(Debug)]
pub struct RetainedFeed {
    pub filter: Box<str>,
    /// Granted QoS of the subscription.
    pub qos: QoS,
    /// Topic of the last message fed (the walk resumes after it); None: not started.
    pub after: Option<bytes::Bytes>,
    /// When the subscription was made: a retained message published since then reached the
    /// client live already and is not fed again.
    pub since: std::time::Instant,
}

/// Retained messages fed into a queue per turn.
pub const FEED_CHUNK: usize = 32;

/// A session's subscriptions (filter -> granted QoS): a sorted Vec while few (most clients hold
/// a handful, and this is memory per session), a HashMap past MANY_SUBSCRIPTIONS (so a client
/// subscribing to thousands of filters one by one costs O(1) each, not a memmove each).
#[derive(Debug)]
pub enum Subscriptions {
    Few(Vec<(Box<str>, QoS)>),
    Many(Box<std::collections::HashMap<Box<str>, QoS>>),
}

/// Above this many filters a session's subscriptions move to a HashMap.
const MANY_SUBSCRIPTIONS: usize = 64;

impl Default for Subscriptions {
    fn default() -> Self {
        Subscriptions::Few(Vec::new())
    }
}

impl Subscriptions {
    /// Adds or replaces `filter`; returns the QoS it had.
    pub fn insert(&mut self, filter: &str, qos: QoS) -> Option<QoS> {
        let few = match self {
            Subscriptions::Many(map) => return map.insert(filter.into(), qos),
            Subscriptions::Few(few) => few,
        };
        match few.binary_search_by(|(f, _)| (**f).cmp(filter)) {
            Ok(i) => Some(std::mem::replace(&mut few[i].1, qos)),
            Err(_) if few.len() >= MANY_SUBSCRIPTIONS => {
                let mut map: std::collections::HashMap<Box<str>, QoS> =
                    std::mem::take(few).into_iter().collect();
                map.insert(filter.into(), qos);
                *self = Subscriptions::Many(Box::new(map));
                None
            }
            Err(i) => {
                if few.capacity() == 0 {
                    few.reserve_exact(1);
                }
                few.insert(i, (filter.into(), qos));
                None
            }
        }
    }

    /// Removes `filter`; returns the QoS it had.
    pub fn remove(&mut self, filter: &str) -> Option<QoS> {
        match self {
            Subscriptions::Many(map) => {
                let old = map.remove(filter);
                if map.len() <= MANY_SUBSCRIPTIONS / 2 {
                    // Back to the small form once most filters are gone.
                    let mut few: Vec<(Box<str>, QoS)> =
                        std::mem::take(&mut **map).into_iter().collect();
                    few.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                    *self = Subscriptions::Few(few);
                }
                old
            }
            Subscriptions::Few(few) => {
                let i = few.binary_search_by(|(f, _)| (**f).cmp(filter)).ok()?;
                Some(few.remove(i).1)
            }
        }
    }

    #[cfg(test)]
    pub fn get(&self, filter: &str) -> Option<QoS> {
        match self {
            Subscriptions::Many(map) => map.get(filter).copied(),
            Subscriptions::Few(few) => {
                let i = few.binary_search_by(|(f, _)| (**f).cmp(filter)).ok()?;
                Some(few[i].1)
            }
        }
    }

    /// Every filter (sorted while few, in no order once many).
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = (&str, QoS)> {
        let (few, many) = match self {
            Subscriptions::Few(v) => (Some(v.iter()), None),
            Subscriptions::Many(m) => (None, Some(m.iter())),
        };
        few.into_iter()
            .flatten()
            .map(|(f, q)| (&**f, *q))
            .chain(many.into_iter().flatten().map(|(f, q)| (&**f, *q)))
    }

    /// Removes and returns every filter.
    pub fn drain(&mut self) -> std::vec::IntoIter<(Box<str>, QoS)> {
        match std::mem::take(self) {
            Subscriptions::Few(v) => v.into_iter(),
            Subscriptions::Many(m) => m.into_iter().collect::<Vec<_>>().into_iter(),
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        match self {
            Subscriptions::Few(v) => v.len(),
            Subscriptions::Many(m) => m.len(),
        }
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Packet ids as a sorted Vec (inbound QoS 2 ids awaiting PUBREL): empty for most sessions,
/// and binary search keeps a client that holds thousands from costing more than a log.
#[derive(Debug, Default)]
pub struct PacketIds(Vec<u16>);

impl PacketIds {
    /// Adds `id`; false if it was there.
    pub fn insert(&mut self, id: u16) -> bool {
        match self.0.binary_search(&id) {
            Ok(_) => false,
            Err(i) => {
                self.0.insert(i, id);
                true
            }
        }
    }

    /// Removes `id`; false if it was not there.
    pub fn remove(&mut self, id: u16) -> bool {
        match self.0.binary_search(&id) {
            Ok(i) => {
                self.0.remove(i);
                if self.0.is_empty() {
                    self.0 = Vec::new();
                }
                true
            }
            Err(_) => false,
        }
    }

    pub fn contains(&self, id: u16) -> bool {
        self.0.binary_search(&id).is_ok()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.0.iter().copied()
    }
}

impl Extend<u16> for PacketIds {
    fn extend<I: IntoIterator<Item = u16>>(&mut self, ids: I) {
        self.0.extend(ids);
        self.0.sort_unstable();
        self.0.dedup();
    }
}

/// Messages dropped for one client, by reason, and when the client's drops were last logged;
/// allocated on the first drop (most sessions never drop anything).
#[derive(Debug, Default)]
pub struct DropCounts(Option<Box<DropState>>);

#[derive(Debug, Default)]
struct DropState {
    counts: [u64; DropReason::ALL.len()],
    /// When a warning about this client's drops was last logged.
    warned_at: Option<Instant>,
    /// Drops since then.
    unwarned: u64,
    /// The reason of the latest drop.
    last: Option<DropReason>,
}

/// A client's drops are logged at most this often.
pub const DROP_WARNING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

impl DropCounts {
    pub fn add(&mut self, reason: DropReason) {
        let d = self.0.get_or_insert_with(Default::default);
        d.counts[reason.index()] += 1;
        d.unwarned += 1;
        d.last = Some(reason);
    }

    pub fn get(&self, reason: DropReason) -> u64 {
        self.0.as_ref().map_or(0, |d| d.counts[reason.index()])
    }

    pub fn total(&self) -> u64 {
        self.0.as_ref().map_or(0, |d| d.counts.iter().sum())
    }

    /// If drops happened since the last warning and the interval has passed: how many, and
    /// the latest reason (the warning is then due, and counted as given).
    pub fn take_warning(&mut self) -> Option<(u64, DropReason)> {
        let d = self.0.as_deref_mut()?;
        let due = d.unwarned > 0
            && d.warned_at
                .is_none_or(|t| t.elapsed() >= DROP_WARNING_INTERVAL);
        if !due {
            return None;
        }
        d.warned_at = Some(Instant::now());
        let n = std::mem::take(&mut d.unwarned);
        Some((n, d.last?))
    }
}

/// Bound on publishers registered as waiting for one congested session.
const MAX_SPACE_WAITERS: usize = 256;

impl SessionState {
    fn new(clean: bool) -> SessionState {
        SessionState {
            clean,
            username: None,
            attached: None,
            discarded: false,
            newest_conn: 0,
            subscriptions: Subscriptions::default(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            queued_qos0: 0,
            queued_bytes_qos0: 0,
            inflight: VecDeque::new(),
            next_pkid: 0,
            incoming_qos2: PacketIds::default(),
            disconnected_at: None,
            dropped: DropCounts::default(),
            congested_since: None,
            store: None,
            on_disk: None,
            waker: None,
            space_waiters: Vec::new(),
            retained_feeds: None,
        }
    }

    /// QoS 1/2 messages waiting beyond the in-flight window.
    pub fn queued_qos12(&self) -> usize {
        self.queue.len() - self.queued_qos0
    }

    /// True while publishers should wait for this session: connected, QoS 1/2 queue over its
    /// limit, and not stalled for longer than the backpressure timeout.
    /// Leaves the attached connection's waker (a clone only when it changed).
    pub fn set_waker(&mut self, waker: &Waker) {
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            self.waker = Some(waker.clone());
        }
    }

    /// Registers a publisher to wake when this congested queue drains. Bounded: past
    /// MAX_SPACE_WAITERS a publisher is not registered and finds out on its periodic
    /// recheck instead (waking the others to make room would have them re-register and
    /// wake each other in a loop while the queue stays full).
    pub fn wait_for_space(&mut self, waker: &Waker) {
        if self.space_waiters.len() >= MAX_SPACE_WAITERS
            || self.space_waiters.iter().any(|w| w.will_wake(waker))
        {
            return;
        }
        self.space_waiters.push(waker.clone());
    }

    /// Takes the publishers waiting for this queue's space (to wake outside the lock).
    pub fn take_space_waiters(&mut self) -> Vec<Waker> {
        std::mem::take(&mut self.space_waiters)
    }

    pub fn is_congested(&self, limits: &SessionLimits) -> bool {
        self.attached.is_some()
            && self.queued_qos12() + self.on_disk_count() >= limits.max_queued_messages
            && self
                .congested_since
                .is_some_and(|t| t.elapsed() < limits.backpressure)
    }

    /// Queues a delivery.
    ///
    /// QoS 0 beyond the limits is dropped. QoS 1/2 for a connected client beyond
    /// max_queued_messages is still queued (up to twice the limit) and reported as congested,
    /// so the publisher pauses instead of the acknowledged message being lost; a client that
    /// stays congested longer than the backpressure timeout is treated as stalled and further
    /// messages to it are dropped and counted. Offline sessions drop beyond the limits.
    pub fn enqueue(
        &mut self,
        mut item: Queued,
        limits: &SessionLimits,
    ) -> Result<Enqueued, DropReason> {
        if self.discarded {
            return Err(DropReason::SessionExpired);
        }
        let online = self.attached.is_some();
        if !online && item.qos == QoS::AtMostOnce && !limits.queue_qos0 {
            return Err(self.note_drop(DropReason::Qos0Offline));
        }
        // QoS 0 for a connected client is never stored: it takes the queue in memory (its own
        // QoS 0 bounds) even while older messages are still on disk.
        let stored_qos0 = item.qos == QoS::AtMostOnce && online;
        if let Some((count, bytes)) = self
            .on_disk
            .as_deref()
            .filter(|_| !stored_qos0)
            .map(|d| (d.count, d.bytes))
        {
            // After a restart, until the client has taken what is stored: append to disk,
            // not to memory (order), bounded like the queue in memory (a connected client
            // draining it gets the backpressure margin: twice the limits).
            let factor = if online { 2 } else { 1 };
            let size = item.msg.size() + 3;
            if count >= factor * limits.max_queued_messages
                || bytes + size > factor * limits.max_queued_bytes
            {
                return Err(self.note_drop(DropReason::QueueFull));
            }
            if !self.persist(&mut item) {
                return Err(self.note_drop(DropReason::StorageError));
            }
            let wake = self.queue.is_empty() && online;
            if let Some(d) = self.on_disk.as_deref_mut() {
                d.count += 1;
                d.bytes += size;
                d.appends += 1;
            }
            // A connected client draining its stored queue holds its publishers back like a
            // full queue in memory does (up to twice the limit, then drops).
            let congested =
                online && !limits.backpressure.is_zero() && count + 1 >= limits.max_queued_messages;
            if congested {
                self.congested_since.get_or_insert_with(Instant::now);
            }
            return Ok(Enqueued {
                // The connection loads it (it may be waiting for nothing else).
                wake: if wake { self.waker.take() } else { None },
                congested,
            });
        }
        let size = item.msg.size();
        let qos0 = item.qos == QoS::AtMostOnce;
        let (count, bytes) = if qos0 {
            (self.queued_qos0, self.queued_bytes_qos0)
        } else {
            (
                self.queue.len() - self.queued_qos0,
                self.queued_bytes - self.queued_bytes_qos0,
            )
        };
        let mut congested = false;
        if count >= limits.max_queued_messages || bytes + size > limits.max_queued_bytes {
            let may_wait = !qos0
                && online
                && !limits.backpressure.is_zero()
                && count < 2 * limits.max_queued_messages
                && bytes + size <= 2 * limits.max_queued_bytes
                && match self.congested_since {
                    None => true,
                    Some(t) => t.elapsed() < limits.backpressure,
                };
            if !may_wait {
                return Err(self.note_drop(DropReason::QueueFull));
            }
            self.congested_since.get_or_insert_with(Instant::now);
            congested = true;
        }
        if !self.persist(&mut item) {
            return Err(self.note_drop(DropReason::StorageError));
        }
        let was_empty = self.queue.is_empty();
        self.queued_bytes += size;
        if qos0 {
            self.queued_qos0 += 1;
            self.queued_bytes_qos0 += size;
        }
        self.queue.push_back(item);
        Ok(Enqueued {
            // Only when the queue was empty: with messages already queued the connection is
            // awake or waits for something that wakes it anyway (its socket, a PUBACK), and
            // waking it per message would cost a poll per publisher turn.
            wake: if online && was_empty {
                self.waker.take()
            } else {
                None
            },
            congested,
        })
    }

    /// Writes a message for a persistent session to the store (QoS 1/2, and QoS 0 queued
    /// while offline). False if storage is failing and the message cannot be kept.
    fn persist(&mut self, item: &mut Queued) -> bool {
        let Some((store, client)) = &self.store else {
            return true;
        };
        if item.qos == QoS::AtMostOnce && self.attached.is_some() {
            return true;
        }
        if !store.healthy() {
            return false;
        }
        item.seq = store.next_seq();
        store.put_message(
            client,
            item.seq,
            item.qos as u8,
            &item.msg.topic,
            &item.msg.payload,
        );
        true
    }

    /// Forgets a persisted message (delivered, acknowledged).
    fn unpersist(&self, seq: u64) {
        if let (Some((store, client)), true) = (&self.store, seq != 0) {
            store.delete_message(client, seq);
        }
    }

    /// Records an inbound QoS 2 packet id; false if it was already there (a re-sent PUBLISH).
    pub fn add_incoming(&mut self, pkid: u16) -> bool {
        let new = self.incoming_qos2.insert(pkid);
        if let (true, Some((store, client))) = (new, &self.store) {
            store.add_incoming(client, pkid);
        }
        new
    }

    /// PUBREL: forgets an inbound QoS 2 packet id.
    pub fn remove_incoming(&mut self, pkid: u16) {
        if self.incoming_qos2.remove(pkid) {
            if let Some((store, client)) = &self.store {
                store.remove_incoming(client, pkid);
            }
        }
    }

    /// Writes this persistent session's record (online or not; subscriptions are written one
    /// by one as they change).
    pub fn persist_record(&self) {
        if let Some((store, client)) = &self.store {
            store.put_session(client, self.attached.is_none());
        }
    }

    /// Adds or replaces `filter` in the store (persistent sessions).
    pub fn persist_subscription(&self, filter: &str, qos: QoS) {
        if let Some((store, client)) = &self.store {
            store.put_subscription(client, filter, qos as u8);
        }
    }

    /// Removes `filter` from the store (persistent sessions).
    pub fn unpersist_subscription(&self, filter: &str) {
        if let Some((store, client)) = &self.store {
            store.delete_subscription(client, filter);
        }
    }

    /// Removes this persistent session from the store (expired or replaced).
    pub fn unpersist_session(&self) {
        if let Some((store, client)) = &self.store {
            store.delete_session(client);
        }
    }

    /// Whether connection `conn_id` should load the next chunk from disk now: the session
    /// has messages there, the queue in memory runs short, and no load of this connection's is
    /// under way. Marks the load as its.
    pub fn load_request(&mut self, conn_id: u64) -> Option<LoadRequest> {
        let d = self.on_disk.as_deref_mut()?;
        let short = self.queue.len() < LOAD_MESSAGES / 2 && self.queued_bytes < LOAD_BYTES;
        if d.loader == conn_id || !short {
            return None;
        }
        d.loader = conn_id;
        d.loader_appends = d.appends;
        Some(LoadRequest { after: d.after })
    }

    /// Takes a chunk loaded from disk by connection `conn_id` (false, and nothing taken, if
    /// that load is no longer the session's: taken over). Messages that were in flight go
    /// back into the window with their packet ids and are re-sent into `resend` [MQTT-4.4.0-1];
    /// the rest join the queue (behind earlier chunks, before anything newer, which is on disk).
    pub fn restore_chunk(
        &mut self,
        conn_id: u64,
        chunk: crate::storage::LoadedChunk,
        resend: &mut Vec<Outgoing>,
    ) -> bool {
        let Some(d) = self.on_disk.as_deref_mut() else {
            return false;
        };
        if d.loader != conn_id {
            return false;
        }
        d.loader = 0;
        // A message that was in flight came with the first chunk; when a later chunk meets it
        // again (in its place in the queue) it is skipped, and was counted already.
        let mut messages = chunk.messages;
        // Records this load read, skipped ones included: zero means the disk had no more.
        let read = messages.len() + chunk.skipped;
        let inflight = &self.inflight;
        messages.retain(|m| m.seq == 0 || !inflight.iter().any(|i| i.item.seq == m.seq));
        let taken = messages.len() + chunk.skipped;
        let bytes: usize = messages
            .iter()
            .map(|m| m.topic.len() + m.payload.len() + 3)
            .sum();
        d.count = d.count.saturating_sub(taken);
        d.bytes = d.bytes.saturating_sub(bytes);
        d.after = d.after.max(chunk.last_seq);
        // Done once all is taken; or when the disk had nothing more and nothing was added
        // since this load started (a count that was off cannot keep us loading forever).
        if d.count == 0 || (read == 0 && d.appends == d.loader_appends) {
            self.on_disk = None;
        }
        for m in messages {
            let qos = qos_from_stored(m.qos);
            let item = Queued {
                msg: Arc::new(Publication {
                    topic: m.topic,
                    payload: m.payload,
                    qos,
                    retain: false,
                    received_at: std::time::Instant::now(),
                }),
                qos,
                retain: false,
                seq: m.seq,
                dup: m.sent && qos != QoS::AtMostOnce,
            };
            match m.inflight {
                Some((pkid, rec))
                    if qos != QoS::AtMostOnce && !self.inflight.iter().any(|i| i.pkid == pkid) =>
                {
                    let state = match (qos, rec) {
                        (QoS::ExactlyOnce, true) => InflightState::AwaitPubComp,
                        (QoS::ExactlyOnce, false) => InflightState::AwaitPubRec,
                        _ => InflightState::AwaitPubAck,
                    };
                    resend.push(match state {
                        InflightState::AwaitPubComp => Outgoing::PubRel(pkid),
                        _ => Outgoing::Publish {
                            item: item.clone(),
                            pkid,
                            dup: true,
                        },
                    });
                    self.inflight.push_back(Inflight { pkid, item, state });
                }
                _ => self.push_counted(item),
            }
        }
        true
    }

    /// Starts sending the retained messages matching a new subscription (again from the
    /// start if the filter was being fed already: a re-subscribe sends them anew).
    pub fn add_retained_feed(&mut self, filter: &str, qos: QoS) {
        let feeds = self.retained_feeds.get_or_insert_with(Default::default);
        feeds.retain(|f| &*f.filter != filter);
        feeds.push_back(RetainedFeed {
            filter: filter.into(),
            qos,
            after: None,
            since: std::time::Instant::now(),
        });
    }

    /// Stops feeding retained messages for `filter` (unsubscribed).
    pub fn cancel_retained_feed(&mut self, filter: &str) {
        if let Some(feeds) = self.retained_feeds.as_deref_mut() {
            feeds.retain(|f| &*f.filter != filter);
            if feeds.is_empty() {
                self.retained_feeds = None;
            }
        }
    }

    /// Whether the next chunk of retained messages should be fed now: there are some, and the
    /// queue runs short (memory stays bounded however many match).
    pub fn wants_retained(&self) -> bool {
        self.retained_feeds.is_some()
            // Not while older messages are on disk: a fed message is stored with a higher
            // sequence number, and the chunk load would read it back (a duplicate).
            && self.on_disk.is_none()
            && self.queue.len() < FEED_CHUNK
            && self.queued_bytes < LOAD_BYTES
    }

    /// Queues a retained message fed for a subscription: persisted like any delivery, but
    /// not subject to the queue limits (the feed paces itself).
    pub fn push_retained(&mut self, mut item: Queued) -> Result<(), DropReason> {
        if !self.persist(&mut item) {
            return Err(self.note_drop(DropReason::StorageError));
        }
        self.push_counted(item);
        Ok(())
    }

    /// Appends to the queue, keeping its message and byte counts (QoS 0 apart).
    fn push_counted(&mut self, item: Queued) {
        let size = item.msg.size();
        self.queued_bytes += size;
        if item.qos == QoS::AtMostOnce {
            self.queued_qos0 += 1;
            self.queued_bytes_qos0 += size;
        }
        self.queue.push_back(item);
    }

    /// Messages kept on disk for this session (not yet loaded).
    pub fn on_disk_count(&self) -> usize {
        self.on_disk.as_deref().map_or(0, |d| d.count)
    }

    /// Counts a drop against this client (for the slow-client report) and returns the reason.
    pub fn note_drop(&mut self, reason: DropReason) -> DropReason {
        self.dropped.add(reason);
        reason
    }

    /// Total messages dropped for this client.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.total()
    }

    fn alloc_pkid(&mut self) -> u16 {
        // The window is never full here (checked by the caller), so a free id exists.
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1);
            if self.next_pkid != 0 && !self.inflight.iter().any(|i| i.pkid == self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    /// Moves queued messages into `out` while the in-flight window allows and until about
    /// `budget` bytes were taken. QoS 1/2 messages get a packet id and enter the window.
    /// Returns true when the queue left congestion (paused publishers may go on).
    pub fn take_ready(
        &mut self,
        limits: &SessionLimits,
        mut budget: usize,
        out: &mut Vec<Outgoing>,
    ) -> bool {
        let mut sent_seq = 0;
        while budget > 0 {
            let Some(front) = self.queue.front() else {
                break;
            };
            if front.qos != QoS::AtMostOnce && self.inflight.len() >= limits.max_inflight {
                break;
            }
            let Some(item) = self.queue.pop_front() else {
                break;
            };
            let size = item.msg.size();
            self.queued_bytes -= size;
            if item.qos == QoS::AtMostOnce {
                self.queued_qos0 -= 1;
                self.queued_bytes_qos0 -= size;
            }
            budget = budget.saturating_sub(size + 8);
            if item.qos == QoS::AtMostOnce {
                self.unpersist(item.seq);
                out.push(Outgoing::Publish {
                    item,
                    pkid: 0,
                    dup: false,
                });
            } else {
                let pkid = self.alloc_pkid();
                if let (QoS::ExactlyOnce, Some((store, client)), true) =
                    (item.qos, &self.store, item.seq != 0)
                {
                    // Exactly once across a restart needs the packet id kept with the message.
                    store.set_inflight(client, item.seq, pkid, false);
                }
                let state = if item.qos == QoS::AtLeastOnce {
                    InflightState::AwaitPubAck
                } else {
                    InflightState::AwaitPubRec
                };
                sent_seq = sent_seq.max(item.seq);
                let dup = item.dup;
                self.inflight.push_back(Inflight {
                    pkid,
                    item: item.clone(),
                    state,
                });
                out.push(Outgoing::Publish { item, pkid, dup });
            }
        }
        if let (Some((store, client)), true) = (&self.store, sent_seq > 0) {
            // One record per batch: after a restart these go out again with DUP=1.
            store.set_sent(client, sent_seq);
        }
        if self.queue.is_empty() && self.queue.capacity() > 64 {
            self.queue.shrink_to_fit();
        }
        if self.congested_since.is_some() && self.queued_qos12() < limits.max_queued_messages {
            self.congested_since = None;
            return true;
        }
        false
    }

    /// On reconnect: every in-flight message again, in order, PUBLISH with DUP for those not
    /// yet received by the client, PUBREL for those awaiting PUBCOMP [MQTT-4.4.0-1].
    pub fn resend_inflight(&self, out: &mut Vec<Outgoing>) {
        for i in &self.inflight {
            out.push(match i.state {
                InflightState::AwaitPubComp => Outgoing::PubRel(i.pkid),
                _ => Outgoing::Publish {
                    item: i.item.clone(),
                    pkid: i.pkid,
                    dup: true,
                },
            });
        }
    }

    fn position(&self, pkid: u16, state: InflightState) -> Option<usize> {
        // Acknowledgements mostly arrive in order: the front is the usual hit.
        self.inflight
            .iter()
            .position(|i| i.pkid == pkid && i.state == state)
    }

    /// PUBACK: ends a QoS 1 delivery. False if no such message was in flight.
    pub fn puback(&mut self, pkid: u16) -> bool {
        match self
            .position(pkid, InflightState::AwaitPubAck)
            .and_then(|p| self.inflight.remove(p))
        {
            Some(done) => {
                self.unpersist(done.item.seq);
                true
            }
            None => false,
        }
    }

    /// PUBREC: the client has the QoS 2 message; from now on only PUBREL is owed.
    pub fn pubrec(&mut self, pkid: u16) -> bool {
        let pos = self
            .position(pkid, InflightState::AwaitPubRec)
            .or_else(|| self.position(pkid, InflightState::AwaitPubComp));
        match pos.and_then(|p| self.inflight.get_mut(p)) {
            Some(i) => {
                i.state = InflightState::AwaitPubComp;
                let seq = i.item.seq;
                if let (Some((store, client)), true) = (&self.store, seq != 0) {
                    store.set_inflight(client, seq, pkid, true);
                }
                true
            }
            None => false,
        }
    }

    /// PUBCOMP: ends a QoS 2 delivery.
    pub fn pubcomp(&mut self, pkid: u16) -> bool {
        match self
            .position(pkid, InflightState::AwaitPubComp)
            .and_then(|p| self.inflight.remove(p))
        {
            Some(done) => {
                self.unpersist(done.item.seq);
                true
            }
            None => false,
        }
    }

    /// Empties the queue and window (session discarded or expired); returns how many
    /// messages were lost.
    pub fn clear_messages(&mut self) -> usize {
        let n = self.queue.len() + self.inflight.len();
        self.queue = VecDeque::new();
        self.inflight = VecDeque::new();
        self.queued_bytes = 0;
        self.queued_qos0 = 0;
        self.queued_bytes_qos0 = 0;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn limits() -> SessionLimits {
        SessionLimits {
            max_inflight: 2,
            max_queued_messages: 3,
            max_queued_bytes: 1 << 20,
            queue_qos0: false,
            backpressure: std::time::Duration::ZERO,
        }
    }

    fn item(qos: QoS) -> Queued {
        Queued {
            msg: Arc::new(Publication {
                topic: Bytes::from_static(b"t"),
                payload: Bytes::from_static(b"p"),
                qos,
                retain: false,
                received_at: std::time::Instant::now(),
            }),
            qos,
            retain: false,
            seq: 0,
            dup: false,
        }
    }

    fn attach(s: &mut SessionState) {
        s.attached = Some(Attachment {
            conn_id: 1,
            username: None,
            keepalive_ms: 0,
        });
    }

    #[test]
    fn inflight_window_bounds_qos1_and_ids_are_distinct() {
        let mut s = SessionState::new(false);
        attach(&mut s);
        for _ in 0..3 {
            s.enqueue(item(QoS::AtLeastOnce), &limits()).unwrap();
        }
        assert_eq!(
            s.enqueue(item(QoS::AtLeastOnce), &limits()).err(),
            Some(DropReason::QueueFull)
        );
        let mut out = Vec::new();
        s.take_ready(&limits(), usize::MAX, &mut out);
        assert_eq!(out.len(), 2);
        let ids: Vec<u16> = s.inflight.iter().map(|i| i.pkid).collect();
        assert_eq!(ids, vec![1, 2]);
        assert!(s.puback(1));
        assert!(!s.puback(1));
        out.clear();
        s.take_ready(&limits(), usize::MAX, &mut out);
        assert_eq!(
            s.inflight.iter().map(|i| i.pkid).collect::<Vec<_>>(),
            vec![2, 3]
        );
    }

    #[test]
    fn packet_ids_skip_zero_and_ids_in_flight() {
        let mut s = SessionState::new(false);
        s.next_pkid = u16::MAX - 1;
        s.inflight.push_back(Inflight {
            pkid: 1,
            item: item(QoS::AtLeastOnce),
            state: InflightState::AwaitPubAck,
        });
        assert_eq!(s.alloc_pkid(), u16::MAX);
        assert_eq!(s.alloc_pkid(), 2);
    }

    #[test]
    fn qos2_handshake_and_resend_order() {
        let mut s = SessionState::new(false);
        attach(&mut s);
        s.enqueue(item(QoS::ExactlyOnce), &limits()).unwrap();
        s.enqueue(item(QoS::ExactlyOnce), &limits()).unwrap();
        let mut out = Vec::new();
        s.take_ready(&limits(), usize::MAX, &mut out);
        assert!(s.pubrec(1));
        out.clear();
        s.resend_inflight(&mut out);
        assert!(matches!(out[0], Outgoing::PubRel(1)));
        assert!(matches!(
            out[1],
            Outgoing::Publish {
                pkid: 2,
                dup: true,
                ..
            }
        ));
        assert!(!s.puback(1));
        assert!(s.pubcomp(1));
        assert_eq!(s.inflight.len(), 1);
    }

    #[test]
    fn a_qos0_backlog_does_not_cost_qos1_messages() {
        let mut s = SessionState::new(false);
        attach(&mut s);
        for _ in 0..3 {
            s.enqueue(item(QoS::AtMostOnce), &limits()).unwrap();
        }
        assert_eq!(
            s.enqueue(item(QoS::AtMostOnce), &limits()).err(),
            Some(DropReason::QueueFull)
        );
        for _ in 0..3 {
            s.enqueue(item(QoS::AtLeastOnce), &limits()).unwrap();
        }
        assert_eq!(
            s.enqueue(item(QoS::AtLeastOnce), &limits()).err(),
            Some(DropReason::QueueFull)
        );
        let mut out = Vec::new();
        s.take_ready(&limits(), usize::MAX, &mut out);
        assert_eq!((s.queued_qos0, s.queue.len()), (0, 1));
    }

    #[test]
    fn a_full_queue_holds_publishers_back_then_drops_when_stalled() {
        let lim = SessionLimits {
            backpressure: std::time::Duration::from_secs(3600),
            ..limits()
        };
        let mut s = SessionState::new(false);
        attach(&mut s);
        for _ in 0..3 {
            assert!(!s.enqueue(item(QoS::AtLeastOnce), &lim).unwrap().congested);
        }
        // Over the limit: queued, publisher told to wait; up to twice the limit.
        for _ in 0..3 {
            assert!(s.enqueue(item(QoS::AtLeastOnce), &lim).unwrap().congested);
        }
        assert!(s.is_congested(&lim));
        assert_eq!(
            s.enqueue(item(QoS::AtLeastOnce), &lim).err(),
            Some(DropReason::QueueFull)
        );
        // QoS 0 never waits.
        for _ in 0..3 {
            s.enqueue(item(QoS::AtMostOnce), &lim).unwrap();
        }
        assert_eq!(
            s.enqueue(item(QoS::AtMostOnce), &lim).err(),
            Some(DropReason::QueueFull)
        );
        // Draining below the limit ends the congestion (the window needs acks to move on).
        let mut out = Vec::new();
        assert!(!s.take_ready(&lim, usize::MAX, &mut out));
        assert!(s.is_congested(&lim));
        assert!(s.puback(1) && s.puback(2));
        assert!(s.take_ready(&lim, usize::MAX, &mut out));
        assert!(!s.is_congested(&lim));
        // A client congested for longer than the timeout is stalled: drop instead of waiting.
        let mut s = SessionState::new(false);
        attach(&mut s);
        let short = SessionLimits {
            backpressure: std::time::Duration::from_millis(1),
            ..limits()
        };
        for _ in 0..4 {
            s.enqueue(item(QoS::AtLeastOnce), &short).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(!s.is_congested(&short));
        assert_eq!(
            s.enqueue(item(QoS::AtLeastOnce), &short).err(),
            Some(DropReason::QueueFull)
        );
    }

    #[test]
    fn qos0_is_not_queued_offline_by_default() {
        let mut s = SessionState::new(false);
        assert_eq!(
            s.enqueue(item(QoS::AtMostOnce), &limits()).err(),
            Some(DropReason::Qos0Offline)
        );
        assert!(s.enqueue(item(QoS::AtLeastOnce), &limits()).is_ok());
    }

    /// A waker that counts its wake-ups.
    struct Count(std::sync::atomic::AtomicUsize);
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    fn counting_waker() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    #[test]
    fn enqueue_hands_back_the_connection_waker_once() {
        let mut s = SessionState::new(true);
        attach(&mut s);
        let (count, waker) = counting_waker();
        s.set_waker(&waker);
        let first = s.enqueue(item(QoS::AtMostOnce), &limits()).unwrap();
        first
            .wake
            .expect("the first delivery wakes the connection")
            .wake();
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        // The queue was not empty: the connection is awake or waiting for its socket.
        s.set_waker(&waker);
        let second = s.enqueue(item(QoS::AtMostOnce), &limits()).unwrap();
        assert!(second.wake.is_none());
        assert!(s.waker.is_some(), "left for a takeover or shutdown");
        // Offline sessions have no connection to wake.
        s.queue.clear();
        s.queued_qos0 = 0;
        s.queued_bytes = 0;
        s.queued_bytes_qos0 = 0;
        s.attached = None;
        s.set_waker(&waker);
        let mut lim = limits();
        lim.queue_qos0 = true;
        assert!(s
            .enqueue(item(QoS::AtLeastOnce), &lim)
            .unwrap()
            .wake
            .is_none());
    }

    #[test]
    fn space_waiters_are_deduplicated_and_bounded() {
        let mut s = SessionState::new(true);
        let (count, waker) = counting_waker();
        s.wait_for_space(&waker);
        s.wait_for_space(&waker);
        assert_eq!(s.space_waiters.len(), 1, "the same task registers once");
        let others: Vec<_> = (0..MAX_SPACE_WAITERS).map(|_| counting_waker()).collect();
        for (_, w) in &others {
            s.wait_for_space(w);
        }
        // Full: later publishers rely on their recheck; nobody was woken to make room.
        assert_eq!(s.space_waiters.len(), MAX_SPACE_WAITERS);
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 0);
        s.take_space_waiters().into_iter().for_each(Waker::wake);
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        let woken: Vec<usize> = others
            .iter()
            .map(|(c, _)| c.0.load(std::sync::atomic::Ordering::SeqCst))
            .collect();
        // The first task took one slot: all others but the last were registered and woken.
        assert_eq!(woken.iter().sum::<usize>(), MAX_SPACE_WAITERS - 1);
        assert_eq!(woken.last(), Some(&0));
    }

    #[test]
    fn subscriptions_stay_sorted_and_replace_in_place() {
        let mut subs = Subscriptions::default();
        assert_eq!(subs.insert("b/#", QoS::AtLeastOnce), None);
        assert_eq!(subs.insert("a/+", QoS::AtMostOnce), None);
        // [MQTT-3.8.4-3] the same filter again replaces the QoS.
        assert_eq!(subs.insert("b/#", QoS::ExactlyOnce), Some(QoS::AtLeastOnce));
        assert_eq!(
            subs.iter().collect::<Vec<_>>(),
            vec![("a/+", QoS::AtMostOnce), ("b/#", QoS::ExactlyOnce)]
        );
        assert_eq!(subs.get("a/+"), Some(QoS::AtMostOnce));
        assert_eq!(subs.remove("a/+"), Some(QoS::AtMostOnce));
        assert_eq!(subs.remove("a/+"), None);
        assert_eq!(subs.len(), 1);
        assert_eq!(subs.drain().count(), 1);
        assert!(subs.is_empty());
    }

    #[test]
    fn many_subscriptions_move_to_a_map_and_keep_working() {
        let mut subs = Subscriptions::default();
        let n = MANY_SUBSCRIPTIONS * 3;
        // Descending: the worst order for a sorted Vec.
        for i in (0..n).rev() {
            assert_eq!(subs.insert(&format!("f/{i:05}"), QoS::AtLeastOnce), None);
        }
        assert!(matches!(subs, Subscriptions::Many(_)));
        assert_eq!(subs.len(), n);
        assert_eq!(
            subs.insert("f/00007", QoS::ExactlyOnce),
            Some(QoS::AtLeastOnce)
        );
        assert_eq!(subs.get("f/00007"), Some(QoS::ExactlyOnce));
        assert_eq!(subs.remove("f/00008"), Some(QoS::AtLeastOnce));
        assert_eq!(subs.get("f/00008"), None);
        assert_eq!(subs.iter().count(), n - 1);
        // Removing most of them brings back the sorted Vec.
        for i in 10..n {
            subs.remove(&format!("f/{i:05}"));
        }
        assert!(matches!(subs, Subscriptions::Few(_)));
        let left: Vec<String> = subs.iter().map(|(f, _)| f.to_string()).collect();
        let want: Vec<String> = (0..10)
            .filter(|i| *i != 8)
            .map(|i| format!("f/{i:05}"))
            .collect();
        assert_eq!(left, want);
        assert_eq!(subs.get("f/00007"), Some(QoS::ExactlyOnce));
        assert_eq!(subs.drain().count(), 9);
        assert!(subs.is_empty());
    }

    #[test]
    fn packet_ids_and_drop_counts() {
        let mut ids = PacketIds::default();
        assert!(ids.insert(7));
        assert!(!ids.insert(7), "a re-sent QoS 2 PUBLISH is seen");
        ids.extend([3, 9, 7]);
        assert_eq!(ids.iter().collect::<Vec<_>>(), vec![3, 7, 9]);
        assert!(ids.contains(9) && !ids.contains(4));
        assert!(ids.remove(7) && !ids.remove(7));
        assert_eq!(ids.len(), 2);

        let mut d = DropCounts::default();
        assert_eq!((d.total(), d.get(DropReason::QueueFull)), (0, 0));
        d.add(DropReason::QueueFull);
        d.add(DropReason::QueueFull);
        d.add(DropReason::NotAuthorized);
        assert_eq!(d.get(DropReason::QueueFull), 2);
        assert_eq!(d.total(), 3);
    }

    /// A client's drops are reported once per interval, with the count since the last report
    /// and the latest reason; nothing is reported without new drops.
    #[test]
    fn drop_warnings_are_rate_limited_per_client() {
        let mut d = DropCounts::default();
        assert_eq!(d.take_warning(), None);
        d.add(DropReason::QueueFull);
        d.add(DropReason::Qos0Offline);
        assert_eq!(d.take_warning(), Some((2, DropReason::Qos0Offline)));
        d.add(DropReason::QueueFull);
        assert_eq!(d.take_warning(), None, "within the interval");
        assert_eq!(d.total(), 3);
    }

    /// Review of issue 11: while a connected session's queue is still on disk, QoS 0 takes
    /// the queue in memory (it was counted as stored and lost), retained feeds wait (a fed
    /// message would be read back from disk: a duplicate), and a full stored queue holds
    /// publishers back like a full queue in memory.
    #[test]
    fn on_disk_mode_keeps_qos0_in_memory_defers_feeds_and_applies_backpressure() {
        let mut s = SessionState::new(false);
        attach(&mut s);
        s.on_disk = Some(Box::new(OnDisk {
            count: 2,
            bytes: 10,
            ..OnDisk::default()
        }));
        let lim = SessionLimits {
            backpressure: std::time::Duration::from_secs(5),
            ..limits()
        };
        assert!(s.enqueue(item(QoS::AtMostOnce), &lim).is_ok());
        assert_eq!(
            (s.queue.len(), s.on_disk_count()),
            (1, 2),
            "QoS 0 in memory"
        );
        s.add_retained_feed("r/#", QoS::AtLeastOnce);
        assert!(!s.wants_retained(), "no feed while the queue is on disk");
        // No store here, so persist() keeps nothing; the count is what matters.
        let e = s.enqueue(item(QoS::AtLeastOnce), &lim).unwrap();
        assert!(
            e.congested,
            "3 stored of max_queued_messages 3: publishers pause"
        );
        assert!(s.is_congested(&lim));
        s.on_disk = None;
        s.queue.clear();
        s.queued_bytes = 0;
        s.queued_qos0 = 0;
        s.queued_bytes_qos0 = 0;
        assert!(s.wants_retained());
    }

    /// A message restored into the window from the first chunk is not restored again when a
    /// later chunk meets it in its place, and is counted once.
    #[test]
    fn a_message_in_flight_is_restored_once_across_chunks() {
        use crate::storage::{LoadedChunk, StoredMessage};
        let stored = |seq: u64, inflight| StoredMessage {
            seq,
            qos: 2,
            topic: Bytes::from_static(b"t"),
            payload: Bytes::from_static(b"p"),
            inflight,
            sent: true,
        };
        let mut s = SessionState::new(false);
        attach(&mut s);
        s.on_disk = Some(Box::new(OnDisk {
            count: 3,
            bytes: 15,
            ..OnDisk::default()
        }));
        let mut resend = Vec::new();
        assert!(s.load_request(1).is_some());
        let first = LoadedChunk {
            messages: vec![stored(9, Some((42, true))), stored(1, None)],
            skipped: 0,
            last_seq: 1,
        };
        assert!(s.restore_chunk(1, first, &mut resend));
        assert_eq!(
            (s.inflight.len(), s.queue.len(), s.on_disk_count()),
            (1, 1, 1)
        );
        assert!(matches!(resend[..], [Outgoing::PubRel(42)]));
        assert!(s.load_request(1).is_some());
        let later = LoadedChunk {
            messages: vec![stored(9, Some((42, true)))],
            skipped: 0,
            last_seq: 9,
        };
        assert!(s.restore_chunk(1, later, &mut resend));
        assert_eq!(
            (s.inflight.len(), s.queue.len()),
            (1, 1),
            "not restored twice"
        );
        assert_eq!(s.on_disk_count(), 1, "not counted twice");
    }
}
