//! `monitoring.otlp`: the host's own metrics (the monitor's families and the process's) reach
//! a real OTLP receiver, over gRPC and over HTTP, with the names, labels and values that
//! `/metrics` shows; the last values go out at shutdown; and a receiver that is down costs
//! only failed exports, counted, while every message still completes.

use std::{collections::BTreeMap, time::Duration};

use tests::{
    any_to_json, assert_reconciled, json, send_json, totals, wait_until, Host, Metrics,
    OtlpProtocol, OtlpReceiver, Value,
};

use tests::otlp::{
    metric, number_data_point, AggregationTemporality, ExportMetricsServiceRequest, KeyValue,
    NumberDataPoint,
};

const N: u64 = 50;
/// How long exports may take to show what the test waits for: a few intervals.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(20);

fn pipeline(endpoint: &str, protocol: &str, interval: &str, timeout: &str) -> String {
    format!(
        r#"
plugins:
  paths: ["{{{{plugins}}}}"]
sources:
  in: {{ type: zmq, socket: pull, bind: "{{{{endpoint}}}}" }}
stages:
  process:
    plugin: rules
    inputs: [in]
    config: {{ drop: [{{ field: level, equals: debug }}] }}
  measure:
    plugin: message-metrics
    inputs: [process]
    config: {{ type_field: level }}
  export:
    plugin: jsonl
    inputs: [measure]
    config: {{ path: "{{{{dir}}}}/out.jsonl" }}
monitoring:
  mode: direct
  type_field: level
  admin: {{ listen: "127.0.0.1:0" }}
  otlp:
    endpoint: "{endpoint}"
    protocol: {protocol}
    interval: {interval}
    timeout: {timeout}
    headers: {{ x-api-key: "${{TELEMETRY_KEY}}" }}
    resource: {{ deployment.environment: test }}
"#
    )
}

fn messages() -> Vec<Value> {
    (0..N)
        .map(|i| json!({ "level": if i % 5 == 0 { "debug" } else { "info" }, "i": i }))
        .collect()
}

/// One data point as it arrived.
#[derive(Debug, Clone)]
struct Point {
    unit: String,
    /// `counter` (a monotonic cumulative sum), `gauge` or `histogram`.
    kind: &'static str,
    value: f64,
    /// Histograms: the bounds and the cumulative count at each.
    buckets: Vec<(f64, u64)>,
}

type Points = BTreeMap<(String, BTreeMap<String, String>), Point>;

fn labels(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .map(|kv| {
            let value = kv.value.as_ref().map_or(Value::Null, any_to_json);
            let text = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned);
            (kv.key.clone(), text)
        })
        .collect()
}

/// Every data point of one export request, by (name, labels).
fn points(request: &ExportMetricsServiceRequest) -> Points {
    let mut out = Points::new();
    for rm in &request.resource_metrics {
        for sm in &rm.scope_metrics {
            assert_eq!(sm.scope.as_ref().map(|s| s.name.as_str()), Some("host"));
            for m in &sm.metrics {
                let number = |p: &NumberDataPoint| match p.value {
                    Some(number_data_point::Value::AsInt(i)) => i as f64,
                    Some(number_data_point::Value::AsDouble(f)) => f,
                    None => f64::NAN,
                };
                let mut add = |attributes: &[KeyValue], point: Point| {
                    let key = (m.name.clone(), labels(attributes));
                    assert!(out.insert(key.clone(), point).is_none(), "twice: {key:?}");
                };
                match &m.data {
                    Some(metric::Data::Sum(s)) => {
                        assert!(s.is_monotonic, "{}: a counter is monotonic", m.name);
                        assert_eq!(
                            s.aggregation_temporality,
                            AggregationTemporality::Cumulative as i32,
                            "{}",
                            m.name
                        );
                        for p in &s.data_points {
                            let point = Point {
                                unit: m.unit.clone(),
                                kind: "counter",
                                value: number(p),
                                buckets: vec![],
                            };
                            add(&p.attributes, point);
                        }
                    }
                    Some(metric::Data::Gauge(g)) => {
                        for p in &g.data_points {
                            let point = Point {
                                unit: m.unit.clone(),
                                kind: "gauge",
                                value: number(p),
                                buckets: vec![],
                            };
                            add(&p.attributes, point);
                        }
                    }
                    Some(metric::Data::Histogram(h)) => {
                        assert_eq!(
                            h.aggregation_temporality,
                            AggregationTemporality::Cumulative as i32,
                            "{}",
                            m.name
                        );
                        for p in &h.data_points {
                            let mut cumulative = 0;
                            let buckets = p
                                .explicit_bounds
                                .iter()
                                .zip(&p.bucket_counts)
                                .map(|(le, n)| {
                                    cumulative += n;
                                    (*le, cumulative)
                                })
                                .collect();
                            let point = Point {
                                unit: m.unit.clone(),
                                kind: "histogram",
                                value: p.count as f64,
                                buckets,
                            };
                            add(&p.attributes, point);
                        }
                    }
                    other => panic!("{}: unexpected data {other:?}", m.name),
                }
            }
        }
    }
    out
}

fn resource(request: &ExportMetricsServiceRequest) -> BTreeMap<String, String> {
    labels(
        &request.resource_metrics[0]
            .resource
            .as_ref()
            .expect("a resource")
            .attributes,
    )
}

/// The latest export's points.
fn latest(receiver: &OtlpReceiver) -> Option<(Points, BTreeMap<String, String>)> {
    let received = receiver.received();
    received.metrics.last().map(|r| (points(r), resource(r)))
}

fn value(points: &Points, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    points.get(&(name.to_owned(), labels)).map(|p| p.value)
}

/// Families on /metrics that are not the monitor's: the admin server's own connections and
/// the health view (served by `/health`), and the exporter's own counts, which move with
/// every export.
fn only_on_prometheus(family: &str) -> bool {
    family.starts_with("host_admin_")
        || family == "host_component_health_status"
        || family == "host_ready"
        || family.starts_with("host_otlp_")
}

/// Values that change from one moment to the next: compared by presence and labels only.
fn moving(family: &str) -> bool {
    family.starts_with("process_")
        || family == "host_uptime_seconds"
        || family == "host_source_connections"
}

/// Every family /metrics shows (less [`only_on_prometheus`]) arrived with the same type,
/// labels and, where the pipeline is settled, values; histograms with the same buckets.
fn assert_same_as_prometheus(prom: &Metrics, otlp: &Points) {
    let mut checked = 0;
    for (family, kind) in &prom.types {
        if only_on_prometheus(family) {
            continue;
        }
        for sample in prom.samples.iter() {
            let labels: BTreeMap<String, String> = sample
                .labels
                .clone()
                .into_iter()
                .filter(|(k, _)| k != "le")
                .collect();
            let (is_count, name) = match sample.name.strip_suffix("_count") {
                Some(base) if kind == "histogram" && base == family => (true, base),
                _ if sample.name == *family => (false, family.as_str()),
                _ => continue,
            };
            if kind == "histogram" && !is_count {
                continue;
            }
            let key = (name.to_owned(), labels.clone());
            let point = otlp
                .get(&key)
                .unwrap_or_else(|| panic!("{name} {labels:?} did not arrive over OTLP"));
            assert_eq!(point.kind, kind.as_str(), "{name}");
            if !moving(family) {
                assert_eq!(point.value, sample.value, "{name} {labels:?}");
            }
            if kind == "histogram" {
                for (le, count) in &point.buckets {
                    let mut with_le: Vec<(&str, &str)> = labels
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    let le_text = format!("{le}");
                    with_le.push(("le", &le_text));
                    let want = prom.value(&format!("{name}_bucket"), &with_le);
                    assert_eq!(*count as f64, want, "{name} {labels:?} le={le}");
                }
            }
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} series compared");
}

fn metrics_arrive(protocol: OtlpProtocol) {
    let receiver = OtlpReceiver::start(protocol);
    let text = pipeline(&receiver.endpoint(), protocol.name(), "300ms", "250ms");
    let mut host = Host::start_with(&text, |c| {
        c.env("TELEMETRY_KEY", "k-123");
    });
    send_json(&host.endpoint, &messages());
    host.wait_settled(N);
    let kept = N - N / 5;

    // An export made after the pipeline settled shows what /metrics shows.
    let settled = |p: &Points| {
        value(p, "host_messages_received_total", &[]) == Some(N as f64)
            && value(p, "host_messages_in_flight", &[]) == Some(0.0)
    };
    let arrived = wait_until(EXPORT_TIMEOUT, || {
        latest(&receiver).is_some_and(|(p, _)| settled(&p))
    });
    assert!(
        arrived,
        "no export with the settled totals:\n{}",
        host.log()
    );
    let prom = host.metrics();
    // The next export, so that it was collected after /metrics was read.
    let seen = receiver.received().metrics.len();
    assert!(wait_until(EXPORT_TIMEOUT, || receiver
        .received()
        .metrics
        .len()
        > seen));
    let (otlp, resource) = latest(&receiver).expect("an export");

    let process = [("stage", "process"), ("operation", "process")];
    let export = [("stage", "export"), ("operation", "process")];
    assert_eq!(
        value(&otlp, "host_messages_completed_total", &[]),
        Some(kept as f64)
    );
    assert_eq!(
        value(&otlp, "host_messages_filtered_total", &[]),
        Some((N / 5) as f64)
    );
    assert_eq!(
        value(&otlp, "host_stage_records_in_total", &process),
        Some(N as f64)
    );
    assert_eq!(
        value(&otlp, "host_stage_records_out_total", &process),
        Some(kept as f64)
    );
    assert_eq!(
        value(&otlp, "host_stage_records_in_total", &export),
        Some(kept as f64)
    );
    let debug = [("stage", "process"), ("type", "debug")];
    assert_eq!(
        value(&otlp, "host_stage_records_by_type_total", &debug),
        Some((N / 5) as f64)
    );
    // A plugin's own metric (message-metrics counts what it measured).
    assert_eq!(
        value(&otlp, "host_plugin_records_total", &[("stage", "measure")]),
        Some(kept as f64)
    );
    assert_same_as_prometheus(&prom, &otlp);

    let key = |name: &str, labels: &[(&str, &str)]| {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        otlp[&(name.to_owned(), labels)].clone()
    };
    for (name, labels, unit) in [
        ("host_stage_call_duration_seconds", &process[..], "s"),
        ("host_stage_calls_total", &process[..], "{call}"),
        ("host_messages_received_total", &[][..], "{message}"),
        ("process_cpu_seconds_total", &[][..], "s"),
        ("process_resident_memory_bytes", &[][..], "By"),
        ("process_open_fds", &[][..], "{file}"),
    ] {
        assert_eq!(key(name, labels).unit, unit, "{name}");
    }
    assert!(key("process_resident_memory_bytes", &[]).value > 1e6);
    assert!(key("process_threads", &[]).value >= 2.0);
    assert!(key("process_open_fds", &[]).value >= 3.0);

    assert_eq!(resource["service.name"], "host");
    assert_eq!(resource["deployment.environment"], "test");
    assert!(!resource["service.instance.id"].is_empty());
    assert!(!resource["service.version"].is_empty());
    assert_eq!(receiver.received().last_headers["x-api-key"], "k-123");
    assert_eq!(prom.value("host_otlp_export_failures_total", &[]), 0.0);
    assert!(prom.value("host_otlp_exports_total", &[]) >= 1.0);

    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (N, kept, N / 5, 0), "{summary:#}");
}

#[test]
fn metrics_arrive_over_grpc_as_on_the_prometheus_page() {
    metrics_arrive(OtlpProtocol::Grpc);
}

#[test]
fn metrics_arrive_over_http_as_on_the_prometheus_page() {
    metrics_arrive(OtlpProtocol::Http);
}

#[test]
fn shutdown_exports_the_final_values_once() {
    let receiver = OtlpReceiver::start(OtlpProtocol::Grpc);
    // No export falls due while the test runs: only the final one.
    let text = pipeline(&receiver.endpoint(), "grpc", "1h", "5s");
    let mut host = Host::start_with(&text, |c| {
        c.env("TELEMETRY_KEY", "k");
    });
    send_json(&host.endpoint, &messages());
    host.wait_settled(N);
    assert_eq!(receiver.received().metrics.len(), 0);
    let summary = host.stop();
    assert_eq!(totals(&summary).0, N);
    let received = receiver.received();
    assert_eq!(received.metrics.len(), 1, "exactly one, final, export");
    let otlp = points(&received.metrics[0]);
    assert_eq!(
        value(&otlp, "host_messages_completed_total", &[]),
        Some((N - N / 5) as f64)
    );
}

#[test]
fn a_receiver_that_is_down_costs_only_counted_failed_exports() {
    // A port nobody listens on until the receiver comes back on it.
    let mut receiver = OtlpReceiver::start(OtlpProtocol::Http);
    receiver.stop();
    let text = pipeline(&receiver.endpoint(), "http", "200ms", "150ms");
    let mut host = Host::start_with(&text, |c| {
        c.env("TELEMETRY_KEY", "k");
    });
    send_json(&host.endpoint, &messages());
    host.wait_settled(N);
    let failing = wait_until(EXPORT_TIMEOUT, || {
        host.metrics().value("host_otlp_export_failures_total", &[]) >= 3.0
    });
    assert!(failing, "failed exports are not counted:\n{}", host.log());
    let prom = host.metrics();
    assert_eq!(
        prom.value("host_messages_completed_total", &[]),
        (N - N / 5) as f64
    );
    assert_eq!(
        prom.value("host_otlp_exports_total", &[]),
        prom.value("host_otlp_export_failures_total", &[])
    );
    // Logged once a minute at most, not once per export (once, unless this machine is so
    // slow that a minute passed since the first failure).
    let failures = prom.value("host_otlp_export_failures_total", &[]);
    let warnings = host
        .log()
        .matches("OTLP telemetry: metrics export failed")
        .count();
    assert!(
        warnings >= 1 && (warnings as f64) < failures,
        "{warnings} warnings for {failures} failures:\n{}",
        host.log()
    );

    // Back on the same port: exports resume, and say so.
    receiver.restart();
    let resumed = wait_until(EXPORT_TIMEOUT, || {
        latest(&receiver)
            .is_some_and(|(p, _)| value(&p, "host_messages_received_total", &[]) == Some(N as f64))
    });
    assert!(
        resumed,
        "no export after the receiver returned:\n{}",
        host.log()
    );
    host.wait_for_log("metrics exports succeed again", EXPORT_TIMEOUT);
    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (N, N - N / 5, N / 5, 0), "{summary:#}");
}
