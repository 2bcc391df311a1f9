//! `message-metrics` feeding an `otlp` stage with `signal: metrics`: each configured field of
//! its records arrives at a real OTLP receiver as the configured metric (a sum, a histogram,
//! a gauge) with the record's value and the record's other fields as attributes.

use std::{
    collections::BTreeMap,
    time::{SystemTime, UNIX_EPOCH},
};

use tests::{
    assert_reconciled, attributes_json, histogram_points, is_gauge, json, number_points, send_json,
    sum_shape, totals, wait_until, Host, OtlpProtocol, OtlpReceiver, Value, DELIVERY_TIMEOUT,
};

const N: u64 = 40;

fn pipeline(receiver: &OtlpReceiver) -> String {
    format!(
        r#"
plugins:
  paths: ["{{{{plugins}}}}"]
sources:
  in: {{ type: zmq, socket: pull, bind: "{{{{endpoint}}}}" }}
stages:
  measure:
    plugin: message-metrics
    inputs: [in]
    config: {{ timestamp_field: sent_at, type_field: event }}
  out:
    plugin: otlp
    inputs: [measure]
    config:
      endpoint: "{endpoint}"
      protocol: {protocol}
      signal: metrics
      resource: {{ service.name: shop }}
      metrics:
        - {{ field: size_bytes, name: message.size, kind: sum, unit: By }}
        - {{ field: latency_ms, name: message.latency, kind: histogram, unit: ms, buckets: [100, 60000] }}
        - {{ field: type_count, name: messages.seen, kind: gauge }}
      sending: {{ batch_size: 16, max_delay: 50ms }}
"#,
        endpoint = receiver.endpoint(),
        protocol = receiver.protocol.name(),
    )
}

fn metrics_arrive(protocol: OtlpProtocol) {
    let receiver = OtlpReceiver::start(protocol);
    let mut host = Host::start(&pipeline(&receiver));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    let messages: Vec<Value> = (0..N)
        .map(|i| {
            json!({
                "sent_at": now,
                "event": if i % 2 == 0 { "login" } else { "logout" },
                "pad": "x".repeat(i as usize),
            })
        })
        .collect();
    send_json(&host.endpoint, &messages);
    host.wait_settled(N);
    let points = |name: &str| -> usize {
        receiver
            .received()
            .metrics()
            .iter()
            .filter(|m| m.name == name)
            .map(|m| number_points(m).len() + histogram_points(m).len())
            .sum()
    };
    let all = wait_until(DELIVERY_TIMEOUT, || {
        ["message.size", "message.latency", "messages.seen"]
            .iter()
            .all(|name| points(name) as u64 == N)
    });
    assert!(all, "not every data point arrived:\n{}", host.log());
    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (N, N, 0, 0), "{summary:#}");

    let received = receiver.received();
    let mut sizes: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut seen: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut latencies = 0;
    for m in received.metrics() {
        match m.name.as_str() {
            "message.size" => {
                assert_eq!(m.unit, "By");
                let (monotonic, delta) = sum_shape(m).expect("a sum");
                assert!(monotonic && delta, "{m:?}");
                for (attributes, value) in number_points(m) {
                    let kind = attributes["type"].as_str().expect("type").to_owned();
                    assert_eq!(attributes, json!({ "type": kind }));
                    sizes
                        .entry(kind)
                        .or_default()
                        .push(value.as_i64().expect("an int"));
                }
            }
            "messages.seen" => {
                assert!(is_gauge(m), "{m:?}");
                for (attributes, value) in number_points(m) {
                    let kind = attributes["type"].as_str().expect("type").to_owned();
                    seen.entry(kind)
                        .or_default()
                        .push(value.as_i64().expect("an int"));
                }
            }
            "message.latency" => {
                assert_eq!(m.unit, "ms");
                for p in histogram_points(m) {
                    latencies += 1;
                    assert_eq!(p.count, 1);
                    assert_eq!(p.explicit_bounds, [100.0, 60000.0]);
                    let v = p.sum.expect("a sum");
                    assert_eq!((p.min, p.max), (Some(v), Some(v)));
                    assert!((-1000.0..60000.0).contains(&v), "latency {v} ms");
                    let bucket = usize::from(v > 100.0);
                    assert_eq!(p.bucket_counts[bucket], 1, "{p:?}");
                    assert_eq!(p.bucket_counts.iter().sum::<u64>(), 1, "{p:?}");
                    let at = p.time_unix_nano as f64 / 1e9;
                    assert!((at - now).abs() < 60.0, "time {at}, sent at {now}");
                    assert!(attributes_json(&p.attributes)["type"].is_string());
                }
            }
            other => panic!("unexpected metric {other}"),
        }
    }
    assert_eq!(latencies, N);
    for (kind, parity) in [("login", 0), ("logout", 1)] {
        let mut want: Vec<i64> = messages
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == parity)
            .map(|(_, m)| m.to_string().len() as i64)
            .collect();
        want.sort_unstable();
        let got = sizes.get_mut(kind).expect("sizes of the type");
        got.sort_unstable();
        assert_eq!(*got, want, "message.size of {kind}");
        let counts = seen.get_mut(kind).expect("counts of the type");
        counts.sort_unstable();
        assert_eq!(*counts, (1..=N as i64 / 2).collect::<Vec<_>>(), "{kind}");
    }
}

#[test]
fn metrics_arrive_over_grpc() {
    metrics_arrive(OtlpProtocol::Grpc);
}

#[test]
fn metrics_arrive_over_http() {
    metrics_arrive(OtlpProtocol::Http);
}
