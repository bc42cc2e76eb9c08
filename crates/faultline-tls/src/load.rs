//! Reading the PEM files and building the rustls server configurations from them (ring
//! as the crypto provider, TLS 1.2 and 1.3 with rustls' safe defaults).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

use crate::{ClientCert, Loaded, TlsError};

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.into(),
        source,
    })
}

pub(crate) fn certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            what,
            path: path.into(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoPem {
            what,
            label: "CERTIFICATE",
            path: path.into(),
        });
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read("key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPem {
            what: "key",
            label: "PRIVATE KEY",
            path: path.into(),
        },
        e => TlsError::Invalid {
            what: "key",
            path: path.into(),
            detail: e.to_string(),
        },
    })
}

/// The certificate's expiry, seconds since the Unix epoch.
fn not_after(cert: &CertificateDer<'_>, path: &Path) -> Result<i64, TlsError> {
    let (_, c) = x509_parser::parse_x509_certificate(cert).map_err(|e| TlsError::Invalid {
        what: "certificate",
        path: path.into(),
        detail: format!("not an X.509 certificate: {e}"),
    })?;
    Ok(c.validity().not_after.timestamp())
}

/// Loads the files and builds a configuration for each kind of listener.
pub(crate) fn load(
    cert_path: &Path,
    key_path: &Path,
    client_ca: Option<&Path>,
    client_cert: ClientCert,
) -> Result<Loaded, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs("certificate", cert_path)?;
    let not_after = not_after(&chain[0], cert_path)?;
    let leaf = chain[0].clone();
    let key = key(key_path)?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Invalid {
            what: "key",
            path: key_path.into(),
            detail: e.to_string(),
        })?;
    let certified = Arc::new(CertifiedKey::new(chain, signing));
    certified.keys_match().map_err(|e| TlsError::Mismatch {
        cert: cert_path.into(),
        key: key_path.into(),
        detail: e.to_string(),
    })?;
    let verifier = match client_ca {
        None => None,
        Some(p) => {
            let mut roots = RootCertStore::empty();
            for c in certs("client CA", p)? {
                roots.add(c).map_err(|e| TlsError::Invalid {
                    what: "client CA",
                    path: p.into(),
                    detail: e.to_string(),
                })?;
            }
            let b = WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone());
            let b = match client_cert {
                ClientCert::Required => b,
                ClientCert::Optional => b.allow_unauthenticated(),
            };
            Some(b.build().map_err(|e| TlsError::Invalid {
                what: "client CA",
                path: p.into(),
                detail: e.to_string(),
            })?)
        }
    };
    let build = |alpn: &[u8], intake: bool| -> Result<Arc<ServerConfig>, TlsError> {
        let b = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Settings(e.to_string()))?;
        let b = match (&verifier, intake) {
            (Some(v), true) => b.with_client_cert_verifier(v.clone()),
            _ => b.with_no_client_auth(),
        };
        let resolver = Arc::new(rustls::sign::SingleCertAndKey::from(certified.clone()));
        let mut c = b.with_cert_resolver(resolver);
        c.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(c))
    };
    Ok(Loaded {
        grpc_intake: build(b"h2", true)?,
        http_intake: build(b"http/1.1", true)?,
        http: build(b"http/1.1", false)?,
        leaf,
        not_after,
    })
}

/// The provider, for the tests' clients.
#[cfg(test)]
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
