//! The log sink: lines go to stderr (as Mosquitto's do) from a thread of their own, so that
//! logging can never fail, block or panic a connection.
//!
//! tracing-subscriber writing to stderr directly would block a connection's task when the
//! pipe is full (a stopped terminal, a slow collector), and when the reader is gone it
//! reports the write error with `eprintln!`, which panics ("failed printing to stderr"): that
//! panic in the task that logged "New client connected" dropped every client right after
//! CONNECT. Here a log call formats its line and hands it to a bounded queue without waiting;
//! a line that does not fit, or that the writer thread fails to write, is dropped and counted
//! (`roostd_log_write_errors_total`).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::Duration;

/// Lines waiting for the writer thread at most; more are dropped (counted).
const QUEUE_LINES: usize = 8192;

/// How long `Flush` waits for the writer at shutdown.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

static WRITE_ERRORS: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped so far: not written (sink closed, failing) or not queued (queue full).
pub fn write_errors() -> u64 {
    WRITE_ERRORS.load(Relaxed)
}

enum Line {
    Text(Vec<u8>),
    /// Answer on the channel once everything before it was written.
    Flush(SyncSender<()>),
}

static QUEUE: OnceLock<SyncSender<Line>> = OnceLock::new();

/// Starts the writer thread (once) and returns a `MakeWriter` for tracing-subscriber.
/// Falls back to dropping (and counting) every line if the thread cannot be started.
pub fn sink() -> MakeSink {
    MakeSink {
        queue: QUEUE
            .get_or_init(|| {
                let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_LINES);
                let started = std::thread::Builder::new()
                    .name("roostd-log".into())
                    .spawn(move || write_lines(rx, std::io::stderr()));
                if started.is_err() {
                    WRITE_ERRORS.fetch_add(1, Relaxed);
                }
                tx
            })
            .clone(),
    }
}

/// Waits (bounded) until the lines logged so far are written: call before the process exits.
pub fn flush() {
    let Some(queue) = QUEUE.get() else {
        return;
    };
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    if queue.try_send(Line::Flush(tx)).is_ok() {
        let _ = rx.recv_timeout(FLUSH_WAIT);
    }
}

fn write_lines(rx: Receiver<Line>, mut out: impl Write) {
    for line in rx {
        match line {
            Line::Text(bytes) => {
                if out.write_all(&bytes).is_err() {
                    WRITE_ERRORS.fetch_add(1, Relaxed);
                }
            }
            Line::Flush(done) => {
                let _ = out.flush();
                let _ = done.try_send(());
            }
        }
    }
}

/// tracing-subscriber's writer factory: one `LineWriter` per event.
#[derive(Clone)]
pub struct MakeSink {
    queue: SyncSender<Line>,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for MakeSink {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            queue: self.queue.clone(),
            buf: Vec::new(),
        }
    }
}

/// Collects one formatted event and queues it when dropped; never fails, never waits.
pub struct LineWriter {
    queue: SyncSender<Line>,
    buf: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let line = Line::Text(std::mem::take(&mut self.buf));
        match self.queue.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                WRITE_ERRORS.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Whether log lines may carry colour: stderr is a terminal and NO_COLOR is not set
/// (<https://no-color.org>). Files and pipes never get ANSI codes.
pub fn colour() -> bool {
    use std::io::IsTerminal;
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink whose every write fails, as stderr does once its reader is gone.
    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
        }
    }

    /// Lines the sink cannot take are counted and dropped; the writer goes on (and answers
    /// a flush), nothing panics.
    #[test]
    fn a_broken_sink_drops_and_counts_lines() {
        let (tx, rx) = std::sync::mpsc::sync_channel(4);
        let writer = std::thread::spawn(move || write_lines(rx, Broken));
        let before = write_errors();
        for _ in 0..3 {
            let mut w = LineWriter {
                queue: tx.clone(),
                buf: Vec::new(),
            };
            w.write_all(b"a line\n").unwrap();
        }
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        tx.send(Line::Flush(done_tx)).unwrap();
        done_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(write_errors() >= before + 3);
        drop(tx);
        writer.join().unwrap();
    }

    /// A full queue never blocks the logging task: the line is dropped and counted.
    #[test]
    fn a_full_queue_drops_instead_of_waiting() {
        let (tx, _rx) = std::sync::mpsc::sync_channel(1);
        let before = write_errors();
        for _ in 0..3 {
            let mut w = LineWriter {
                queue: tx.clone(),
                buf: Vec::new(),
            };
            w.write_all(b"x\n").unwrap();
        }
        assert!(write_errors() >= before + 2);
    }
}
