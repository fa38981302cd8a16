//! The server configuration of a TLS listener, built from PEM files: the
//! certificate chain, its key and the client CA; [`TlsError`] names the file
//! at fault. Built once and shared by every shard.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{InconsistentKeys, RootCertStore, ServerConfig};

/// Why a TLS server configuration could not be built. Every variant names the
/// file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file is missing or cannot be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        /// Which file: "certificate file", "key file" or "client CA file".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error from the operating system.
        #[source]
        source: io::Error,
    },
    /// A file's PEM is malformed (a section without its end, bad base64).
    #[error("{what} {}: malformed PEM: {detail}", path.display())]
    Pem {
        /// Which file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        detail: String,
    },
    /// The certificate file holds no `CERTIFICATE` PEM block.
    #[error("certificate file {}: no certificate in it (expected a PEM `BEGIN CERTIFICATE` block)", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The certificate file's first certificate is not a usable X.509
    /// certificate.
    #[error("certificate file {}: invalid certificate: {reason}", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// The key file holds no unencrypted private key.
    #[error(
        "key file {}: no private key in it (expected an unencrypted PKCS#8 `PRIVATE KEY`, \
         PKCS#1 `RSA PRIVATE KEY` or SEC1 `EC PRIVATE KEY` PEM block)",
        path.display()
    )]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// The key file's private key is invalid or of an unsupported kind.
    #[error("key file {}: unusable private key: {reason}", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// The private key is not the key of the certificate's public key.
    #[error(
        "key file {} does not match the certificate in {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The client CA file holds no certificate, or one that cannot be a
    /// trust anchor.
    #[error("client CA file {}: {reason}", path.display())]
    BadClientCa {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Client certificates are required but there is no CA to verify them.
    #[error("client certificates are required, but no client CA file is set")]
    ClientCaRequired,
    /// rustls refused the configuration for another reason.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Builds the server configuration of a TLS listener: TLS 1.2 and 1.3, the
/// certificate chain of `cert_file` (end-entity certificate first) and the
/// private key of `key_file` (PKCS#8, PKCS#1 RSA or SEC1 EC, PEM).
///
/// With `client_ca_file`, client certificates are verified against the CA
/// certificates in it; a client may still connect without one unless
/// `require_client_cert`. Requiring client certificates without a CA file is
/// an error.
///
/// Build it once and share the `Arc` with every shard: TLS session
/// resumption works across shards only if they share the session cache.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    client_ca_file: Option<&Path>,
    require_client_cert: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let certs = read_certs("certificate file", cert_file)?;
    let Some(end_entity) = certs.first() else {
        return Err(TlsError::NoCertificate {
            path: cert_file.to_owned(),
        });
    };
    let end_entity = end_entity.clone();
    let key = read_key(key_file)?;
    let certified = certified_key(&provider, certs, key, cert_file, key_file)?;
    // A certificate that webpki cannot parse fails here, not at the first
    // handshake.
    rustls::server::ParsedCertificate::try_from(&end_entity).map_err(|e| {
        TlsError::BadCertificate {
            path: cert_file.to_owned(),
            reason: reason(&e),
        }
    })?;

    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_ca_file {
        None if require_client_cert => return Err(TlsError::ClientCaRequired),
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let bad = |reason: String| TlsError::BadClientCa {
                path: ca_file.to_owned(),
                reason,
            };
            let cas = read_certs("client CA file", ca_file)?;
            if cas.is_empty() {
                return Err(bad(
                    "no certificate in it (expected PEM `BEGIN CERTIFICATE` blocks)".into(),
                ));
            }
            let mut roots = RootCertStore::empty();
            for (i, ca) in cas.into_iter().enumerate() {
                roots
                    .add(ca)
                    .map_err(|e| bad(format!("certificate #{}: {}", i + 1, reason(&e))))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = if require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier.build().map_err(|e| bad(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    Ok(Arc::new(config))
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Every `CERTIFICATE` block of a PEM file, in order (other blocks skipped).
fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(what, path)?;
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_owned(),
            detail: e.to_string(),
        })
}

/// The first private key block of a PEM file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file("key file", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_owned(),
        },
        e => TlsError::Pem {
            what: "key file",
            path: path.to_owned(),
            detail: e.to_string(),
        },
    })
}

/// The certificate chain with its signing key, checked to belong together.
fn certified_key(
    provider: &CryptoProvider,
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_file: &Path,
    key_file: &Path,
) -> Result<CertifiedKey, TlsError> {
    let signing_key =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::BadKey {
                path: key_file.to_owned(),
                reason: reason(&e),
            })?;
    let certified = CertifiedKey::new(certs, signing_key);
    match certified.keys_match() {
        // A key that cannot tell its public key is checked at the handshake.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch {
                cert: cert_file.to_owned(),
                key: key_file.to_owned(),
            })
        }
        Err(e) => Err(TlsError::BadCertificate {
            path: cert_file.to_owned(),
            reason: reason(&e),
        }),
    }
}

/// What rustls says about a certificate or a key, in the words of a file
/// (its own are those of a peer's certificate).
fn reason(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding) => {
            "not a DER-encoded X.509 certificate".to_string()
        }
        rustls::Error::InvalidCertificate(e) => e.to_string(),
        rustls::Error::General(message) => message.clone(),
        e => e.to_string(),
    }
}
