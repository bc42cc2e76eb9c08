//! Handshakes against real rustls clients with certificates made here (rcgen): what each
//! listener kind accepts, reloading, refused files, client certificates.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// A CA able to issue server and client certificates.
pub(crate) struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub(crate) pem: String,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let cert = p.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    /// A certificate and its key, in PEM: for 127.0.0.1 and localhost, or a client's.
    pub(crate) fn issue(&self, client: bool) -> (String, String) {
        let names: &[&str] = match client {
            true => &["client.test"],
            false => &["localhost", "127.0.0.1"],
        };
        self.issue_for(names, client)
    }

    /// A certificate for `names` and its key, in PEM.
    pub(crate) fn issue_for(&self, names: &[&str], client: bool) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut p = CertificateParams::new(names).unwrap();
        p.extended_key_usages = vec![match client {
            true => ExtendedKeyUsagePurpose::ClientAuth,
            false => ExtendedKeyUsagePurpose::ServerAuth,
        }];
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn settings(dir: &Path, ca: &Ca) -> TlsConfig {
    let (cert, key) = ca.issue(false);
    TlsConfig {
        cert: Some(write(dir, "server.pem", &cert)),
        key: Some(write(dir, "server.key", &key)),
        ..TlsConfig::default()
    }
}

/// Serves a route answering whether its connection is TLS, on a `role` listener.
async fn serve(tls: &Tls, role: Role) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let incoming = Incoming::new(l, Some(tls), role, "test").unwrap();
    let addr = incoming.local_addr();
    let app = Router::new().route(
        "/",
        get(|ConnectInfo(p): ConnectInfo<Peer>| async move {
            format!("tls={} client_cert={}", p.tls, p.client_cert)
        }),
    );
    tokio::spawn(async move {
        axum::serve(incoming, app.into_make_service_with_connect_info::<Peer>()).await
    });
    addr
}

/// A GET over TLS trusting `ca_pem`, with a client certificate when given; the body, or
/// the error.
async fn get_tls(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    client: Option<&(String, String)>,
) -> Result<String, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(load::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match client {
        None => b.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .map(|c| c.unwrap())
                .collect();
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
    };
    get_with(addr, cfg, "127.0.0.1").await
}

/// A GET over TLS with the client configuration `cfg`, asking for `name`.
async fn get_with(
    addr: std::net::SocketAddr,
    cfg: rustls::ClientConfig,
    name: &str,
) -> Result<String, String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(name.to_string()).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let mut s = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .await
        .map_err(|e| e.to_string())?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    Ok(body)
}

fn failures(tls: &Tls) -> u64 {
    tls.inner
        .metrics
        .handshake_failures
        .get_or_create(&ListenerLabel { listener: "test" })
        .get()
}

#[tokio::test]
async fn a_trusting_client_gets_through_and_a_plaintext_one_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let tls = Tls::load(&settings(dir.path(), &ca)).unwrap().unwrap();
    let addr = serve(&tls, Role::Http).await;
    assert_eq!(
        get_tls(addr, &ca.pem, None).await.unwrap(),
        "tls=true client_cert=false"
    );

    // Plaintext HTTP at a TLS port: no answer, one failure counted.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tcp.read_to_end(&mut buf).await;
    assert!(!String::from_utf8_lossy(&buf).contains("tls="), "{buf:?}");
    assert_eq!(failures(&tls), 1);

    // A client trusting another CA refuses the server.
    let other = Ca::new("other CA");
    let e = get_tls(addr, &other.pem, None).await.unwrap_err();
    assert!(
        e.contains("UnknownIssuer") || e.contains("invalid peer certificate"),
        "{e}"
    );
}

#[tokio::test]
async fn changed_files_are_served_after_a_reload_and_bad_ones_leave_the_old_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let ca1 = Ca::new("first CA");
    let cfg = settings(dir.path(), &ca1);
    let tls = Tls::load(&cfg).unwrap().unwrap();
    let addr = serve(&tls, Role::Http).await;
    assert!(!tls.reload_if_changed().unwrap(), "nothing changed yet");

    // A half-done copy: the new certificate, the old key. Refused; the old one stays.
    let ca2 = Ca::new("second CA");
    let (cert2, key2) = ca2.issue(false);
    write(dir.path(), "server.pem", &cert2);
    let e = tls.reload_if_changed().unwrap_err();
    assert!(matches!(e, TlsError::Mismatch { .. }), "{e}");
    assert!(e.to_string().contains("server.key"), "{e}");
    assert!(get_tls(addr, &ca1.pem, None).await.is_ok());
    assert!(get_tls(addr, &ca2.pem, None).await.is_err());

    // The key arrives: the new certificate is served to new connections.
    write(dir.path(), "server.key", &key2);
    assert!(tls.reload_if_changed().unwrap());
    assert_eq!(
        get_tls(addr, &ca2.pem, None).await.unwrap(),
        "tls=true client_cert=false"
    );
    assert!(get_tls(addr, &ca1.pem, None).await.is_err());

    // Garbage in place of the key: refused, still the second certificate.
    write(dir.path(), "server.key", "not a key\n");
    let e = tls.reload_if_changed().unwrap_err();
    assert!(matches!(e, TlsError::NoPem { .. }), "{e}");
    assert!(get_tls(addr, &ca2.pem, None).await.is_ok());
    let m = &tls.inner.metrics.reloads;
    assert_eq!(m.get_or_create(&ResultLabel { result: "failed" }).get(), 2);
    assert_eq!(m.get_or_create(&ResultLabel { result: "ok" }).get(), 1);
}

#[tokio::test]
async fn intake_asks_for_client_certificates_and_the_api_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, clients) = (Ca::new("server CA"), Ca::new("client CA"));
    let mut cfg = settings(dir.path(), &ca);
    cfg.client_ca = Some(write(dir.path(), "clients.pem", &clients.pem));
    let tls = Tls::load(&cfg).unwrap().unwrap();
    let intake = serve(&tls, Role::HttpIntake).await;
    let api = serve(&tls, Role::Http).await;
    let good = clients.issue(true);
    let stranger = Ca::new("stranger CA").issue(true);

    assert_eq!(
        get_tls(intake, &ca.pem, Some(&good)).await.unwrap(),
        "tls=true client_cert=true"
    );
    // Without a certificate, or with one from another CA: no answer (TLS 1.3 reports
    // the refusal after the client's handshake, so it shows as a failed read or write).
    for c in [None, Some(&stranger)] {
        let r = get_tls(intake, &ca.pem, c).await;
        assert!(r.as_deref().map_or(true, str::is_empty), "{r:?}");
    }
    assert_eq!(failures(&tls), 2);
    assert_eq!(
        get_tls(api, &ca.pem, None).await.unwrap(),
        "tls=true client_cert=false"
    );

    // Optional: clients without one connect; a stranger's is still refused.
    cfg.client_cert = ClientCert::Optional;
    let tls = Tls::load(&cfg).unwrap().unwrap();
    let intake = serve(&tls, Role::HttpIntake).await;
    assert_eq!(
        get_tls(intake, &ca.pem, None).await.unwrap(),
        "tls=true client_cert=false"
    );
    let r = get_tls(intake, &ca.pem, Some(&stranger)).await;
    assert!(r.as_deref().map_or(true, str::is_empty), "{r:?}");
}

#[test]
fn settings_that_say_too_little_or_name_bad_files_are_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let good = settings(dir.path(), &ca);
    assert!(Tls::load(&TlsConfig::default()).unwrap().is_none());
    let cases: Vec<(TlsConfig, &str)> = vec![
        (
            TlsConfig {
                key: None,
                ..good.clone()
            },
            "tls.key is not",
        ),
        (
            TlsConfig {
                cert: None,
                ..good.clone()
            },
            "tls.cert is not",
        ),
        (
            TlsConfig {
                client_ca: good.cert.clone(),
                cert: None,
                key: None,
                ..good.clone()
            },
            "client_ca needs",
        ),
        (
            TlsConfig {
                cert: Some(dir.path().join("missing.pem")),
                ..good.clone()
            },
            "missing.pem",
        ),
        (
            TlsConfig {
                cert: Some(write(dir.path(), "empty.pem", "")),
                ..good.clone()
            },
            "holds no CERTIFICATE",
        ),
        (
            TlsConfig {
                key: good.cert.clone(),
                ..good.clone()
            },
            "holds no PRIVATE KEY",
        ),
        (
            TlsConfig {
                client_ca: Some(write(dir.path(), "ca.txt", "hello")),
                ..good.clone()
            },
            "ca.txt",
        ),
    ];
    for (cfg, want) in cases {
        let e = Tls::load(&cfg).unwrap_err().to_string();
        assert!(e.contains(want), "{e} (wanted {want})");
    }
    let t = Tls::load(&good).unwrap().unwrap();
    let left = t.not_after()
        - std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
    assert!(left > 86_400, "rcgen's certificates last years: {left}");
}

#[tokio::test]
async fn the_own_certificate_client_trusts_what_the_process_serves_and_follows_reloads() {
    // A certificate for a DNS name only (not 127.0.0.1), from a CA no client trusts.
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("private CA");
    let (cert, key) = ca.issue_for(&["faultline.internal"], false);
    let cfg = TlsConfig {
        cert: Some(write(dir.path(), "server.pem", &cert)),
        key: Some(write(dir.path(), "server.key", &key)),
        ..TlsConfig::default()
    };
    let tls = Tls::load(&cfg).unwrap().unwrap();
    let addr = serve(&tls, Role::Http).await;
    let own = tls.self_client_config().unwrap();
    let ok = "tls=true client_cert=false";
    assert_eq!(get_with(addr, own.clone(), "127.0.0.1").await.unwrap(), ok);

    // The general client refuses the private CA; given the CA's file, it checks the name.
    let general = client::client_config(None).unwrap();
    let e = get_with(addr, general, "faultline.internal")
        .await
        .unwrap_err();
    assert!(e.contains("UnknownIssuer"), "{e}");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let with_ca = client::client_config(Some(&ca_file)).unwrap();
    let got = get_with(addr, with_ca.clone(), "faultline.internal").await;
    assert_eq!(got.unwrap(), ok);
    let e = get_with(addr, with_ca, "127.0.0.1").await.unwrap_err();
    assert!(e.contains("not valid for name"), "{e}");

    // Another process's certificate from an untrusted CA is not this process's.
    let other_dir = tempfile::tempdir().unwrap();
    let stranger = Tls::load(&settings(other_dir.path(), &Ca::new("stranger CA")))
        .unwrap()
        .unwrap();
    let other = serve(&stranger, Role::Http).await;
    let e = get_with(other, own.clone(), "127.0.0.1").await.unwrap_err();
    assert!(e.contains("UnknownIssuer"), "{e}");

    // After a reload the new certificate is the one trusted.
    let (cert2, key2) = Ca::new("next CA").issue_for(&["faultline.internal"], false);
    write(dir.path(), "server.pem", &cert2);
    write(dir.path(), "server.key", &key2);
    assert!(tls.reload_if_changed().unwrap());
    assert_eq!(get_with(addr, own, "127.0.0.1").await.unwrap(), ok);
}

#[test]
fn a_client_ca_file_that_cannot_be_used_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-ca.pem");
    let e = client::client_config(Some(&missing))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing-ca.pem"), "{e}");
    let empty = write(dir.path(), "empty-ca.pem", "");
    let e = client::client_config(Some(&empty)).unwrap_err().to_string();
    assert!(
        e.contains("empty-ca.pem") && e.contains("CERTIFICATE"),
        "{e}"
    );
}
