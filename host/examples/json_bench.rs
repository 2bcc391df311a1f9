//! How long reading a message into a record and writing a record as JSON take, on `host
//! publish`'s generated messages, with the host's allocator:
//!
//! - decoding: the sources' one-pass scanner (`Record::from_json`) against the same JSON read
//!   through serde_json into the same record (`Record`'s `Deserialize`);
//! - encoding: `Record::write_json` (what `jsonl` writes with) against `serde_json::to_writer`,
//!   on the records as decoded and on the same records after the `rules` stage's edits in
//!   `pipelines/rules-to-jsonl.yaml` (a key renamed, a field set: strings the decoder did not
//!   read, so checked as they are written).
//!
//! Each pair runs round after round, one after the other; compare their ratios.
//!
//! `cargo run --release -p host --example json_bench [MESSAGES_PER_ROUND] [ROUNDS]`

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

/// Writes `n` records from `records` one after another into a buffer emptied every
/// [`HELD`] records, as `jsonl` encodes a batch.
fn ns_per_write(records: &[Record], n: usize, write: impl Fn(&Record, &mut Vec<u8>)) -> f64 {
    let mut out = Vec::with_capacity(64 << 10);
    let started = Instant::now();
    for i in 0..n {
        if i % HELD == 0 {
            out.clear();
        }
        write(&records[i % records.len()], &mut out);
        out.push(b'\n');
    }
    black_box(&out);
    started.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let n = args.next().and_then(Result::ok).unwrap_or(5_000_000);
    let rounds = args.next().and_then(Result::ok).unwrap_or(3);
    let messages: Vec<String> = (0..1000)
        .map(|i| host::publish::generated_message(i, 1_764_000_000.123_456))
        .collect();
    let decoded: Vec<Record> = messages
        .iter()
        .map(|m| Record::from_json(m.as_bytes()).expect("generated messages are objects"))
        .collect();
    let edited: Vec<Record> = decoded
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.rename("msg", "message");
            r.insert("pipeline", "rules-to-jsonl");
            r
        })
        .collect();
    for records in [&decoded, &edited] {
        for r in records.iter() {
            let mut ours = Vec::new();
            r.write_json(&mut ours).expect("a record");
            assert_eq!(
                ours,
                serde_json::to_vec(r).expect("a record"),
                "the same text"
            );
        }
    }
    println!(
        "{n} messages of ~{} bytes a round, CPU: {}",
        messages[0].len(),
        host::bench::cpu_model()
    );
    let ours = |r: &Record, out: &mut Vec<u8>| r.write_json(out).expect("a record");
    let serde = |r: &Record, out: &mut Vec<u8>| serde_json::to_writer(out, r).expect("a record");
    for round in 1..=rounds {
        let scanner = ns_per_record(&messages, n, |m| {
            Record::from_json(m).expect("generated messages are objects")
        });
        let serde_in = ns_per_record(&messages, n, |m| {
            serde_json::from_slice::<Record>(m).expect("generated messages are objects")
        });
        println!(
            "round {round}: decode: scanner {scanner:.1} ns/record, serde_json path {serde_in:.1} ns/record, ratio {:.2}",
            scanner / serde_in
        );
        for (what, records) in [("as decoded", &decoded), ("edited", &edited)] {
            let write_json = ns_per_write(records, n, ours);
            let to_writer = ns_per_write(records, n, serde);
            println!(
                "round {round}: encode {what}: write_json {write_json:.1} ns/record, serde_json {to_writer:.1} ns/record, ratio {:.2}",
                write_json / to_writer
            );
        }
    }
}
