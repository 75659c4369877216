//! One timer wheel for every connected client: keepalive deadlines [MQTT-3.1.2-24] and the
//! moment a client turns quiet (its connection then frees its buffers).
//!
//! A connection has no timer of its own (a tokio timer is 112 bytes of every task); it puts
//! one 24-byte entry here at CONNECT. Each 100 ms tick looks only at the entries due in that
//! slot: an entry is due at its client's keepalive deadline or when it turns quiet, whichever
//! is first, and is put back for its next one. A packet only stores the time in an atomic of
//! the session; the wheel reads it when the entry comes due, so activity costs nothing here.
//! Work per second is about (clients / keepalive) instead of a walk over every session, and a
//! silent client is found within one tick of its deadline, not up to a second late.

use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::sync::{Arc, Weak};

use crate::session::Session;

/// Tick length.
pub const TICK_MS: u64 = 100;
/// Slots: entries due later than this many ticks ahead wait in their slot and are put back
/// when it comes round (12.8 s).
const SLOTS: u64 = 128;
/// A client past its deadline whose connection did not close (its silence was the broker's:
/// backpressure) is looked at again this much later.
const RECHECK_MS: u64 = 1000;

#[derive(Debug)]
struct Entry {
    /// Weak: an ended connection's session is not kept alive until its entry comes due.
    session: Weak<Session>,
    /// The connection this entry is for: once another is attached (or none), it is dropped.
    conn_id: u64,
    /// The activity time for which the connection was already told it turned quiet.
    quiet_noted: u64,
}

/// The wheel: `SLOTS` lists of entries, one per tick modulo `SLOTS`.
#[derive(Debug)]
pub struct Wheel {
    slots: Vec<Vec<Entry>>,
    /// First tick not yet processed.
    next_tick: u64,
    /// Silence after which a client counts as quiet (ms).
    quiet_after_ms: u64,
    entries: usize,
}

impl Wheel {
    pub fn new(quiet_after_ms: u64) -> Wheel {
        Wheel {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            next_tick: 0,
            quiet_after_ms,
            entries: 0,
        }
    }

    /// Entries in the wheel (one per connection since its CONNECT, until the wheel sees it
    /// has gone).
    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Watches connection `conn_id`, now attached to `session` (whose `activity` and
    /// `keepalive_ms` are set).
    pub fn insert(&mut self, session: Arc<Session>, conn_id: u64, now_ms: u64) {
        let entry = Entry {
            session: Arc::downgrade(&session),
            conn_id,
            quiet_noted: u64::MAX,
        };
        let due = self.next_due(&entry, &session, now_ms);
        self.put(entry, due);
    }

    fn put(&mut self, entry: Entry, due_ms: u64) {
        let tick = due_ms.div_ceil(TICK_MS).max(self.next_tick);
        self.slots[(tick % SLOTS) as usize].push(entry);
        self.entries += 1;
    }

    /// When `entry` should next be looked at, given its session's figures now.
    fn next_due(&self, entry: &Entry, s: &Session, now_ms: u64) -> u64 {
        let keepalive = s.keepalive_ms.load(Relaxed) as u64;
        let activity = s.activity.load(Relaxed);
        let deadline = (keepalive > 0).then(|| activity + keepalive);
        let quiet = if entry.quiet_noted != activity {
            activity + self.quiet_after_ms
        } else {
            // Already told for this silence: look again later for new activity.
            now_ms + self.quiet_after_ms
        };
        deadline.map_or(quiet, |d| d.min(quiet)).max(now_ms)
    }

    /// Processes every tick up to `now_ms`; returns the sessions whose connections must look
    /// at their client's silence (wake them after releasing the wheel's lock, with `swept`
    /// set).
    pub fn advance(&mut self, now_ms: u64, due: &mut Vec<Arc<Session>>) {
        let target = now_ms / TICK_MS;
        if target < self.next_tick {
            return;
        }
        // Past SLOTS ticks every slot has been visited once: no need to go round again.
        let ticks = (target - self.next_tick + 1).min(SLOTS);
        let mut again = Vec::new();
        for t in 0..ticks {
            let slot = ((self.next_tick + t) % SLOTS) as usize;
            let entries = std::mem::take(&mut self.slots[slot]);
            self.entries -= entries.len();
            for mut entry in entries {
                let Some(s) = entry.session.upgrade() else {
                    continue; // the session is gone
                };
                if s.attached_conn.load(Acquire) != entry.conn_id {
                    continue; // the connection ended or was taken over
                }
                let keepalive = s.keepalive_ms.load(Relaxed) as u64;
                let activity = s.activity.load(Relaxed);
                let next = if keepalive > 0 && now_ms >= activity + keepalive {
                    due.push(s.clone());
                    now_ms + RECHECK_MS
                } else if now_ms >= activity + self.quiet_after_ms && entry.quiet_noted != activity
                {
                    due.push(s.clone());
                    entry.quiet_noted = activity;
                    self.next_due(&entry, &s, now_ms)
                } else {
                    self.next_due(&entry, &s, now_ms)
                };
                again.push((entry, next));
            }
        }
        self.next_tick = target + 1;
        for (entry, next) in again {
            self.put(entry, next);
        }
    }
}
