//! What the keepalive wheel costs with many clients (BENCHMARKS.md):
//!
//!     cargo run --release --example wheel_cost -- 1000000
//!
//! Attaches N sessions (keepalive 60 s, as many devices use) to a router, then runs the
//! wheel's 100 ms ticks over 60 s of paused (simulated) time, clients silent, and prints the
//! CPU time the ticks took per simulated second.
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let config = roostd::Config::default();
        let auth = Arc::new(roostd::auth::live::AuthState::load(None, None).unwrap());
        let router = roostd::router::Router::new(
            config.session_limits(),
            roostd::metrics::Metrics::disabled(),
            auth,
            None,
        );
        for i in 0..n {
            let a = router
                .connect(
                    &format!("dev-{i}"),
                    true,
                    roostd::session::Attachment {
                        conn_id: i as u64 + 1,
                        username: None,
                        keepalive_ms: 90_000,
                    },
                )
                .unwrap();
            router.watch_keepalive(&a.session, i as u64 + 1);
            // Spread the clients' last activity over the first 10 s, as a fleet would be.
            a.session.activity.store((i % 10_000) as u64, Relaxed);
        }
        let mut busy = Duration::ZERO;
        let mut woken = 0;
        let ticks = 600;
        for _ in 0..ticks {
            tokio::time::advance(Duration::from_millis(roostd::keepalive::TICK_MS)).await;
            let t = Instant::now();
            woken += router.tick_keepalive();
            busy += t.elapsed();
        }
        let secs = ticks as f64 * roostd::keepalive::TICK_MS as f64 / 1000.0;
        println!(
            "{n} sessions: wheel ticks took {:.2} ms per simulated second ({:.3}% of a core), {woken} wake-ups in {secs} s",
            busy.as_secs_f64() * 1000.0 / secs,
            busy.as_secs_f64() / secs * 100.0
        );
    });
}
