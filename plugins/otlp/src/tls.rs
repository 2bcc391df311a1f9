//! TLS to `https://` receivers: the system's CA certificates, plus a private CA from
//! `tls.ca_file`, and a client certificate (`tls.cert_file`, `tls.key_file`) for receivers
//! that ask for one. Both protocols use rustls with the ring provider: tonic's `tls-ring` for
//! gRPC, hyper-rustls for OTLP/HTTP.

use std::{fs, path::Path, sync::Arc};

use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// `tls:` in an `otlp` stage's config (only with an `https://` endpoint).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// A PEM file of CA certificates trusted besides the system's.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// A PEM file with the client's certificate (and its chain), for mutual TLS.
    #[serde(default)]
    pub cert_file: Option<std::path::PathBuf>,
    /// A PEM file with the client certificate's private key.
    #[serde(default)]
    pub key_file: Option<std::path::PathBuf>,
}

/// What the files hold, read and checked once.
pub struct Loaded {
    /// The CA file's PEM text and its certificates.
    pub ca: Option<(Vec<u8>, Vec<CertificateDer<'static>>)>,
    /// The client certificate's PEM text and chain, and the key's PEM text and key.
    pub identity: Option<Identity>,
}

pub struct Identity {
    pub cert_pem: Vec<u8>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key_pem: Vec<u8>,
    pub key: PrivateKeyDer<'static>,
}

/// A problem with one key of `tls`: (the key's path in the config, what is wrong).
pub type TlsError = (&'static str, String);

fn read(path: &Path, key: &'static str) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|e| (key, format!("cannot read {}: {e}", path.display())))
}

fn certificates(
    pem: &[u8],
    path: &Path,
    key: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            (
                key,
                format!("{}: not PEM certificates: {e}", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err((key, format!("{}: no certificate in it", path.display())));
    }
    Ok(certs)
}

impl TlsConfig {
    /// Reads and checks the files.
    pub fn load(&self) -> Result<Loaded, TlsError> {
        let ca = match &self.ca_file {
            Some(path) => {
                let pem = read(path, "tls.ca_file")?;
                let certs = certificates(&pem, path, "tls.ca_file")?;
                Some((pem, certs))
            }
            None => None,
        };
        let identity = match (&self.cert_file, &self.key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let cert_pem = read(cert, "tls.cert_file")?;
                let chain = certificates(&cert_pem, cert, "tls.cert_file")?;
                let key_pem = read(key, "tls.key_file")?;
                let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                    (
                        "tls.key_file",
                        format!("{}: no PEM private key: {e}", key.display()),
                    )
                })?;
                Some(Identity {
                    cert_pem,
                    chain,
                    key_pem,
                    key: private,
                })
            }
            (Some(_), None) => return Err(("tls.key_file", "`cert_file` needs `key_file`".into())),
            (None, Some(_)) => {
                return Err(("tls.cert_file", "`key_file` needs `cert_file`".into()))
            }
        };
        Ok(Loaded { ca, identity })
    }
}

impl Loaded {
    /// tonic's TLS settings for a gRPC channel.
    pub fn grpc(&self) -> tonic::transport::ClientTlsConfig {
        let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
        if let Some((pem, _)) = &self.ca {
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
        }
        if let Some(id) = &self.identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                &id.cert_pem,
                &id.key_pem,
            ));
        }
        tls
    }

    /// rustls's settings for OTLP/HTTP. The system's CA certificates are read only for an
    /// `https://` endpoint: the connector of a plain one never uses them.
    pub fn http(&self, https: bool) -> Result<rustls::ClientConfig, String> {
        let mut roots = rustls::RootCertStore::empty();
        if https {
            // A certificate in the system's store that rustls cannot use is skipped.
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
        if let Some((_, certs)) = &self.ca {
            for cert in certs {
                roots
                    .add(cert.clone())
                    .map_err(|e| format!("tls.ca_file: {e}"))?;
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots);
        match &self.identity {
            Some(id) => builder
                .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
                .map_err(|e| format!("tls.cert_file / tls.key_file: {e}")),
            None => Ok(builder.with_no_client_auth()),
        }
    }
}
