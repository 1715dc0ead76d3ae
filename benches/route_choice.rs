//! Cost of a smart route's candidate choice per request: finding the route's state in the
//! router and choosing among its candidates from the scores snapshot (3 candidates in a
//! catalog of 1 000 endpoints, 5 % exploration), as the proxy does it in `request_filter`.
//! Run: `cargo bench --bench route_choice [-- <iterations>]`.
//!
//! Prints ns per choice, on one thread and on two at once, next to the baseline of the same
//! loop that only loads the snapshot (what any reader of the scores pays).

use std::sync::Arc;
use std::time::Instant;

use pag0::curation::router::Router;
use pag0::curation::{Components, Entry, Observed, Score, Snapshot};

fn entry(key: &str, score: f64) -> Entry {
    Entry {
        endpoint: key.to_string(),
        category: Some("weather".into()),
        description: None,
        offer: None,
        first_seen_ms: 0,
        last_seen_ms: 0,
        totals: Default::default(),
        observed: Observed::default(),
        score: Some(Score {
            score,
            components: Components {
                reliability: score,
                latency: score,
                cost: score,
                volume: score,
                reputation: 50.0,
            },
        }),
    }
}

fn snapshot(keys: &[String]) -> Snapshot {
    let mut snap = Snapshot::default();
    for i in 0..1000 {
        let key = format!("api{i}.example.com/v1/*");
        snap.entries.insert(key.clone(), entry(&key, 50.0));
    }
    for (i, key) in keys.iter().enumerate() {
        snap.entries
            .insert(key.clone(), entry(key, 90.0 - 10.0 * i as f64));
    }
    snap
}

fn per_call_ns(iterations: u64, threads: usize, f: impl Fn() + Send + Sync + 'static) -> f64 {
    let f = Arc::new(f);
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let f = f.clone();
            std::thread::spawn(move || {
                for _ in 0..iterations {
                    f();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    start.elapsed().as_nanos() as f64 / iterations as f64
}

fn main() {
    let iterations: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let keys: Vec<String> = [
        "a.example.com/weather/*",
        "b.example.com/v1/weather/*",
        "c.example.com/w/*",
    ]
    .map(String::from)
    .to_vec();
    let scores = Arc::new(arc_swap::ArcSwap::from_pointee(snapshot(&keys)));
    let router = Arc::new(Router::default());
    println!("route choice, {iterations} iterations per thread");
    println!(
        "{:<40} {:>12} {:>12}",
        "case", "1 thread ns", "2 threads ns"
    );
    for threads_label in ["baseline: load the snapshot", "choose a candidate"] {
        let mut row = Vec::new();
        for threads in [1, 2] {
            let (scores, router, keys) = (scores.clone(), router.clone(), keys.clone());
            let choose = threads_label.starts_with("choose");
            let ns = per_call_ns(iterations, threads, move || {
                let snap = scores.load_full();
                if choose {
                    let state = router.route("weather", &keys);
                    std::hint::black_box(state.choose(&snap, 0.05, 1));
                } else {
                    std::hint::black_box(&snap);
                }
            });
            row.push(ns);
        }
        println!("{threads_label:<40} {:>12.0} {:>12.0}", row[0], row[1]);
    }
}
