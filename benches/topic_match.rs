//! Topic matching: the subscription trie against a linear scan over the same
//! filters with `topic::matches`, at 10k, 100k and 1M filters; plus micro
//! benchmarks of `topic::matches` and `TopicFilter::new`.
//!
//! Run with `cargo bench --bench topic_match` (about a minute and a half).
//!
//! The filters model a device fleet: `fleet/{region}/{device}/{kind}`.
//! 80% are exact; 20% have wildcards: per device `fleet/+/{device}/cmd`
//! (12%) and `fleet/{region}/{device}/#` (7.6%), per region
//! `fleet/{region}/+/alerts` and `fleet/{region}/#` (0.4%). The number of
//! regions grows with the fleet, so a topic matches a handful of filters at
//! every size (the setup prints how many).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vmqtt::topic::{matches, TopicFilter};
use vmqtt::trie::SubscriptionTrie;
use vmqtt::ByteStr;

/// SplitMix64: a small deterministic generator, so every run uses the same
/// filters.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const KINDS: [&str; 4] = ["telemetry", "status", "cmd", "config"];

struct Fleet {
    devices: usize,
    regions: usize,
}

impl Fleet {
    fn for_filters(n: usize) -> Self {
        Self {
            devices: (n / 4).max(1),
            regions: (n / 2000).max(8),
        }
    }

    fn region(&self, device: usize) -> usize {
        device % self.regions
    }

    fn filters(&self, n: usize, rng: &mut Rng) -> Vec<String> {
        (0..n)
            .map(|_| {
                let d = rng.below(self.devices);
                let r = self.region(d);
                match rng.below(1000) {
                    0..800 => format!("fleet/r{r}/d{d}/{}", KINDS[rng.below(KINDS.len())]),
                    800..920 => format!("fleet/+/d{d}/cmd"),
                    920..996 => format!("fleet/r{r}/d{d}/#"),
                    996..998 => format!("fleet/r{r}/+/alerts"),
                    _ => format!("fleet/r{r}/#"),
                }
            })
            .collect()
    }

    fn topics(&self, n: usize, rng: &mut Rng) -> Vec<String> {
        (0..n)
            .map(|_| {
                let d = rng.below(self.devices);
                let kind = match rng.below(5) {
                    4 => "alerts",
                    k => KINDS[k],
                };
                format!("fleet/r{}/d{d}/{kind}", self.region(d))
            })
            .collect()
    }
}

fn label(n: usize) -> String {
    if n >= 1_000_000 {
        format!("{}M", n / 1_000_000)
    } else {
        format!("{}k", n / 1000)
    }
}

fn trie_count(trie: &SubscriptionTrie<u32, u8>, topic: &str) -> usize {
    let mut count = 0;
    trie.for_each_match(topic, |_, _| count += 1);
    count
}

fn linear_count(filters: &[String], topic: &str) -> usize {
    filters.iter().filter(|f| matches(f, topic)).count()
}

fn trie_vs_linear(c: &mut Criterion) {
    const TOPICS: usize = 256;
    for n in [10_000, 100_000, 1_000_000] {
        let mut rng = Rng(0x5EED);
        let fleet = Fleet::for_filters(n);
        let filters = fleet.filters(n, &mut rng);
        let topics = fleet.topics(TOPICS, &mut rng);
        let mut trie = SubscriptionTrie::new();
        for (key, f) in (0u32..).zip(&filters) {
            trie.insert(f, key, 1u8);
        }
        let mut total = 0;
        for topic in &topics[..16] {
            let count = trie_count(&trie, topic);
            assert_eq!(count, linear_count(&filters, topic), "{topic}");
            total += count;
        }
        println!(
            "{} filters ({} distinct), {} regions: {:.1} matches per topic",
            filters.len(),
            trie.filter_count(),
            fleet.regions,
            total as f64 / 16.0
        );

        let mut group = c.benchmark_group(format!("match_{}", label(n)));
        group.throughput(Throughput::Elements(1));
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(3));
        group.sample_size(if n >= 1_000_000 { 10 } else { 30 });
        group.bench_function("trie", |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % TOPICS;
                trie_count(&trie, black_box(&topics[i]))
            })
        });
        group.bench_function("linear", |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % TOPICS;
                linear_count(&filters, black_box(&topics[i]))
            })
        });
        group.finish();
    }
}

fn micro(c: &mut Criterion) {
    let mut group = c.benchmark_group("matches");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    let cases = [
        (
            "exact_hit",
            "fleet/r3/d123/telemetry",
            "fleet/r3/d123/telemetry",
        ),
        (
            "exact_miss",
            "fleet/r3/d124/telemetry",
            "fleet/r3/d123/telemetry",
        ),
        ("plus_hit", "fleet/+/d123/cmd", "fleet/r3/d123/cmd"),
        ("hash_hit", "fleet/r3/#", "fleet/r3/d123/telemetry"),
        ("dollar_root_wildcard", "#", "$SYS/broker/uptime"),
    ];
    for (name, filter, topic) in cases {
        group.bench_with_input(
            BenchmarkId::from_parameter(name),
            &(filter, topic),
            |b, (f, t)| b.iter(|| matches(black_box(f), black_box(t))),
        );
    }
    group.finish();

    let mut group = c.benchmark_group("TopicFilter::new");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    let cases = [
        ("exact", "fleet/r3/d123/telemetry"),
        ("wildcards", "fleet/+/d123/#"),
        ("shared", "$share/workers/fleet/+/d123/cmd"),
    ];
    for (name, filter) in cases {
        let s = ByteStr::from_static(filter);
        group.bench_with_input(BenchmarkId::from_parameter(name), &s, |b, s| {
            b.iter(|| TopicFilter::new(black_box(s.clone())).is_ok())
        });
    }
    group.finish();
}

criterion_group!(benches, micro, trie_vs_linear);
criterion_main!(benches);
