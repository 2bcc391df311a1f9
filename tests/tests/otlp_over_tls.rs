//! The `otlp` exporter to an `https://` receiver, over gRPC and over OTLP/HTTP, with
//! certificates made for the test: a receiver whose certificate a private CA signed is
//! trusted with `tls.ca_file`, and every record arrives; without the CA the handshake fails
//! (the records wait, the stage is unhealthy, naming the certificate problem); a receiver that
//! requires a client certificate gets one from `tls.cert_file` / `tls.key_file`, and refuses
//! a client without one.

use std::{fs, path::Path};

use tests::{
    assert_reconciled, json, send_json, totals, wait_until, Host, OtlpProtocol, OtlpReceiver,
    ServerTls, TestCerts, Value, DELIVERY_TIMEOUT,
};

const N: u64 = 40;

/// An `otlp` stage sending logs to `receiver`, with `tls` (YAML) under its config.
fn pipeline(receiver: &OtlpReceiver, tls: &str) -> String {
    receiver.pipeline(
        &format!(
            "      timeout: 2s
      {tls}
      sending: {{ batch_size: 10, max_delay: 20ms, retry: {{ initial_interval: 50ms, max_interval: 200ms, max_elapsed: 0s }} }}
"
        ),
        "monitoring:
  admin: { listen: \"127.0.0.1:0\" }
  health: { interval: 200ms }
",
    )
}

fn messages() -> Vec<Value> {
    (0..N)
        .map(|i| json!({ "i": i, "msg": format!("m{i}") }))
        .collect()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn log_records(receiver: &OtlpReceiver) -> u64 {
    receiver.received().log_records().len() as u64
}

/// The receiver's side of `certs`, requiring a client certificate signed by the test CA or
/// not.
fn server_tls(certs: &TestCerts, require_client_cert: bool) -> ServerTls {
    ServerTls {
        cert_pem: certs.server_cert_pem.clone(),
        key_pem: certs.server_key_pem.clone(),
        client_ca_pem: require_client_cert.then(|| certs.ca_pem.clone()),
    }
}

/// Sends N messages and checks they all arrive, and the host's totals.
fn all_arrive(receiver: &OtlpReceiver, mut host: Host) {
    send_json(&host.endpoint, &messages());
    assert!(
        wait_until(DELIVERY_TIMEOUT, || log_records(receiver) >= N),
        "{} of {N} log records arrived; the host's log:\n{}",
        log_records(receiver),
        host.log()
    );
    host.wait_settled(N);
    let summary = host.stop();
    assert_reconciled(&summary);
    assert_eq!(totals(&summary), (N, N, 0, 0), "{summary:#}");
    assert_eq!(log_records(receiver), N);
}

fn a_private_ca_is_trusted_from_ca_file(protocol: OtlpProtocol) {
    let certs = TestCerts::new();
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", &certs.ca_pem);
    let receiver = OtlpReceiver::start_tls(protocol, server_tls(&certs, false));
    assert!(receiver.endpoint().starts_with("https://"));
    let host = Host::start(&pipeline(
        &receiver,
        &format!("tls: {{ ca_file: \"{ca}\" }}"),
    ));
    all_arrive(&receiver, host);
}

#[test]
fn a_private_ca_is_trusted_from_ca_file_over_grpc() {
    a_private_ca_is_trusted_from_ca_file(OtlpProtocol::Grpc);
}

#[test]
fn a_private_ca_is_trusted_from_ca_file_over_http() {
    a_private_ca_is_trusted_from_ca_file(OtlpProtocol::Http);
}

fn an_untrusted_certificate_sends_nothing_and_says_why(protocol: OtlpProtocol) {
    let certs = TestCerts::new();
    let receiver = OtlpReceiver::start_tls(protocol, server_tls(&certs, false));
    // No `tls:` block: the system's CAs only, which never signed the test's certificate.
    let host = Host::start(&pipeline(&receiver, ""));
    send_json(&host.endpoint, &messages());
    let ready = host.wait_for_answer(
        "/health/ready",
        DELIVERY_TIMEOUT,
        "the stage unhealthy",
        |r| r.status == 503,
    );
    let text = ready.body.to_lowercase();
    assert!(text.contains("certificate"), "{}", ready.body);
    assert_eq!(
        log_records(&receiver),
        0,
        "sent to a receiver it cannot trust"
    );
    let api = host.get_json("/api/metrics");
    assert_eq!(api["pipeline"]["completed"], 0, "{api:#}");
    assert_eq!(api["pipeline"]["failed"], 0, "{api:#}");
}

#[test]
fn an_untrusted_certificate_sends_nothing_and_says_why_over_grpc() {
    an_untrusted_certificate_sends_nothing_and_says_why(OtlpProtocol::Grpc);
}

#[test]
fn an_untrusted_certificate_sends_nothing_and_says_why_over_http() {
    an_untrusted_certificate_sends_nothing_and_says_why(OtlpProtocol::Http);
}

fn a_client_certificate_is_presented_when_required(protocol: OtlpProtocol) {
    let certs = TestCerts::new();
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", &certs.ca_pem);
    let cert = write(dir.path(), "client.pem", &certs.client_cert_pem);
    let key = write(dir.path(), "client.key", &certs.client_key_pem);
    let tls = server_tls(&certs, true);

    // Without a client certificate: refused, nothing arrives.
    let receiver = OtlpReceiver::start_tls(protocol, tls.clone());
    let host = Host::start(&pipeline(
        &receiver,
        &format!("tls: {{ ca_file: \"{ca}\" }}"),
    ));
    send_json(&host.endpoint, &messages());
    host.wait_for_answer(
        "/health/ready",
        DELIVERY_TIMEOUT,
        "the stage unhealthy",
        |r| r.status == 503,
    );
    assert_eq!(log_records(&receiver), 0);
    drop(host);

    // With one: everything arrives.
    let receiver = OtlpReceiver::start_tls(protocol, tls);
    let host = Host::start(&pipeline(
        &receiver,
        &format!("tls: {{ ca_file: \"{ca}\", cert_file: \"{cert}\", key_file: \"{key}\" }}"),
    ));
    all_arrive(&receiver, host);
}

#[test]
fn a_client_certificate_is_presented_when_required_over_grpc() {
    a_client_certificate_is_presented_when_required(OtlpProtocol::Grpc);
}

#[test]
fn a_client_certificate_is_presented_when_required_over_http() {
    a_client_certificate_is_presented_when_required(OtlpProtocol::Http);
}
