//! The client registry, publish routing and session takeover.
//!
//! Routing runs on the publisher's own task: the trie is read under a read lock, the matched
//! sessions are collected, the lock is released, then each subscriber's queue is locked
//! briefly to push a shared `Arc<Publication>`. Lock order, where two are held at once:
//! registry shard -> session state -> trie. Nothing takes a session lock while holding the trie.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use mqttbytes::QoS;
use parking_lot::RwLock;
use tokio::time::Instant;

use crate::auth::live::AuthState;
use crate::keepalive::Wheel;
use crate::message::{min_qos, qos_from_stored, Publication};
use crate::metrics::{Gauges, Metrics};
use crate::retained::{RetainedLimits, RetainedStore, SetOutcome};
use crate::session::{Attachment, DropReason, Queued, Session, SessionLimits, SessionState};
use crate::storage::Store;
use crate::trie::{Entry, Trie};

/// What routing one message found.
#[derive(Debug, Default)]
pub struct PublishOutcome {
    /// A connected subscriber (not the publisher) whose QoS 1/2 queue is over its limit.
    pub congested: Option<Arc<Session>>,
    /// A persistent subscriber's copy could not be stored (storage failing): the message
    /// must not be acknowledged.
    pub unstored: bool,
}

/// One line of the slow-client report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClientReport {
    pub client_id: String,
    pub online: bool,
    pub queued: usize,
    pub queued_bytes: usize,
    pub inflight: usize,
    pub dropped: u64,
    /// Reason -> messages dropped (an object in the JSON report).
    pub dropped_by_reason: std::collections::BTreeMap<&'static str, u64>,
}

/// What a trie entry carries: the subscriber and its granted QoS.
pub type Subscriber = (Arc<Session>, QoS);

/// Scratch space for matching, owned by each publishing connection and reused.
pub type MatchBuffer = Vec<Entry<Subscriber>>;

/// The result of attaching a connection to a client id.
#[derive(Debug)]
pub struct Attached {
    pub session: Arc<Session>,
    /// CONNACK session present flag [MQTT-3.2.2-1]/[MQTT-3.2.2-2].
    pub session_present: bool,
    /// True when another connection with this client id was closed [MQTT-3.1.4-2].
    pub took_over: bool,
}

/// A handshake lost to a newer connection with the same client id [MQTT-3.1.4-2].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a newer connection with the same client id is already attached")]
pub struct Superseded;

/// Shared broker state.
#[derive(Debug)]
pub struct Router {
    sessions: DashMap<Arc<str>, Arc<Session>>,
    trie: RwLock<Trie<Subscriber>>,
    retained: RwLock<RetainedStore>,
    limits: SessionLimits,
    metrics: Metrics,
    /// Password file and ACL in force.
    auth: Arc<AuthState>,
    /// Durable storage (persistence on).
    store: Option<Arc<Store>>,
    next_session_id: AtomicU64,
    /// Set at shutdown: every connection sees it on its next look and closes.
    closing: AtomicBool,
    /// Origin of `now_ms` (tokio's clock, so tests can pause it).
    epoch: Instant,
    /// Keepalive deadlines and quiet clients of every connection (`crate::keepalive`).
    wheel: parking_lot::Mutex<Wheel>,
}

impl Router {
    pub fn new(
        limits: SessionLimits,
        metrics: Metrics,
        auth: Arc<AuthState>,
        store: Option<Arc<Store>>,
    ) -> Router {
        Router {
            auth,
            store,
            sessions: DashMap::new(),
            trie: RwLock::new(Trie::default()),
            retained: RwLock::new(RetainedStore::default()),
            limits,
            metrics,
            next_session_id: AtomicU64::new(1),
            closing: AtomicBool::new(false),
            epoch: Instant::now(),
            wheel: parking_lot::Mutex::new(Wheel::new(crate::connection::IDLE_AFTER_MS)),
        }
    }

    /// Bounds the retained messages (max_retained_messages, max_retained_bytes).
    pub fn with_retained_limits(self, limits: RetainedLimits) -> Router {
        *self.retained.write() = RetainedStore::new(limits);
        self
    }

    /// Milliseconds since the router was made (for keepalive bookkeeping in atomics).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Puts connection `conn_id`, just attached to `session`, on the keepalive wheel.
    pub fn watch_keepalive(&self, session: &Arc<Session>, conn_id: u64) {
        let now = self.now_ms();
        self.wheel.lock().insert(session.clone(), conn_id, now);
    }

    /// One tick of the keepalive wheel (`crate::keepalive`): wakes every connection whose
    /// client passed 1.5 times its keepalive without a packet (it then checks its own
    /// deadline and closes), and once each connection whose client turned quiet (it then
    /// frees its empty buffers). Returns how many were woken.
    pub fn tick_keepalive(&self) -> usize {
        let now = self.now_ms();
        let mut due = Vec::new();
        self.wheel.lock().advance(now, &mut due);
        for s in &due {
            s.swept.store(true, Ordering::Relaxed);
            s.wake_connection();
        }
        due.len()
    }

    /// Connections on the keepalive wheel.
    pub fn keepalive_watched(&self) -> usize {
        self.wheel.lock().len()
    }

    /// Asks every attached connection to close (broker shutdown). A connection checks
    /// `is_closing` after leaving its waker in its session, so none misses this.
    pub fn close_all(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let sessions: Vec<Arc<Session>> = self.sessions.iter().map(|e| e.value().clone()).collect();
        for s in sessions {
            s.wake_connection();
        }
    }

    /// True once `close_all` was called.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    pub fn limits(&self) -> &SessionLimits {
        &self.limits
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Password file and ACL in force.
    pub fn auth(&self) -> &Arc<AuthState> {
        &self.auth
    }

    /// Durable storage, when persistence is on.
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    /// Number of sessions (connected and persistent offline).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Number of (filter, session) subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.trie.read().len()
    }

    /// Topic + payload bytes of the retained messages.
    pub fn retained_bytes(&self) -> usize {
        self.retained.read().bytes()
    }

    /// Number of retained messages.
    pub fn retained_count(&self) -> usize {
        self.retained.read().len()
    }

    fn new_session(&self, client_id: Arc<str>, clean: bool, attach: Attachment) -> Arc<Session> {
        let id = self.next_session_id.fetch_add(1, Ordering::Relaxed);
        let session = Session::new(id, client_id, clean, self.store.clone());
        {
            let mut st = session.state.lock();
            st.username = attach.username.clone();
            st.newest_conn = attach.conn_id;
            session
                .keepalive_ms
                .store(attach.keepalive_ms, Ordering::Relaxed);
            session.activity.store(self.now_ms(), Ordering::Relaxed);
            session
                .attached_conn
                .store(attach.conn_id, Ordering::Release);
            st.attached = Some(attach);
            st.persist_record();
        }
        Arc::new(session)
    }

    /// Attaches a new connection to `client_id`, closing any connection already using it and
    /// resuming or discarding the stored session according to clean session.
    ///
    /// Concurrent handshakes for one client id: the newest connection (the higher id, given
    /// in accept order) wins [MQTT-3.1.4-2]. An older connection whose handshake finishes
    /// after a newer one attached is refused (`Superseded`) instead of taking the session back,
    /// so two devices fighting over one id converge on the newest connection.
    pub fn connect(
        &self,
        client_id: &str,
        clean: bool,
        attach: Attachment,
    ) -> Result<Attached, Superseded> {
        let key: Arc<str> = Arc::from(client_id);
        Ok(match self.sessions.entry(key.clone()) {
            MapEntry::Occupied(mut entry) => {
                let old = entry.get().clone();
                let mut st = old.state.lock();
                if st.newest_conn > attach.conn_id {
                    return Err(Superseded);
                }
                // The previous connection sees a different id and closes [MQTT-3.1.4-2].
                let took_over = st.attached.take().is_some();
                if clean || st.clean || st.discarded {
                    old.attached_conn.store(0, Ordering::Release);
                    drop(st);
                    old.wake_connection();
                    self.discard(&old);
                    let session = self.new_session(key, clean, attach);
                    entry.insert(session.clone());
                    Attached {
                        session,
                        session_present: false,
                        took_over,
                    }
                } else {
                    st.username = attach.username.clone();
                    st.newest_conn = attach.conn_id;
                    // Under the session lock: the connection taken over cannot overwrite these.
                    old.keepalive_ms
                        .store(attach.keepalive_ms, Ordering::Relaxed);
                    old.activity.store(self.now_ms(), Ordering::Relaxed);
                    old.attached_conn.store(attach.conn_id, Ordering::Release);
                    st.attached = Some(attach);
                    st.disconnected_at = None;
                    st.persist_record();
                    drop(st);
                    if took_over {
                        // The new connection leaves its own waker on its first look.
                        old.wake_connection();
                    }
                    Attached {
                        session: old,
                        session_present: true,
                        took_over,
                    }
                }
            }
            MapEntry::Vacant(entry) => {
                let session = self.new_session(key, clean, attach);
                entry.insert(session.clone());
                Attached {
                    session,
                    session_present: false,
                    took_over: false,
                }
            }
        })
    }

    /// Marks the session discarded, drops its messages and removes its subscriptions.
    fn discard(&self, session: &Arc<Session>) {
        let (filters, lost, paused) = {
            let mut st = session.state.lock();
            st.discarded = true;
            let paused = st.take_space_waiters();
            st.unpersist_session();
            let filters: Vec<Box<str>> = st.subscriptions.drain().map(|(f, _)| f).collect();
            let on_disk = st.on_disk.take().map_or(0, |d| d.count);
            (filters, st.clear_messages() + on_disk, paused)
        };
        paused.into_iter().for_each(std::task::Waker::wake);
        if !filters.is_empty() {
            let mut trie = self.trie.write();
            for f in &filters {
                trie.remove(f, session.id);
            }
        }
        if lost > 0 {
            self.metrics
                .stats
                .dropped(DropReason::SessionExpired, lost as u64);
        }
    }

    /// Detaches connection `conn_id` from its session. A clean session ends here; a persistent
    /// one starts its expiry clock. Does nothing if another connection took the session over.
    pub fn disconnect(&self, session: &Arc<Session>, conn_id: u64) {
        let (clean, paused) = {
            let mut st = session.state.lock();
            if st.attached.as_ref().map(|a| a.conn_id) != Some(conn_id) {
                return;
            }
            st.attached = None;
            // The waker holds the ended connection's task: do not keep it alive.
            st.waker = None;
            session.keepalive_ms.store(0, Ordering::Relaxed);
            session.attached_conn.store(0, Ordering::Release);
            st.disconnected_at = Some(Instant::now());
            st.persist_record();
            // Offline sessions hold no publisher back: those paused on it go on now.
            (st.clean, st.take_space_waiters())
        };
        paused.into_iter().for_each(std::task::Waker::wake);
        if clean {
            self.sessions
                .remove_if(&session.client_id, |_, s| Arc::ptr_eq(s, session));
            self.discard(session);
        }
    }

    /// Adds or replaces a subscription [MQTT-3.8.4-3]. False if the session was discarded.
    pub fn subscribe(&self, session: &Arc<Session>, filter: &str, qos: QoS) -> bool {
        let mut st = session.state.lock();
        if st.discarded {
            return false;
        }
        st.subscriptions.insert(filter, qos);
        st.persist_subscription(filter, qos);
        // Under the session lock so a concurrent discard cannot miss this entry.
        self.trie
            .write()
            .insert(filter, session.id, (session.clone(), qos));
        true
    }

    /// Removes a subscription; true if it existed.
    pub fn unsubscribe(&self, session: &Arc<Session>, filter: &str) -> bool {
        let mut st = session.state.lock();
        if st.subscriptions.remove(filter).is_none() {
            return false;
        }
        st.cancel_retained_feed(filter);
        st.unpersist_subscription(filter);
        self.trie.write().remove(filter, session.id)
    }

    /// Feeds the next chunk of retained messages for a session's new subscriptions into its
    /// queue (the caller holds its lock and checked `wants_retained`). Lock order: session
    /// state, then the retained tree (read), which nothing takes the other way round.
    pub fn feed_retained(&self, session: &Session, st: &mut SessionState) {
        let Some(feeds) = st.retained_feeds.as_deref_mut() else {
            return;
        };
        let Some(feed) = feeds.front_mut() else {
            st.retained_feeds = None;
            return;
        };
        let granted = feed.qos;
        let since = feed.since;
        let mut chunk = Vec::new();
        let more = self.retained.read().matching_after(
            &feed.filter,
            feed.after.as_deref(),
            crate::session::FEED_CHUNK,
            &mut chunk,
        );
        match chunk.last() {
            Some(last) if more => feed.after = Some(last.topic.clone()),
            _ => {
                feeds.pop_front();
                if feeds.is_empty() {
                    st.retained_feeds = None;
                }
            }
        }
        let acl = self.auth.acl();
        for msg in chunk {
            if msg.received_at > since {
                continue; // published after the SUBSCRIBE: delivered live already
            }
            if let Some(acl) = &acl {
                let topic = std::str::from_utf8(&msg.topic).unwrap_or_default();
                if !acl.check_read(&session.client_id, st.username.as_deref(), topic) {
                    continue;
                }
            }
            let item = Queued {
                qos: min_qos(msg.qos, granted),
                msg,
                // [MQTT-3.3.1-8] sent because of a new subscription: flagged retained.
                retain: true,
                seq: 0,
                dup: false,
            };
            if let Err(reason) = st.push_retained(item) {
                self.metrics.stats.dropped(reason, 1);
            }
        }
    }

    /// Retained messages matching a (valid) filter.
    pub fn retained_matching(&self, filter: &str, out: &mut Vec<Arc<Publication>>) {
        self.retained.read().matching(filter, out);
    }

    /// Routes one message: retained store, then one delivery per matching session at the
    /// highest QoS its matching subscriptions granted [MQTT-3.3.5-1], capped by the message's.
    ///
    /// Reports a connected subscriber (other than `publisher`, the publishing session's id)
    /// whose QoS 1/2 queue is over its limit: the publisher should pause reading until it
    /// drains (see `SessionState::enqueue`); and whether storage refused a copy.
    pub fn publish(
        &self,
        msg: Arc<Publication>,
        matches: &mut MatchBuffer,
        publisher: Option<u64>,
    ) -> PublishOutcome {
        if msg.retain {
            let outcome = self.retained.write().set(msg.clone());
            // $SYS values are the broker's own and regenerated at startup: not stored.
            let sys = msg.topic.starts_with(b"$SYS/");
            match (&self.store, sys, outcome) {
                (_, _, SetOutcome::Refused) => {
                    self.metrics
                        .stats
                        .retained_refused
                        .fetch_add(1, Ordering::Relaxed);
                    outcome_refused_log(&msg);
                }
                (Some(store), false, SetOutcome::Deleted) => store.delete_retained(&msg.topic),
                (Some(store), false, SetOutcome::Stored) => {
                    store.put_retained(&msg.topic, msg.qos as u8, &msg.payload)
                }
                _ => {}
            }
        }
        matches.clear();
        self.trie.read().matches(&msg.topic, matches);
        if matches.len() > 1 {
            matches.sort_unstable_by_key(|(id, _)| *id);
            matches.dedup_by(|later, kept| {
                if later.0 == kept.0 {
                    if (later.1 .1 as u8) > (kept.1 .1 as u8) {
                        kept.1 .1 = later.1 .1;
                    }
                    true
                } else {
                    false
                }
            });
        }
        // Read access is checked per delivery, so a wildcard never leaks a topic the
        // subscriber may not read (only when an ACL is configured).
        // The topic was validated as UTF-8 when decoded; it is only needed as &str for the ACL.
        let acl = self
            .auth
            .acl()
            .map(|acl| (acl, std::str::from_utf8(&msg.topic).unwrap_or_default()));
        let mut congested = None;
        let mut outcome = PublishOutcome::default();
        for (_, (session, granted)) in matches.drain(..) {
            let item = Queued {
                msg: msg.clone(),
                qos: min_qos(msg.qos, granted),
                retain: false,
                seq: 0,
                dup: false,
            };
            let (result, warning) = {
                let mut st = session.state.lock();
                let result = match &acl {
                    Some((acl, topic))
                        if !acl.check_read(&session.client_id, st.username.as_deref(), topic) =>
                    {
                        Err(DropReason::NotAuthorized)
                    }
                    _ => st.enqueue(item, &self.limits),
                };
                // Drops are logged per client, at most once per interval (a slow client
                // must not flood the log, nor go unnoticed).
                let warning = match result {
                    Err(DropReason::NotAuthorized) | Ok(_) => None,
                    Err(_) => st.dropped.take_warning(),
                };
                (result, warning)
            };
            if let Some((n, reason)) = warning {
                tracing::warn!(
                    "Outgoing messages are being dropped for client {}: {n} message(s) since the last warning, latest because of {} ({}).",
                    session.client_id,
                    reason.as_str(),
                    reason.explain()
                );
            }
            match result {
                Ok(e) => {
                    if let Some(waker) = e.wake {
                        waker.wake();
                    }
                    if e.congested && congested.is_none() && publisher != Some(session.id) {
                        congested = Some(session);
                    }
                }
                Err(reason) => {
                    if reason == DropReason::StorageError {
                        outcome.unstored = true;
                    }
                    self.metrics.stats.dropped(reason, 1)
                }
            }
        }
        outcome.congested = congested;
        outcome
    }

    /// Recreates persistent sessions and retained messages from storage at startup. Stored
    /// messages stay on disk until their client connects again (`load_stored`).
    pub fn restore(&self, recovered: crate::storage::Recovered) {
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        {
            let mut retained = self.retained.write();
            let mut refused = 0;
            for (topic, qos, payload) in recovered.retained {
                let qos = qos_from_stored(qos);
                let outcome = retained.set(Arc::new(Publication {
                    topic,
                    payload,
                    qos,
                    retain: true,
                    received_at: std::time::Instant::now(),
                }));
                refused += (outcome == SetOutcome::Refused) as usize;
            }
            if refused > 0 {
                // Left on disk: raising the limits brings them back at the next start.
                tracing::warn!("{refused} stored retained message(s) not loaded: over max_retained_messages or max_retained_bytes.");
            }
        }
        for stored in recovered.sessions {
            let id = self.next_session_id.fetch_add(1, Ordering::Relaxed);
            let client: Arc<str> = Arc::from(stored.client_id.as_str());
            let session = Arc::new(Session::new(id, client.clone(), false, self.store.clone()));
            {
                let mut st = session.state.lock();
                // Offline since the recorded time (or since now, if it was connected at the crash).
                let away = now_unix.saturating_sub(stored.disconnected_at);
                let away = if stored.disconnected_at == 0 { 0 } else { away };
                let now = Instant::now();
                st.disconnected_at =
                    Some(now.checked_sub(Duration::from_secs(away)).unwrap_or(now));
                st.incoming_qos2.extend(stored.incoming_qos2);
                if stored.stored_messages > 0 {
                    st.on_disk = Some(Box::new(crate::session::OnDisk {
                        count: stored.stored_messages,
                        bytes: stored.stored_bytes,
                        ..Default::default()
                    }));
                }
                let mut trie = self.trie.write();
                for (filter, q) in &stored.subscriptions {
                    let qos = qos_from_stored(*q);
                    st.subscriptions.insert(filter, qos);
                    trie.insert(filter, session.id, (session.clone(), qos));
                }
            }
            self.sessions.insert(client, session);
        }
    }

    /// Registry-wide figures for metrics and $SYS (walks every session: call per scrape or
    /// sys_interval, not per message).
    pub fn gauges(&self) -> Gauges {
        let mut g = Gauges::default();
        for e in self.sessions.iter() {
            let st = e.value().state.lock();
            if st.attached.is_some() {
                g.sessions_online += 1;
            } else {
                g.sessions_offline += 1;
            }
            g.queued_messages += st.queue.len() as u64;
            g.inflight_messages += st.inflight.len() as u64;
            g.max_client_queue = g.max_client_queue.max(st.queue.len() as u64);
        }
        g.storage_errors = self
            .store
            .as_ref()
            .map_or(0, |s| s.errors.load(Ordering::Relaxed));
        g.storage_backlog_bytes = self.store.as_ref().map_or(0, |s| s.backlog_bytes() as u64);
        g.subscriptions = self.subscription_count() as u64;
        g.retained_messages = self.retained_count() as u64;
        g.retained_bytes = self.retained_bytes() as u64;
        g
    }

    /// The `n` clients with the most dropped messages (then deepest queues): who is slow and why.
    pub fn slow_clients(&self, n: usize) -> Vec<ClientReport> {
        let mut all: Vec<ClientReport> = self
            .sessions
            .iter()
            .filter_map(|e| {
                let st = e.value().state.lock();
                let dropped = st.dropped_total();
                (dropped > 0 || !st.queue.is_empty()).then(|| ClientReport {
                    client_id: e.key().to_string(),
                    online: st.attached.is_some(),
                    queued: st.queue.len(),
                    queued_bytes: st.queued_bytes,
                    inflight: st.inflight.len(),
                    dropped,
                    dropped_by_reason: DropReason::ALL
                        .iter()
                        .filter(|r| st.dropped.get(**r) > 0)
                        .map(|r| (r.as_str(), st.dropped.get(*r)))
                        .collect(),
                })
            })
            .collect();
        all.sort_unstable_by_key(|c| std::cmp::Reverse((c.dropped, c.queued)));
        all.truncate(n);
        all
    }

    /// Removes persistent sessions offline for longer than `expiry`; returns how many.
    pub fn expire_sessions(&self, expiry: Duration) -> usize {
        let now = Instant::now();
        let is_expired = |s: &Session| {
            let st = s.state.lock();
            st.attached.is_none()
                && st
                    .disconnected_at
                    .is_some_and(|t| now.saturating_duration_since(t) >= expiry)
        };
        let candidates: Vec<Arc<Session>> = self
            .sessions
            .iter()
            .filter(|e| is_expired(e.value()))
            .map(|e| e.value().clone())
            .collect();
        let mut expired = 0;
        for s in candidates {
            if self
                .sessions
                .remove_if(&s.client_id, |_, v| Arc::ptr_eq(v, &s) && is_expired(v))
                .is_some()
            {
                tracing::info!("Expiring client {}, its session was offline for longer than persistent_client_expiration.", s.client_id);
                self.discard(&s);
                expired += 1;
            }
        }
        expired
    }
}

/// A retained message over the limits: logged at most once a second (a client retrying in a
/// loop must not flood the log), counted always.
fn outcome_refused_log(msg: &Publication) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if LAST.swap(now, Ordering::Relaxed) != now {
        tracing::warn!(
            "Retained message on {} ({} bytes) not retained: max_retained_messages or max_retained_bytes reached (delivered to current subscribers only).",
            msg.topic_lossy(),
            msg.size()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn router() -> Router {
        let config = crate::config::Config::default();
        let auth = Arc::new(crate::auth::live::AuthState::load(None, None).expect("no files"));
        Router::new(config.session_limits(), Metrics::disabled(), auth, None)
    }

    fn attach(r: &Router, id: &str, conn_id: u64, keepalive_ms: u32) -> Arc<Session> {
        let a = r
            .connect(
                id,
                true,
                Attachment {
                    conn_id,
                    username: None,
                    keepalive_ms: 0,
                },
            )
            .expect("newest");
        a.session
            .keepalive_ms
            .store(keepalive_ms, Ordering::Relaxed);
        a.session.activity.store(r.now_ms(), Ordering::Relaxed);
        r.watch_keepalive(&a.session, conn_id);
        a.session
    }

    /// [MQTT-3.1.2-24] The wheel wakes a connection within a tick (100 ms) once 1.5 x its
    /// keepalive has passed without a packet, and again each second while it stays open;
    /// activity moves the deadline; offline sessions and keepalive 0 are never due for it.
    #[tokio::test(start_paused = true)]
    async fn wheel_wakes_silent_clients_within_a_tick_of_their_deadline() {
        let r = router();
        let silent = attach(&r, "silent", 1, 3000);
        let _none = attach(&r, "no-keepalive", 2, 0);
        let talking = attach(&r, "talking", 3, 3000);
        let mut woken_at = None;
        let mut talked = false;
        for step in 1..=60u64 {
            tokio::time::advance(Duration::from_millis(crate::keepalive::TICK_MS)).await;
            if step == 20 {
                talking.activity.store(r.now_ms(), Ordering::Relaxed);
                talked = true;
            }
            let n = r.tick_keepalive();
            if n > 0 && woken_at.is_none() {
                assert_eq!(n, 1, "only the silent one is due");
                assert!(silent.swept.swap(false, Ordering::Relaxed));
                woken_at = Some(step * crate::keepalive::TICK_MS);
            }
        }
        assert!(talked);
        // Due at 3,000 ms: found at the first tick at or after it.
        assert_eq!(woken_at, Some(3000));
        // The talking client (last packet at 2,000 ms) is due at 5,000 ms: woken by now (6 s).
        assert!(talking.swept.load(Ordering::Relaxed));
        r.disconnect(&silent, 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        let before = r.keepalive_watched();
        r.tick_keepalive();
        assert!(
            r.keepalive_watched() < before,
            "the closed connection's entry went"
        );
    }

    /// A client that turned quiet is woken once (to free its buffers), not at every tick.
    #[tokio::test(start_paused = true)]
    async fn wheel_wakes_a_client_turning_quiet_once() {
        let r = router();
        let quiet = attach(&r, "quiet", 1, 0);
        let mut woken = 0;
        for _ in 0..300 {
            tokio::time::advance(Duration::from_millis(crate::keepalive::TICK_MS)).await;
            woken += r.tick_keepalive();
        }
        assert_eq!(woken, 1);
        assert!(
            quiet.swept.load(Ordering::Relaxed),
            "asked to look at its silence"
        );
    }

    /// A retained message published after the SUBSCRIBE reached the client live; the feed
    /// does not send it again (review of issue 11).
    #[test]
    fn the_retained_feed_skips_what_was_published_after_the_subscribe() {
        let r = router();
        let msg = |t: &str| {
            Arc::new(Publication {
                topic: bytes::Bytes::copy_from_slice(t.as_bytes()),
                payload: bytes::Bytes::from_static(b"x"),
                qos: QoS::AtMostOnce,
                retain: true,
                received_at: std::time::Instant::now(),
            })
        };
        let mut m = Vec::new();
        r.publish(msg("f/old"), &mut m, None);
        let s = Session::new(1, Arc::from("feed"), true, None);
        let mut st = s.state.lock();
        st.add_retained_feed("f/#", QoS::AtMostOnce);
        drop(st);
        r.publish(msg("f/new"), &mut m, None);
        let mut st = s.state.lock();
        while st.retained_feeds.is_some() {
            r.feed_retained(&s, &mut st);
        }
        let topics: Vec<String> = st
            .queue
            .iter()
            .map(|q| q.msg.topic_lossy().into_owned())
            .collect();
        assert_eq!(topics, vec!["f/old".to_string()]);
    }
}
