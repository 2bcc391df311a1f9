//! How long decoding a message into a record takes: the sources' one-pass scanner
//! (`Record::from_json`) against the same JSON read through serde_json into the same record
//! (`Record`'s `Deserialize`), on `host publish`'s generated messages, with the host's
//! allocator. Both run round after round, one after the other; compare their ratio.
//!
//! `cargo run --release -p host --example decode_bench [MESSAGES_PER_ROUND] [ROUNDS]`

use std::{hint::black_box, time::Instant};

use plugin_api::Record;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Records kept alive at once, as a batch holds them (freeing is part of the cost).
const HELD: usize = 16;

fn ns_per_record(messages: &[String], n: usize, decode: impl Fn(&[u8]) -> Record) -> f64 {
    let mut held = Vec::with_capacity(HELD);
    let started = Instant::now();
    for i in 0..n {
        if held.len() == HELD {
            held.clear();
        }
        held.push(decode(messages[i % messages.len()].as_bytes()));
    }
    black_box(&held);
    started.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let n = args.next().and_then(Result::ok).unwrap_or(5_000_000);
    let rounds = args.next().and_then(Result::ok).unwrap_or(3);
    let messages: Vec<String> = (0..1000)
        .map(|i| host::publish::generated_message(i, 1_764_000_000.123_456))
        .collect();
    println!(
        "{n} messages of ~{} bytes a round, CPU: {}",
        messages[0].len(),
        host::bench::cpu_model()
    );
    for round in 1..=rounds {
        let scanner = ns_per_record(&messages, n, |m| {
            Record::from_json(m).expect("generated messages are objects")
        });
        let serde = ns_per_record(&messages, n, |m| {
            serde_json::from_slice::<Record>(m).expect("generated messages are objects")
        });
        println!(
            "round {round}: scanner {scanner:.1} ns/record, serde_json path {serde:.1} ns/record, ratio {:.2}",
            scanner / serde
        );
    }
}
