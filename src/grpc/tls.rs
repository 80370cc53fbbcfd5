//! TLS for the gRPC control plane, on rustls. A listener's certificate,
//! key and client CA are read from files and read again whenever one of
//! them changes, without a restart: a connection is accepted with the
//! material current when it arrives, and material that does not load is
//! refused with a warning while the last good one stays. A client's CA
//! and certificate are read once, into tonic's client TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::{ClientTls, ServerTls};

/// Why TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {why}", .path.display())]
    File { path: PathBuf, why: String },
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("cannot watch {}: {why}", .dir.display())]
    Watch { dir: PathBuf, why: String },
    #[error("client TLS: {0}")]
    Client(String),
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |why: String| TlsError::File { path: path.to_owned(), why };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File { path: path.to_owned(), why: e.to_string() })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A listener's TLS configuration from its files.
pub fn server_config(t: &ServerTls) -> Result<rustls::ServerConfig, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match &t.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c).map_err(|e| TlsError::File { path: ca.clone(), why: e.to_string() })?;
            }
            builder.with_client_cert_verifier(WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build()?)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs(&t.cert)?, key(&t.key)?)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A listener's TLS, kept current with its files.
pub struct Reloading {
    current: Arc<ArcSwap<rustls::ServerConfig>>,
    _watchers: Vec<notify::RecommendedWatcher>,
}

impl Reloading {
    /// Loads the material (an error stops the start) and follows its files.
    pub fn start(t: &ServerTls) -> Result<Self, TlsError> {
        let current = Arc::new(ArcSwap::from_pointee(server_config(t)?));
        let files: Vec<PathBuf> = [Some(&t.cert), Some(&t.key), t.client_ca.as_ref()].into_iter().flatten().cloned().collect();
        let mut dirs: Vec<PathBuf> =
            files.iter().map(|f| f.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_owned()).collect();
        dirs.sort();
        dirs.dedup();
        let (tx, mut rx) = mpsc::channel(16);
        let mut watchers = Vec::new();
        for dir in dirs {
            let names: Vec<_> = files.iter().filter_map(|f| f.file_name().map(|n| n.to_owned())).collect();
            let w =
                crate::sys::watch::watch_matching(&dir, move |p| p.file_name().is_some_and(|n| names.iter().any(|m| m == n)), tx.clone())
                    .map_err(|e| TlsError::Watch { dir: dir.clone(), why: e.to_string() })?;
            watchers.push(w);
        }
        crate::sys::service::reload_on_hangup("TLS material", t.cert.clone(), tx.clone());
        let (swap, files) = (current.clone(), t.clone());
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                // A certificate and its key are often replaced one after
                // the other: take the pair once both have settled.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                while rx.try_recv().is_ok() {}
                match server_config(&files) {
                    Ok(c) => {
                        swap.store(Arc::new(c));
                        info!(cert = %files.cert.display(), "TLS material reloaded");
                    }
                    Err(error) => warn!(%error, "TLS material changed but does not load; still using the last good one"),
                }
            }
        });
        Ok(Self { current, _watchers: watchers })
    }

    /// The material to accept a connection with now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }
}

/// The names a client certificate stands for: its subject CN and DNS SANs.
pub fn client_names(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else { return Vec::new() };
    let mut names: Vec<String> = parsed.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_owned).collect();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push((*d).to_owned());
            }
        }
    }
    names
}

/// tonic's client TLS from a client's files (for `https://` URLs).
pub fn client_config(t: &ClientTls) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
    let read = |p: &PathBuf| {
        crate::files::read_bytes(p, crate::files::SMALL_FILE, crate::files::Links::Follow)
            .map_err(|e| TlsError::File { path: p.clone(), why: e.to_string() })
    };
    let mut c = tonic::transport::ClientTlsConfig::new();
    if let Some(name) = &t.server_name {
        c = c.domain_name(name.clone());
    }
    if let Some(ca) = &t.ca {
        c = c.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
    }
    match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => c = c.identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?)),
        (None, None) => {}
        _ => return Err(TlsError::Client("cert and key go together".into())),
    }
    Ok(c)
}

/// An endpoint for `url`, with `tls` when it is `https://`.
pub fn endpoint(url: &str, tls: &ClientTls) -> Result<tonic::transport::Endpoint, TlsError> {
    let e = tonic::transport::Endpoint::from_shared(url.to_owned()).map_err(|e| TlsError::Client(format!("{url}: {e}")))?;
    if url.starts_with("https://") { e.tls_config(client_config(tls)?).map_err(|e| TlsError::Client(e.to_string())) } else { Ok(e) }
}
