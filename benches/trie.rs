//! Subscription trie: matching and subscribe/unsubscribe cost at 1k, 100k and 1M subscriptions.
//!
//! Every trie holds the same five filters that match the probe topic `site/17/dev/4711/temp`
//! (exact, two `+` forms, two `#` forms) plus N-5 device-style filters that do not match it
//! (other sites). If matching costs what the design says (topic depth + matching entries), the
//! `match/probe` numbers stay flat from 1k to 1M. `match/spread` cycles through 4096 topics of
//! subscribed devices, so it also shows cache misses in a big trie. Each trie is built once per
//! size; the sub/unsub benches restore it after each iteration.
//!
//! Run: `cargo bench --bench trie` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use roostd::trie::Trie;

/// What the router stores per subscription: a shared session handle and the granted QoS.
type Value = (Arc<u64>, u8);

const SIZES: [usize; 3] = [1_000, 100_000, 1_000_000];
const PROBE: &[u8] = b"site/17/dev/4711/temp";
const PROBE_SITE: u64 = 17;
const METRICS: [&str; 5] = ["temp", "hum", "volt", "status", "rssi"];
const SITES: u64 = 1_000;

/// Filters matching `PROBE`; present at every size, so the matched set is constant.
const MATCHING: [&str; 5] = [
    "site/17/dev/4711/temp",
    "site/17/dev/4711/+",
    "site/+/dev/4711/temp",
    "site/17/dev/4711/#",
    "site/17/#",
];

/// splitmix64: deterministic filters without a `rand` dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A site other than the probe's, so the filter cannot match `PROBE`.
fn other_site(rng: &mut Rng) -> u64 {
    loop {
        let s = rng.below(SITES);
        if s != PROBE_SITE {
            return s;
        }
    }
}

/// Device-style filter mix: 70% exact, 20% `+`, 10% `#`.
fn background_filter(rng: &mut Rng, devices_per_site: u64) -> String {
    let site = other_site(rng);
    let dev = rng.below(devices_per_site);
    let metric = METRICS[rng.below(METRICS.len() as u64) as usize];
    match rng.below(10) {
        0..=6 => format!("site/{site}/dev/{dev}/{metric}"),
        7 => format!("site/{site}/dev/{dev}/+"),
        8 => format!("site/{site}/+/{dev}/{metric}"),
        _ => format!("site/{site}/dev/{dev}/#"),
    }
}

struct Fixture {
    trie: Trie<Value>,
    /// Topics of subscribed devices, for `match/spread`.
    topics: Vec<Vec<u8>>,
    /// A filter shared by 1% of the subscriptions (a dashboard), for `sub_unsub/shared_filter`.
    shared_filter: &'static str,
}

fn build(size: usize) -> Fixture {
    let started = Instant::now();
    let mut rng = Rng(size as u64);
    // About 20 subscriptions per device: deep, realistic fan-out of the levels.
    let devices_per_site = (size as u64 / SITES / 4).max(10);
    // `alarm` is no metric of the background topics: this filter matches none of them.
    let shared_filter = "site/+/dev/+/alarm";
    let shared = size / 100;
    let mut trie = Trie::default();
    let mut topics = Vec::with_capacity(4096);
    let mut id = 0u64;
    for filter in MATCHING {
        trie.insert(filter, id, (Arc::new(id), 1));
        id += 1;
    }
    for _ in 0..shared {
        trie.insert(shared_filter, id, (Arc::new(id), 0));
        id += 1;
    }
    while trie.len() < size {
        let filter = background_filter(&mut rng, devices_per_site);
        if topics.len() < 4096 && !filter.contains(['+', '#']) {
            topics.push(filter.clone().into_bytes());
        }
        trie.insert(&filter, id, (Arc::new(id), 1));
        id += 1;
    }
    let mut out = Vec::new();
    for topic in &topics {
        trie.matches(topic, &mut out);
    }
    eprintln!(
        "trie of {} subscriptions built in {:.2?}; spread topics match {:.1} filters on average",
        trie.len(),
        started.elapsed(),
        out.len() as f64 / topics.len() as f64
    );
    Fixture {
        trie,
        topics,
        shared_filter,
    }
}

fn bench_trie(c: &mut Criterion) {
    for size in SIZES {
        let mut fx = build(size);
        let mut out: Vec<(u64, Value)> = Vec::with_capacity(64);

        let mut group = c.benchmark_group("trie/match");
        group.throughput(Throughput::Elements(1));
        fx.trie.matches(PROBE, &mut out);
        assert_eq!(
            out.len(),
            MATCHING.len(),
            "probe must match exactly its 5 filters"
        );
        group.bench_with_input(BenchmarkId::new("probe_5_matches", size), &size, |b, _| {
            b.iter(|| {
                out.clear();
                fx.trie.matches(black_box(PROBE), &mut out);
                black_box(out.len())
            })
        });
        group.bench_with_input(BenchmarkId::new("no_match", size), &size, |b, _| {
            b.iter(|| {
                out.clear();
                fx.trie
                    .matches(black_box(b"site/17/dev/999999/temp"), &mut out);
                black_box(out.len())
            })
        });
        let mut i = 0usize;
        group.bench_with_input(BenchmarkId::new("spread", size), &size, |b, _| {
            b.iter(|| {
                i = (i + 1) % fx.topics.len();
                out.clear();
                fx.trie.matches(black_box(&fx.topics[i]), &mut out);
                black_box(out.len())
            })
        });
        group.finish();

        let mut group = c.benchmark_group("trie/sub_unsub");
        group.throughput(Throughput::Elements(1));
        let new_id = u64::MAX - 1;
        let value = (Arc::new(new_id), 1u8);
        // A new device: fresh nodes are created and pruned again every iteration.
        group.bench_with_input(BenchmarkId::new("new_device", size), &size, |b, _| {
            b.iter(|| {
                let added =
                    fx.trie
                        .insert(black_box("site/17/dev/99999/temp"), new_id, value.clone());
                let removed = fx.trie.remove(black_box("site/17/dev/99999/temp"), new_id);
                assert!(added && removed);
            })
        });
        // Joining a filter that 1% of all subscriptions share: shows the per-node list cost.
        let shared_filter = fx.shared_filter;
        group.bench_with_input(BenchmarkId::new("shared_filter", size), &size, |b, _| {
            b.iter(|| {
                let added = fx
                    .trie
                    .insert(black_box(shared_filter), new_id, value.clone());
                let removed = fx.trie.remove(black_box(shared_filter), new_id);
                assert!(added && removed);
            })
        });
        group.finish();
        assert_eq!(fx.trie.len(), size);

        let started = Instant::now();
        drop(fx);
        eprintln!("trie of {size} dropped in {:.2?}", started.elapsed());
    }
}

criterion_group!(benches, bench_trie);
criterion_main!(benches);
