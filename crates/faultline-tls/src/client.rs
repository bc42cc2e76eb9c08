//! TLS for faultline's own HTTP clients: the terminal commands that call a running
//! faultline (`query`, `assert`, `rules`, `dlq`, `experiment run`) and the scheduled
//! experiments that call this very process.
//!
//! [`client_config`] trusts the Mozilla root store (webpki-roots, the same the probes and
//! notifications use) plus the CAs of a PEM file (`FAULTLINE_CA_FILE` for the commands,
//! for a private CA or a self-signed certificate), and checks the server's name as usual.
//! [`Tls::self_client_config`] is for calls a process makes to its own listeners (and,
//! rarely, to others): it trusts the certificate the process serves at that moment
//! whatever names it carries (a certificate for a DNS name that does not cover 127.0.0.1
//! still works, and after a reload the new one), and otherwise what [`client_config`]
//! trusts, with the usual name check.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::{Tls, TlsError};

/// rustls' client configuration, which reqwest takes as it is.
pub use rustls::ClientConfig;

/// The environment variable naming extra CAs (PEM) the terminal commands trust.
pub const CA_FILE_ENV: &str = "FAULTLINE_CA_FILE";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration trusting the Mozilla roots and the CAs in `ca_file`.
pub fn client_config(ca_file: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let mut c = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Settings(e.to_string()))?
        .with_root_certificates(roots(ca_file)?)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}

fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(p) = ca_file {
        for c in crate::load::certs("CA", p)? {
            roots.add(c).map_err(|e| TlsError::Invalid {
                what: "CA",
                path: p.into(),
                detail: e.to_string(),
            })?;
        }
    }
    Ok(roots)
}

/// Makes ring the process's default rustls provider (later calls do nothing). reqwest
/// builds a client's TLS from the default provider unless it is given a configuration,
/// so a program that makes plain reqwest clients calls this first.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// [`client_config`] with the CAs of `FAULTLINE_CA_FILE`, when it is set.
pub fn from_env() -> Result<ClientConfig, TlsError> {
    let file = std::env::var_os(CA_FILE_ENV).filter(|v| !v.is_empty());
    client_config(file.as_deref().map(Path::new))
}

impl Tls {
    /// A client configuration that trusts the certificate this process serves now, and
    /// otherwise the Mozilla roots and `FAULTLINE_CA_FILE`'s CAs.
    pub fn self_client_config(&self) -> Result<ClientConfig, TlsError> {
        let provider = provider();
        let file = std::env::var_os(CA_FILE_ENV).filter(|v| !v.is_empty());
        let roots = roots(file.as_deref().map(Path::new))?;
        let others = WebPkiServerVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()
            .map_err(|e| TlsError::Settings(e.to_string()))?;
        let verifier = Arc::new(OwnCertificate {
            tls: self.clone(),
            others,
        });
        let mut c = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Settings(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(c)
    }

    fn leaf(&self) -> CertificateDer<'static> {
        let l = self.inner.current.read();
        l.unwrap_or_else(|p| p.into_inner()).leaf.clone()
    }
}

/// Accepts the certificate the process serves (the handshake's signatures are still
/// checked, so only the holder of its key passes), and what `others` accepts.
#[derive(Debug)]
struct OwnCertificate {
    tls: Tls,
    others: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for OwnCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.tls.leaf().as_ref() {
            return Ok(ServerCertVerified::assertion());
        }
        self.others
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.others.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.others.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.others.supported_verify_schemes()
    }
}
