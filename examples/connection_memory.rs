//! Heap bytes per idle connection, counted by a counting allocator (exact, unlike RSS):
//!
//!     cargo run --release --example connection_memory
//!
//! Opens 2,000 idle clients (CONNECT + SUBSCRIBE to their own topic) against an in-process
//! broker and prints the live heap bytes and allocations per connection (the client's own
//! socket included), by allocation size class, and the size of the connection task's future.
//! Used to find what an idle connection costs (BENCHMARKS.md).
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering::Relaxed};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
static COUNT: AtomicIsize = AtomicIsize::new(0);
static HIST: [AtomicUsize; 16] = [const { AtomicUsize::new(0) }; 16];
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Relaxed);
        COUNT.fetch_add(1, Relaxed);
        HIST[(usize::BITS - l.size().leading_zeros()) as usize % 16].fetch_add(1, Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Relaxed);
        COUNT.fetch_sub(1, Relaxed);
        HIST[(usize::BITS - l.size().leading_zeros()) as usize % 16].fetch_sub(1, Relaxed);
        unsafe { System.dealloc(p, l) }
    }
}
#[global_allocator]
static A: Counting = Counting;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let text = "allow_anonymous = true\nmetrics_enabled = false\npersistence = false\nsys_interval = 0\n[[listener]]\nport = 0\nbind_address = \"127.0.0.1\"\n";
        let b = roostd::Broker::bind(roostd::Config::from_toml_str(text).unwrap()).await.unwrap();
        let addr = b.local_addrs()[0];
        tokio::spawn(b.run());
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let st = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let config = std::sync::Arc::new(roostd::Config::default());
            let auth = std::sync::Arc::new(roostd::auth::live::AuthState::load(None, None).unwrap());
            let router = std::sync::Arc::new(roostd::router::Router::new(config.session_limits(), roostd::metrics::Metrics::disabled(), auth, None));
            let ctx = roostd::connection::Context { router, config, shutdown: tokio_util::sync::CancellationToken::new() };
            let fut = roostd::connection::serve(st, "127.0.0.1:1".parse().unwrap(), 1, ctx, roostd::connection::CertUser::NotUsed, None);
            println!("serve future: {} bytes; Session: {} bytes; SessionState: {} bytes", std::mem::size_of_val(&fut), std::mem::size_of::<roostd::session::Session>(), std::mem::size_of::<roostd::session::SessionState>());
        }
                {
            let token = tokio_util::sync::CancellationToken::new();
            let notify = tokio::sync::Notify::new();
            println!(
                "Sleep {} B, cancelled() {} B, notified() {} B, timeout(notified) {} B",
                std::mem::size_of::<tokio::time::Sleep>(),
                std::mem::size_of_val(&token.cancelled()),
                std::mem::size_of_val(&notify.notified()),
                std::mem::size_of_val(&tokio::time::timeout(std::time::Duration::from_secs(1), notify.notified()))
            );
        }
        let n = 2000;
        let mut conns = Vec::new();
        // warm up
        let run = |i: usize| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let id = format!("idle-{i:06}");
            let mut c = vec![0x10, (12 + id.len()) as u8, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, id.len() as u8];
            c.extend_from_slice(id.as_bytes());
            let topic = format!("idle/{i}");
            let mut sub = vec![0x82, (5 + topic.len()) as u8, 0, 1, 0, topic.len() as u8];
            sub.extend_from_slice(topic.as_bytes());
            sub.push(0);
            c.extend(sub);
            s.write_all(&c).await.unwrap();
            let mut buf = [0u8; 9];
            s.read_exact(&mut buf).await.unwrap();
            s
        };
        for i in 0..10 { conns.push(run(i).await); }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let (l0, c0) = (LIVE.load(Relaxed), COUNT.load(Relaxed));
        let h0: Vec<usize> = HIST.iter().map(|h| h.load(Relaxed)).collect();
        for i in 10..10 + n { conns.push(run(i).await); }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let (l1, c1) = (LIVE.load(Relaxed), COUNT.load(Relaxed));
        println!("per connection: {} bytes live, {} allocations (client sockets included: tokio TcpStream on the client side too)", (l1 - l0) / n as isize, (c1 - c0) as f64 / n as f64);
        for (i, h) in HIST.iter().enumerate() {
            let d = h.load(Relaxed) as isize - h0[i] as isize;
            if d != 0 { println!("  size class <2^{i}: {:.2} per conn", d as f64 / n as f64); }
        }
    });
}
