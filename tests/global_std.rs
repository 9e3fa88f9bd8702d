//! Standard-library workloads with `OxMalloc` installed as the global allocator.
//!
//! Every collection, string, box and thread of this test binary (the test harness included)
//! allocates through `OxMalloc`. Each test builds real data structures and checks the results
//! a program would rely on: lengths, sums, lookups, ordering and contents.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

#[global_allocator]
static GLOBAL: oxmalloc::OxMalloc = oxmalloc::OxMalloc;

/// xorshift64* generator.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn value_vec(i: u64) -> Vec<u64> {
    (0..i % 7 + 1).map(|j| i * 10 + j).collect()
}

#[test]
fn hash_map_of_strings_to_vectors() {
    const ENTRIES: u64 = 200_000;
    let mut map: HashMap<String, Vec<u64>> = HashMap::new();
    for i in 0..ENTRIES {
        assert!(map.insert(format!("key-{i}"), value_vec(i)).is_none());
    }
    assert_eq!(map.len(), ENTRIES as usize);
    for i in 0..ENTRIES {
        let values = map.get(&format!("key-{i}")).expect("key present");
        assert_eq!(values, &value_vec(i), "values of key-{i}");
    }
    // Grow some vectors in place in the map, drop others.
    for i in (0..ENTRIES).step_by(3) {
        map.get_mut(&format!("key-{i}"))
            .expect("key present")
            .extend(0..100);
    }
    for i in (1..ENTRIES).step_by(3) {
        assert!(map.remove(&format!("key-{i}")).is_some());
    }
    let expected_len = ENTRIES - (1..ENTRIES).step_by(3).count() as u64;
    assert_eq!(map.len() as u64, expected_len);
    let total: u64 = map.values().flatten().sum();
    let expected: u64 = (0..ENTRIES)
        .filter(|i| i % 3 != 1)
        .map(|i| value_vec(i).iter().sum::<u64>() + if i % 3 == 0 { 4950 } else { 0 })
        .sum();
    assert_eq!(total, expected);
    map.shrink_to_fit();
    assert!(map.contains_key("key-0") && !map.contains_key("key-1"));
}

#[test]
fn btree_map_insert_remove_churn() {
    let mut rng = Rng::new(42);
    let mut map: BTreeMap<u64, String> = BTreeMap::new();
    let mut expected_sum: u128 = 0;
    let mut expected_bytes: usize = 0;
    for round in 0..300_000u64 {
        let key = rng.next() % 50_000;
        if round % 3 == 2 {
            if let Some(value) = map.remove(&key) {
                expected_sum -= u128::from(key);
                expected_bytes -= value.len();
                assert_eq!(value, format!("v{key}"));
            }
        } else {
            let value = format!("v{key}");
            let len = value.len();
            if map.insert(key, value).is_none() {
                expected_sum += u128::from(key);
                expected_bytes += len;
            }
        }
    }
    let sum: u128 = map.keys().map(|&key| u128::from(key)).sum();
    let bytes: usize = map.values().map(String::len).sum();
    assert_eq!(sum, expected_sum);
    assert_eq!(bytes, expected_bytes);
    assert!(map.iter().all(|(key, value)| *value == format!("v{key}")));
    assert!(map.keys().zip(map.keys().skip(1)).all(|(a, b)| a < b));
}

#[test]
fn vec_grows_to_tens_of_megabytes() {
    const LEN: u64 = 6_000_000; // 48 MB of u64
    let mut vec: Vec<u64> = Vec::new();
    for i in 0..LEN {
        vec.push(i ^ 0x5555);
    }
    assert_eq!(vec.len() as u64, LEN);
    let sum: u64 = vec.iter().sum();
    let expected: u64 = (0..LEN).map(|i| i ^ 0x5555).sum();
    assert_eq!(sum, expected);
    vec.truncate(1000);
    vec.shrink_to_fit();
    assert_eq!(vec.len(), 1000);
    assert!(vec.iter().enumerate().all(|(i, &v)| v == i as u64 ^ 0x5555));

    let mut bytes: Vec<u8> = Vec::new();
    for chunk in 0..(32 << 20) / 4096 {
        bytes.extend_from_slice(&[chunk as u8; 4096]);
    }
    assert_eq!(bytes.len(), 32 << 20);
    assert!(bytes
        .chunks(4096)
        .enumerate()
        .all(|(chunk, data)| data.iter().all(|&b| b == chunk as u8)));
}

#[test]
fn strings_built_with_format_and_write() {
    let mut text = String::new();
    for i in 0..100_000u32 {
        writeln!(
            text,
            "line {i}: {:08x} {}",
            i.wrapping_mul(2_654_435_761),
            "x".repeat((i % 50) as usize)
        )
        .unwrap();
    }
    let mut count = 0u32;
    for (i, line) in text.lines().enumerate() {
        let i = i as u32;
        let expected = format!(
            "line {i}: {:08x} {}",
            i.wrapping_mul(2_654_435_761),
            "x".repeat((i % 50) as usize)
        );
        assert_eq!(line, expected);
        count += 1;
    }
    assert_eq!(count, 100_000);
    let joined = (0..10_000)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let parsed: u64 = joined.split(',').map(|s| s.parse::<u64>().unwrap()).sum();
    assert_eq!(parsed, (0..10_000).sum::<u64>());
    let mut shrinking = text;
    shrinking.truncate(10);
    shrinking.shrink_to_fit();
    assert_eq!(shrinking, "line 0: 00");
}

#[test]
fn large_boxed_slices() {
    for (size, fill) in [
        (300_000usize, 0u8),
        (5 << 20, 0x5A),
        (64 << 20, 0),
        (3 << 20, 0xFF),
    ] {
        let boxed: Box<[u8]> = vec![fill; size].into_boxed_slice();
        assert_eq!(boxed.len(), size);
        let reference = [fill; 4096];
        assert!(
            boxed
                .chunks(4096)
                .all(|chunk| chunk == &reference[..chunk.len()]),
            "boxed slice of {size} bytes does not hold {fill:#x} everywhere"
        );
        let mut boxed = boxed;
        for (i, byte) in boxed.iter_mut().enumerate().step_by(4093) {
            *byte = i as u8;
        }
        assert!(boxed
            .iter()
            .enumerate()
            .step_by(4093)
            .all(|(i, &byte)| byte == i as u8));
    }
}

#[repr(align(4096))]
#[derive(Clone)]
struct Page {
    id: u64,
    data: [u8; 100],
}

#[repr(align(64))]
#[derive(Clone, Copy)]
struct CacheLine(u64);

#[test]
fn vectors_of_over_aligned_elements() {
    let mut pages: Vec<Page> = Vec::new();
    for id in 0..2000u64 {
        pages.push(Page {
            id,
            data: [id as u8; 100],
        });
        assert_eq!(pages.as_ptr() as usize % 4096, 0);
    }
    assert_eq!(std::mem::size_of::<Page>(), 4096);
    for (i, page) in pages.iter().enumerate() {
        assert_eq!(page.id, i as u64);
        assert!(page.data.iter().all(|&b| b == i as u8));
        assert_eq!(page as *const Page as usize % 4096, 0);
    }
    pages.truncate(3);
    pages.shrink_to_fit();
    assert_eq!(pages.as_ptr() as usize % 4096, 0);
    assert_eq!(pages.iter().map(|p| p.id).sum::<u64>(), 3);

    let boxed: Vec<Box<Page>> = (0..500)
        .map(|id| Box::new(Page { id, data: [0; 100] }))
        .collect();
    assert!(boxed
        .iter()
        .all(|p| &**p as *const Page as usize % 4096 == 0));
    assert_eq!(boxed.iter().map(|p| p.id).sum::<u64>(), 499 * 500 / 2);

    let lines: Vec<CacheLine> = (0..100_000).map(CacheLine).collect();
    assert_eq!(lines.as_ptr() as usize % 64, 0);
    assert_eq!(lines.iter().map(|l| l.0).sum::<u64>(), 99_999 * 100_000 / 2);
}

#[test]
fn scoped_threads_build_collections() {
    const THREADS: u64 = 6;
    let shared: Arc<Mutex<HashMap<u64, String>>> = Arc::new(Mutex::new(HashMap::new()));
    let results: Vec<(usize, u64)> = thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let shared = Arc::clone(&shared);
                scope.spawn(move || {
                    let mut local: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
                    let mut strings = Vec::new();
                    for i in 0..20_000u64 {
                        local.entry(i % 1000).or_default().push(t * i);
                        strings.push(format!("{t}-{i}"));
                        if i % 10 == 0 {
                            shared
                                .lock()
                                .unwrap()
                                .insert(t * 1_000_000 + i, format!("thread {t} item {i}"));
                        }
                    }
                    let sum: u64 = local.values().flatten().sum();
                    (strings.len(), sum)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (t, &(count, sum)) in results.iter().enumerate() {
        assert_eq!(count, 20_000);
        assert_eq!(sum, t as u64 * (19_999 * 20_000 / 2));
    }
    let shared = shared.lock().unwrap();
    assert_eq!(shared.len(), THREADS as usize * 2_000);
    for t in 0..THREADS {
        for i in (0..20_000).step_by(10) {
            assert_eq!(shared[&(t * 1_000_000 + i)], format!("thread {t} item {i}"));
        }
    }
}

#[test]
fn channels_move_buffers_between_threads() {
    const PRODUCERS: u64 = 4;
    const MESSAGES: u64 = 5_000;
    let (tx, rx) = mpsc::channel::<(u64, u64, Vec<u8>)>();
    let (back_tx, back_rx) = mpsc::channel::<Vec<u8>>();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let tx = tx.clone();
            thread::spawn(move || {
                let mut rng = Rng::new(p + 1);
                for seq in 0..MESSAGES {
                    let len = (rng.next() % 70_000) as usize + 1;
                    let byte = (p * 31 + seq) as u8;
                    tx.send((p, seq, vec![byte; len])).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    // The consumer checks each buffer, keeps every 16th and sends it on to a third thread; the
    // rest are freed here, on a thread that did not allocate them.
    let recycler = thread::spawn(move || {
        let mut bytes = 0usize;
        for buffer in back_rx {
            bytes += buffer.len();
        }
        bytes
    });
    let mut received = 0u64;
    let mut forwarded_bytes = 0usize;
    let mut next_seq = vec![0u64; PRODUCERS as usize];
    for (p, seq, buffer) in rx {
        assert_eq!(
            next_seq[p as usize], seq,
            "messages of producer {p} out of order"
        );
        next_seq[p as usize] += 1;
        let byte = (p * 31 + seq) as u8;
        let reference = [byte; 4096];
        assert!(
            buffer
                .chunks(4096)
                .all(|chunk| chunk == &reference[..chunk.len()]),
            "buffer {p}/{seq} corrupted"
        );
        received += 1;
        if seq % 16 == 0 {
            forwarded_bytes += buffer.len();
            back_tx.send(buffer).unwrap();
        }
    }
    drop(back_tx);
    for producer in producers {
        producer.join().unwrap();
    }
    assert_eq!(received, PRODUCERS * MESSAGES);
    assert_eq!(recycler.join().unwrap(), forwarded_bytes);
}

#[test]
fn sort_a_million_strings() {
    const LEN: usize = 1_000_000;
    let mut rng = Rng::new(7);
    let numbers: Vec<u64> = (0..LEN).map(|_| rng.next()).collect();
    let mut strings: Vec<String> = numbers.iter().map(|n| format!("{n:016x}")).collect();
    strings.sort();
    let mut sorted_numbers = numbers;
    sorted_numbers.sort_unstable();
    assert_eq!(strings.len(), LEN);
    for (string, &number) in strings.iter().zip(&sorted_numbers) {
        assert_eq!(u64::from_str_radix(string, 16).unwrap(), number);
    }
}
