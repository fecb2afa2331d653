//! The enrollment endpoint (docs/security.md): `p2psip ca serve` answers
//! `POST /enroll` over HTTPS with a certificate of the overlay CA, for a user whose password
//! it knows; `p2psip enroll` is its client. The request is JSON
//! `{"user": ..., "password": ..., "public_key": <64 hex digits>}`, the answer
//! `{"certificate": <PEM>, "node_id": ..., "serial": ..., "not_after": ...}` or
//! `{"error": ...}` with status 400 (bad request), 401 (unknown user or wrong password) or
//! 500. The endpoint's own TLS certificate is issued by the CA at start, so a client that
//! holds `ca.pem` (which it needs anyway) verifies it.
//!
//! Passwords are kept as `user salt sha256(salt || password)` lines in `<ca dir>/users.txt`
//! (`p2psip ca add-user`).

use crate::ca::CaError;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::Rng;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why enrolling, or serving enrollment, failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// An argument that cannot be used (user name, password, URL).
    #[error("{0}")]
    Usage(String),
    #[error("reading {path} (`p2psip ca add-user`): {error}")]
    NoUsers { path: String, error: std::io::Error },
    #[error("{path}:{line}: {why}")]
    UsersFile {
        path: String,
        line: usize,
        why: &'static str,
    },
    #[error("writing the users file: {0}")]
    WriteUsers(#[from] crate::security::private_files::PrivateFileError),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    CertFile(#[from] crate::security::trust::CertFileError),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// A socket of the endpoint or of the client: what it was for, and the error.
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    #[error("HTTP: {0}")]
    Http(String),
    #[error("enrollment refused ({status}): {why}")]
    Refused { status: StatusCode, why: String },
}

fn usage(why: impl Into<String>) -> EnrollError {
    EnrollError::Usage(why.into())
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EnrollError {
    let what = what.into();
    move |error| EnrollError::Io { what, error }
}

fn http(e: impl std::fmt::Display) -> EnrollError {
    EnrollError::Http(e.to_string())
}

/// Largest request body accepted.
const MAX_BODY: usize = 16 * 1024;

fn users_file(dir: &Path) -> PathBuf {
    dir.join("users.txt")
}

fn hash(salt: &[u8], password: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    hex::encode(h.finalize())
}

/// Adds (or replaces) a user allowed to enroll, with its password.
pub fn add_user(dir: &Path, user: &str, password: &str) -> Result<PathBuf, EnrollError> {
    if user.is_empty() || user.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(usage("a user name is required (printable, no spaces)"));
    }
    if password.len() < 8 {
        return Err(usage("a password of at least 8 characters is required"));
    }
    let path = users_file(dir);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| l.split_whitespace().next() != Some(user))
        .map(str::to_string)
        .collect();
    let salt: [u8; 16] = rand::rng().random();
    lines.push(format!(
        "{user} {} {}",
        hex::encode(salt),
        hash(&salt, password)
    ));
    crate::security::private_files::replace(&path, (lines.join("\n") + "\n").as_bytes())?;
    Ok(path)
}

/// The users file: user → (salt, hash).
fn read_users(dir: &Path) -> Result<HashMap<String, (Vec<u8>, String)>, EnrollError> {
    let path = users_file(dir);
    let text = std::fs::read_to_string(&path).map_err(|error| EnrollError::NoUsers {
        path: path.display().to_string(),
        error,
    })?;
    let bad_line = |line: usize, why| EnrollError::UsersFile {
        path: path.display().to_string(),
        line,
        why,
    };
    let mut m = HashMap::new();
    for (n, l) in text.lines().enumerate() {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.as_slice() {
            [] => {}
            [u, salt, h] => {
                let salt = hex::decode(salt).map_err(|_| bad_line(n + 1, "bad salt"))?;
                m.insert(u.to_string(), (salt, h.to_string()));
            }
            _ => return Err(bad_line(n + 1, "expected `user salt hash`")),
        }
    }
    Ok(m)
}

/// Compares in time independent of where the strings differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The endpoint's TLS certificate, issued by the CA for `name` (a DNS name or an IP).
fn server_credentials(
    dir: &Path,
    name: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), EnrollError> {
    let (issuer, _) = crate::ca::ca_issuer(dir)?;
    let seed = crate::identity::generate_seed();
    let key = crate::identity::key_pair(&seed).map_err(CaError::from)?;
    let certificate = |what: &'static str| {
        move |e: rcgen::Error| {
            EnrollError::Ca(CaError::Certificate {
                what,
                why: e.to_string(),
            })
        }
    };
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(certificate("server certificate"))?;
    p.subject_alt_names = vec![match name.parse::<std::net::IpAddr>() {
        Ok(ip) => rcgen::SanType::IpAddress(ip),
        Err(_) => rcgen::SanType::DnsName(
            rcgen::string::Ia5String::try_from(name.to_string())
                .map_err(|e| usage(format!("--name {name:?}: {e}")))?,
        ),
    }];
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let now = ::time::OffsetDateTime::now_utc();
    p.not_before = now - ::time::Duration::hours(1);
    p.not_after = now + ::time::Duration::days(30);
    let cert = p
        .signed_by(&key, &issuer)
        .map_err(certificate("server certificate"))?;
    Ok((vec![cert.der().clone()], crate::identity::key_der(&seed)))
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// What the endpoint needs to answer.
struct Ctx {
    dir: PathBuf,
    days: u32,
}

async fn handle(
    ctx: Arc<Ctx>,
    peer: SocketAddr,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let bad = |s: StatusCode, why: &str| Ok(reply(s, json!({ "error": why })));
    if req.uri().path() != "/enroll" {
        return bad(StatusCode::NOT_FOUND, "POST /enroll is the only resource");
    }
    if req.method() != Method::POST {
        return bad(StatusCode::METHOD_NOT_ALLOWED, "use POST");
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return bad(StatusCode::PAYLOAD_TOO_LARGE, "request too large"),
    };
    let v: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad(StatusCode::BAD_REQUEST, &format!("not JSON: {e}")),
    };
    let field = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let (user, password, pk) = (field("user"), field("password"), field("public_key"));
    let Some(key) = crate::ca::parse_public_key(&pk) else {
        return bad(
            StatusCode::BAD_REQUEST,
            "public_key: 64 hex digits (an Ed25519 key)",
        );
    };
    // Read for every request: users added while the endpoint runs can enroll at once.
    let users = match read_users(&ctx.dir) {
        Ok(u) => u,
        Err(e) => {
            tracing::error!("enrollment: {e}");
            return bad(StatusCode::INTERNAL_SERVER_ERROR, "no user database");
        }
    };
    let ok = users
        .get(&user)
        .is_some_and(|(salt, h)| same(&hash(salt, &password), h));
    if !ok {
        crate::remote_log!(warn, "enrollment_refused", %peer, user = %user, "enrollment refused: unknown user or wrong password");
        return bad(StatusCode::UNAUTHORIZED, "unknown user or wrong password");
    }
    match crate::ca::ca_issue(&ctx.dir, &user, &key, None, ctx.days, 0) {
        Ok(i) => {
            tracing::info!(%peer, user = %user, node_id = %format!("{:#}", i.node_id), serial = %i.serial, "enrolled");
            Ok(reply(
                StatusCode::OK,
                json!({
                    "certificate": i.pem,
                    "node_id": format!("{:#}", i.node_id),
                    "serial": i.serial,
                    "not_after": i.not_after,
                }),
            ))
        }
        Err(e) => {
            tracing::error!("enrollment of {user}: {e}");
            bad(StatusCode::INTERNAL_SERVER_ERROR, "could not issue")
        }
    }
}

/// Serves the enrollment endpoint on `listen` until the task is dropped; `bound` gets the
/// address it listens on.
pub async fn serve(
    dir: PathBuf,
    listen: SocketAddr,
    name: &str,
    days: u32,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), EnrollError> {
    read_users(&dir)?;
    let (certs, key) = server_credentials(&dir, name)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(io(format!("listening on {listen}")))?;
    let addr = listener
        .local_addr()
        .map_err(io(format!("listening on {listen}")))?;
    tracing::info!("enrollment endpoint on https://{addr}/enroll (certificate for {name})");
    if let Some(b) = bound {
        let _ = b.send(addr);
    }
    let ctx = Arc::new(Ctx { dir, days });
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                crate::remote_log!(warn, "enrollment_accept", "accept: {e}");
                continue;
            }
        };
        let (acceptor, ctx) = (acceptor.clone(), ctx.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(t)) => t,
                _ => return,
            };
            let svc = hyper::service::service_fn(move |r| handle(ctx.clone(), peer, r));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

/// What the endpoint issued.
#[derive(Debug)]
pub struct Enrolled {
    pub certificate: String,
    pub node_id: String,
    pub serial: String,
}

/// Enrolls `public_key` for `user` at `url` (`https://host:port`), checking the endpoint
/// with the CA certificate `ca_pem`.
pub async fn enroll(
    url: &str,
    ca_pem: &Path,
    user: &str,
    password: &str,
    public_key: &[u8; 32],
) -> Result<Enrolled, EnrollError> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| usage("--url must start with https://"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (
            h.trim_start_matches('[').trim_end_matches(']'),
            p.parse::<u16>()
                .map_err(|_| usage(format!("bad port in {url:?}")))?,
        ),
        None => (hostport, 443),
    };
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(crate::security::trust::read_cert(
            ca_pem,
        )?))
        .map_err(|e| usage(format!("{}: {e}", ca_pem.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let server =
        ServerName::try_from(host.to_string()).map_err(|e| usage(format!("{host}: {e}")))?;
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(io(format!("connecting to {host}:{port}")))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(server, tcp)
        .await
        .map_err(io(format!(
            "TLS with {host}:{port} (is it the overlay CA's endpoint?)"
        )))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    tokio::spawn(conn);
    let body = json!({"user": user, "password": password, "public_key": hex::encode(public_key)});
    let req = Request::post("/enroll")
        .header(hyper::header::HOST, hostport)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(http)?;
    let res = send.send_request(req).await.map_err(http)?;
    let status = res.status();
    let bytes = Limited::new(res.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| http(format!("reading the answer: {e}")))?
        .to_bytes();
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| http(format!("answer is not JSON: {e}")))?;
    let s = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_string()
    };
    if !status.is_success() {
        return Err(EnrollError::Refused {
            status,
            why: s("error"),
        });
    }
    Ok(Enrolled {
        certificate: s("certificate"),
        node_id: s("node_id"),
        serial: s("serial"),
    })
}
