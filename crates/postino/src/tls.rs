//! TLS for the listeners: the server's certificate chain and key from PEM files, and, when
//! asked for, client certificates verified against the CA file (`docs/configuration.md`,
//! `[tls]`). The crypto provider is rustls's `ring` (see [`acceptors`]).

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsSection;

/// Whether clients present certificates (RabbitMQ's `verify` and `fail_if_no_peer_cert`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// No client certificate is asked for.
    None,
    /// A client may present one; a presented certificate must verify.
    Optional,
    /// A client must present a certificate that verifies.
    Required,
}

impl std::str::FromStr for Verify {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "none" => Ok(Self::None),
            "optional" => Ok(Self::Optional),
            "required" => Ok(Self::Required),
            other => Err(format!("{other:?} is not none, optional or required")),
        }
    }
}

/// The acceptors of the TLS listeners: AMQP's, the management API's (which offers
/// `http/1.1` by ALPN) and the gRPC API's (`h2`).
#[derive(Clone)]
pub struct Acceptors {
    pub amqp: TlsAcceptor,
    pub http: TlsAcceptor,
    pub grpc: TlsAcceptor,
}

impl std::fmt::Debug for Acceptors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Acceptors")
    }
}

/// A failure, with the `tls.` key it concerns.
type Failure = (&'static str, String);

fn certificates(path: &Path, key: &'static str) -> Result<Vec<CertificateDer<'static>>, Failure> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|error| (key, format!("{}: {error}", path.display())))?;
    if certificates.is_empty() {
        return Err((key, format!("{} holds no PEM certificate", path.display())));
    }
    Ok(certificates)
}

/// Builds the acceptors from `[tls]`.
///
/// # Errors
/// A file that does not read or parse, a key that does not match the certificate, a CA file
/// without certificates.
pub fn acceptors(section: &TlsSection, verify: Verify) -> Result<Acceptors, Failure> {
    // ring, not aws-lc-rs: it builds in seconds where aws-lc's C takes minutes per build
    // here. rustls 0.23.48 deprecates it for lacking the post-quantum key exchange
    // (X25519MLKEM768); X25519 and the P-curves remain.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(Path::new(&section.cert_file), "tls.cert_file")?;
    let key = PrivateKeyDer::from_pem_file(&section.key_file)
        .map_err(|error| ("tls.key_file", format!("{}: {error}", section.key_file)))?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| ("tls.cert_file", error.to_string()))?;
    let builder = if verify == Verify::None {
        builder.with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for certificate in certificates(Path::new(&section.ca_file), "tls.ca_file")? {
            roots
                .add(certificate)
                .map_err(|error| ("tls.ca_file", format!("{}: {error}", section.ca_file)))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let verifier = if verify == Verify::Optional {
            verifier.allow_unauthenticated()
        } else {
            verifier
        };
        let verifier = verifier
            .build()
            .map_err(|error| ("tls.ca_file", error.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    };
    let amqp = builder.with_single_cert(chain, key).map_err(|error| {
        (
            "tls.key_file",
            format!("does not fit tls.cert_file: {error}"),
        )
    })?;
    let mut http = amqp.clone();
    http.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut grpc = amqp.clone();
    grpc.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Acceptors {
        amqp: TlsAcceptor::from(Arc::new(amqp)),
        http: TlsAcceptor::from(Arc::new(http)),
        grpc: TlsAcceptor::from(Arc::new(grpc)),
    })
}
