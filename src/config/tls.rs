//! TLS and credentials for the gRPC control plane: a listener's
//! certificate and, for mutual TLS, the CA its clients' certificates must
//! chain to; a client's CA and certificate; and scoped credentials (a
//! token or a client certificate name, each allowed some of `report`,
//! `ring` and `admin`).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// TLS on a gRPC listener (`[authority.tls]`, `[farm.tls]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// PEM certificate chain, the server's own first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA certificates: when set, every client must present a
    /// certificate that chains to one of them (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// TLS for a gRPC client (`[monitor.client_tls]`, ...): used for every
/// `https://` URL.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    /// PEM CA certificates the server's certificate must chain to.
    pub ca: Option<PathBuf>,
    /// This client's certificate and key, for servers that ask for one.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name the server's certificate must carry, when it is not the
    /// URL's host (an address, say).
    pub server_name: Option<String>,
}

/// What a credential may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Status reports (`vnamed.v1.Status`).
    Report,
    /// The ring registry (`vnamed.v1.Ring`).
    Ring,
    /// Administration (`vnamed.v1.Admin`).
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Report, Scope::Ring, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Report => "report",
            Scope::Ring => "ring",
            Scope::Admin => "admin",
        }
    }
}

/// One credential: a bearer token or a client certificate name (its
/// subject CN or a DNS SAN), and what it may call.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub token: Option<String>,
    pub client: Option<String>,
    pub scopes: Vec<Scope>,
}

/// Checks a listener's security, collecting problems: one that is not on
/// loopback needs mutual TLS or a token unless `insecure` says otherwise.
pub fn check_listener(at: &str, addr: SocketAddr, tls: Option<&ServerTls>, has_token: bool, insecure: bool, problems: &mut Vec<String>) {
    let mutual = tls.is_some_and(|t| t.client_ca.is_some());
    if !addr.ip().is_loopback() && !mutual && !has_token && !insecure {
        problems.push(format!(
            "{at} {addr} is not on loopback and has neither mutual TLS (tls.client_ca) nor a token: anyone who reaches it could change answers; configure one, or set insecure = true to accept that"
        ));
    }
}

/// Checks credentials, collecting problems.
pub fn check_credentials(at: &str, credentials: &[Credential], problems: &mut Vec<String>) {
    for (i, c) in credentials.iter().enumerate() {
        match (&c.token, &c.client) {
            (Some(_), Some(_)) | (None, None) => problems.push(format!("{at}[{i}]: give exactly one of token and client")),
            (Some(t), None) if t.len() < 16 => problems.push(format!("{at}[{i}]: a token must be at least 16 characters")),
            (Some(t), None) if !t.bytes().all(|b| b.is_ascii_graphic()) => {
                problems.push(format!("{at}[{i}]: a token is printable ASCII without spaces"))
            }
            _ => {}
        }
        if c.scopes.is_empty() {
            problems.push(format!("{at}[{i}]: scopes must name at least one of report, ring, admin"));
        }
    }
}
