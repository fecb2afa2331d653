//! The SIP front-end of a node (RFC 7904's SIP usage, for this overlay): a registrar that
//! stores bindings in the overlay and a stateless proxy that finds a callee's node through
//! the overlay, opens an application connection to it (AppAttach for application 5060,
//! then a QUIC stream to the endpoint the answer names, proto/SPEC.md section 2.7) and
//! carries the request over it; that node delivers it to the registered device. Responses
//! follow the Via headers back; in-dialog requests follow the Record-Route set. Between
//! nodes a Via or Record-Route entry names its node with a `node` parameter, and SIP rides
//! the node's application stream. SIP parsing is rsip's (a nom tokenizer); SIP itself
//! stays standard: any UA can register and call through any node.

#[macro_use]
mod error;
pub mod auth;
pub mod contact;
mod fork;
mod forking;
mod front_ends;
pub mod identities;
mod keepalive;
mod proxy;
pub mod raw;
mod register;
mod registrar;
mod requests;
pub mod sample;
mod settings;
mod transport;
mod uri;

use self::error::io;
pub use self::error::SipError;
use self::proxy::*;
pub use self::settings::SipSettings;
use self::transport::*;
use self::uri::*;

use crate::runtime::NodeClient;
use crate::transport::limits::{ByteWindows, Slot, Slots};
use auth::{Authenticator, Verdict};
use dashmap::DashMap;
use p2psip_algorithms::storage::KIND_SIP_REGISTRATION;
use p2psip_algorithms::{Id, NodeId};
use p2psip_proto::pb::{self, sip_registration::Target as RegTarget};
use prost::Message as _;
use rsip::headers::{ToTypedHeader, UntypedHeader};
use rsip::prelude::HeadersExt;
use rsip::{Header, Headers, Method, Request, Response, SipMessage, StatusCode};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

/// The AppAttach application number of SIP.
pub const APP_SIP: u32 = 5060;
/// Overlay operations of the front-end give up after this.
const OP_TIMEOUT: Duration = Duration::from_secs(8);
/// The Via / Record-Route parameter naming the node an entry belongs to.
const NODE_PARAM: &str = "node";
/// A registration's record stays in the overlay this long after it expired, so that a
/// call to it gets 480 (Temporarily Unavailable) instead of 404.
const EXPIRED_GRACE_S: u32 = 3600;
/// Largest SIP message accepted (UDP datagram or TCP message).
const MAX_MESSAGE: usize = 65_535;
/// Our Via branches start with the RFC 3261 magic cookie.
const COOKIE: &str = "z9hG4bK";
/// Max-Forwards of an arriving request is capped at this (RFC 3261 section 16.6).
const MAX_FORWARDS: u32 = 70;
/// TCP connections the front-end opens give up after this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages queued per TCP connection or node stream; past it one is dropped (SIP over
/// UDP retransmits; a node stream that stays full is replaced).
const STREAM_QUEUE: usize = 256;
/// Device addresses the front-end may send requests to (registered contacts and where
/// requests came from), remembered at most; and how long a request's source is.
const KNOWN_MAX: usize = 65_536;
const SOURCE_MEMORY: Duration = Duration::from_secs(3600);

struct Inner {
    node: NodeClient,
    cfg: SipSettings,
    udp: UdpSocket,
    /// Devices registered at this node, by AOR.
    bindings: DashMap<String, Vec<registrar::Device>>,
    /// The AOR of each temporary GRUU token issued here (RFC 5627).
    temp_gruus: DashMap<String, String>,
    /// Application streams to and from other nodes: their writers.
    streams: DashMap<NodeId, mpsc::Sender<Vec<u8>>>,
    /// Held while a stream to that node is being opened (one AppAttach at a time).
    opening: DashMap<NodeId, Arc<tokio::sync::Mutex<()>>>,
    /// Open TCP connections, by remote address: their writers.
    tcp: DashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    /// Device addresses requests may be sent to directly, until when: registered
    /// contacts and the sources of requests (the front-end is no open relay).
    known: DashMap<SocketAddr, Instant>,
    /// Incoming TCP connections open now (for the caps in total and per address).
    tcp_slots: Arc<Slots<std::net::IpAddr>>,
    /// Requests taken per source address this second.
    rate: ByteWindows<std::net::IpAddr>,
    /// Requests being handled (each has a task).
    in_flight: Arc<tokio::sync::Semaphore>,
    /// The users' certified identities (enrolled overlays).
    certified: Option<identities::UserCertificates>,
    /// Forked requests: by our branch of each (with its index), and by the request as
    /// it came from upstream (`forking::upstream_key`).
    forks: DashMap<String, (Arc<std::sync::Mutex<forking::ForkCtx>>, usize)>,
    forks_in: DashMap<String, Arc<std::sync::Mutex<forking::ForkCtx>>>,
    /// Which addresses are other front-ends of the overlay.
    front_ends: front_ends::FrontEnds,
    /// RFC 5626 flows over UDP registered here: when a datagram (keep-alive or SIP) last
    /// came from each.
    flows_heard: DashMap<SocketAddr, Instant>,
}

/// A running front-end.
pub struct SipFrontEnd {
    pub addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    inner: Arc<Inner>,
}

impl SipFrontEnd {
    /// Registers `contact` (a UDP device) as `sip:<user>@<domain>` for `expires` seconds,
    /// as a REGISTER through this front-end would (no credentials asked: for the local
    /// tools that start the front-end, such as devnet's sample users).
    pub async fn register_device(
        &self,
        user: &str,
        contact: &str,
        expires: u32,
    ) -> Result<(), SipError> {
        let i = &self.inner;
        let aor = format!("sip:{user}@{}", i.cfg.domain);
        let uri = rsip::Uri::try_from(contact)?;
        let a = uri_addr(&uri).ok_or_else(|| request_err!("Contact {contact} has no address"))?;
        let change = registrar::Change {
            contact: contact.to_string(),
            prefs: String::new(),
            instance: None,
            hop: Hop::Udp(a),
            expires,
            path: Vec::new(),
            reg_id: None,
            call_id: String::new(),
            temp_gruu: None,
        };
        match i.bind(&aor, user, &[change]).await {
            Ok(_) => Ok(()),
            Err(Unbound::TooManyDevices) => refuse!("{aor}: too many devices"),
            Err(Unbound::NotStored(e)) => refuse!("storing {aor}: {e}"),
        }
    }
}

impl Drop for SipFrontEnd {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts the front-end on `cfg.listen` (UDP and TCP), serves SIP streams from other
/// nodes and tells the node to answer AppAttach for SIP with its QUIC endpoint.
pub async fn start(node: NodeClient, cfg: SipSettings) -> Result<SipFrontEnd, SipError> {
    let (udp, tcp) = bind_sockets(cfg.listen, || std::net::UdpSocket::bind(cfg.listen))?;
    udp.set_nonblocking(true)?;
    tcp.set_nonblocking(true)?;
    let (udp, tcp) = (UdpSocket::from_std(udp)?, TcpListener::from_std(tcp)?);
    let addr = udp.local_addr()?;
    let mut cfg = cfg;
    cfg.listen = addr;
    if cfg.advertise.port() == 0 {
        cfg.advertise.set_port(addr.port());
    }
    let advertise = cfg.advertise;
    if node.advertised.is_none() {
        tracing::warn!(
            "SIP: the node advertises no address, so other nodes cannot deliver calls here"
        );
    }
    let certified = signers(&node, &cfg)?;
    let mut incoming = node.serve_app(APP_SIP).await;
    let cfg_in_flight = cfg.max_in_flight;
    let inner = Arc::new(Inner {
        node,
        cfg,
        udp,
        bindings: DashMap::new(),
        temp_gruus: DashMap::new(),
        streams: DashMap::new(),
        opening: DashMap::new(),
        tcp: DashMap::new(),
        known: DashMap::new(),
        tcp_slots: Arc::default(),
        rate: ByteWindows::new(Duration::from_secs(1)),
        in_flight: Arc::new(tokio::sync::Semaphore::new(cfg_in_flight)),
        certified,
        forks: DashMap::new(),
        forks_in: DashMap::new(),
        front_ends: front_ends::FrontEnds::default(),
        flows_heard: DashMap::new(),
    });
    tracing::info!(udp = %addr, tcp = %addr, advertised = %advertise, "SIP front-end listening");
    let i = inner.clone();
    let udp_task = tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let got = i.udp.recv_from(&mut buf).await;
            if let Ok((_, src)) = got {
                i.heard_from(src);
            }
            match got {
                Ok((n, src)) if keepalive::is_stun(&buf[..n]) => i.stun(&buf[..n], src).await,
                Ok((n, src)) => i.clone().dispatch(buf[..n].to_vec(), Hop::Udp(src)).await,
                Err(e) => tracing::debug!(error = %e, "SIP: UDP receive"),
            }
        }
    });
    let i = inner.clone();
    let tcp_task = tokio::spawn(async move {
        loop {
            match tcp.accept().await {
                Ok((s, src)) => {
                    let slot = i
                        .tcp_slots
                        .take(src.ip(), i.cfg.tcp_max, i.cfg.tcp_max_per_ip);
                    match slot {
                        Some(slot) => {
                            i.register_tcp(s, src, Some(slot));
                        }
                        None => {
                            crate::remote_log!(info, "sip_tcp_refused", %src, "SIP: TCP connection refused (at the limit in all or for this address)");
                            drop(s);
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "SIP: TCP accept"),
            }
        }
    });
    let i = inner.clone();
    let app_task = tokio::spawn(async move {
        while let Some(s) = incoming.recv().await {
            tracing::debug!(node = %s.from, "SIP: application stream accepted");
            i.attach_stream(s.from, s.send, s.recv);
        }
    });
    let publish_task = tokio::spawn(inner.clone().publish_address());
    Ok(SipFrontEnd {
        addr,
        tasks: vec![udp_task, tcp_task, app_task, publish_task],
        inner,
    })
}

/// Who will sign the users' registrations: their CA certificates in an enrolled overlay.
/// Refuses to start where registrations could not be stored (an enrolled overlay that takes
/// only its CA's certificates, without them) or the directory cannot be used.
fn signers(
    node: &NodeClient,
    cfg: &SipSettings,
) -> Result<Option<identities::UserCertificates>, SipError> {
    use p2psip_proto::security::CertificateCheck as _;
    let trust = node.trust();
    match &cfg.user_certificates {
        Some(dir) => {
            if !trust.is_enrolled() {
                setting!(
                    "sip.user_certificates is set but this node is not enrolled (no security.ca): \
                     certificates of a CA mean nothing in a self-signed overlay"
                );
            }
            if !dir.is_dir() {
                setting!(
                    "sip.user_certificates {}: not a directory (`p2psip ca issue-sip-users` \
                     writes one)",
                    dir.display()
                );
            }
            tracing::info!(dir = %dir.display(), "SIP: registrations signed with the users' certificates");
            Ok(Some(identities::UserCertificates::new(
                dir.clone(),
                trust.clone(),
            )))
        }
        None if trust.is_enrolled() && !trust.allows_self_signed() => setting!(
            "this overlay admits only its CA's certificates, so SIP registrations must be \
             signed by certificates of the users: issue them with `p2psip ca issue-sip-users \
             --dir CA --users-file FILE --out DIR` and set sip.user_certificates = DIR"
        ),
        None => Ok(None),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The fuzz target's entry (`node/fuzz`, target `sip`): cuts `bytes` into messages as a
/// stream is cut, parses each, and runs every header analysis the registrar and proxy do
/// (AOR, GRUU, Via and Route targets, node parameters), without any IO. It must never
/// panic, whatever the bytes.
pub fn fuzz_sip(bytes: &[u8]) {
    let mut rest = bytes;
    let mut messages = Vec::new();
    while let Some(n) = frame_len(rest) {
        if n == 0 {
            break;
        }
        messages.push(&rest[..n]);
        rest = &rest[n..];
    }
    messages.push(rest);
    for m in messages {
        let Ok(msg) = SipMessage::try_from(m) else {
            continue;
        };
        let headers = match &msg {
            SipMessage::Request(r) => {
                let _ = aor_of(&r.uri, "p2psip");
                let _ = gr_param(&r.uri);
                let _ = uri_addr(&r.uri);
                for u in route_uris(r) {
                    let _ = route_hop(&u);
                }
                let mut popped = r.clone();
                pop_route(&mut popped);
                let _ = response(r, 404, Vec::new()).to_string();
                &r.headers
            }
            SipMessage::Response(r) => &r.headers,
        };
        for h in headers.iter() {
            match h {
                Header::Via(v) => {
                    let _ = via_target(v);
                }
                Header::Contact(c) => {
                    if let Ok(t) = c.typed() {
                        let _ = aor_of(&t.uri, "p2psip");
                        let _ = node_param(&t.params);
                    }
                    if let Some(contact::Contacts::List(l)) = contact::parse(c.value()) {
                        for e in l {
                            let _ = (e.expires(), e.params_text());
                            let _ = rsip::Uri::try_from(e.uri.as_str());
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// A response to `req` with the headers RFC 3261 §8.2.6 copies.
fn response(req: &Request, code: u16, extra: Vec<Header>) -> Response {
    let mut headers = Headers::default();
    for h in req.headers.iter() {
        match h {
            Header::Via(_) | Header::From(_) | Header::CallId(_) | Header::CSeq(_) => {
                headers.push(h.clone())
            }
            Header::To(t) => {
                let mut v = t.value().to_string();
                if code > 100 && !v.contains(";tag=") {
                    let tag = hex::encode(&Sha256::digest(req.to_string().as_bytes())[..6]);
                    v.push_str(&format!(";tag={}{tag}", raw::LOCAL_TAG));
                }
                headers.push(Header::To(rsip::headers::To::new(v)));
            }
            _ => {}
        }
    }
    for h in extra {
        headers.push(h);
    }
    headers.push(Header::Server(rsip::headers::Server::new("p2psip")));
    headers.push(Header::ContentLength(rsip::headers::ContentLength::new(
        "0",
    )));
    Response {
        status_code: StatusCode::from(code),
        version: rsip::Version::V2,
        headers,
        body: Vec::new(),
    }
}

impl Inner {
    fn me(&self) -> String {
        self.cfg.advertise.to_string()
    }

    fn is_me(&self, uri: &rsip::Uri) -> bool {
        uri_addr(uri).is_some_and(|a| self.is_own(a))
    }

    /// The user part of `uri` if it names a user of this front-end's domain (its host
    /// the domain, or an IP address, which stands for it).
    fn domain_user(&self, uri: &rsip::Uri) -> Option<String> {
        let uri = repaired(uri);
        let user = &uri.auth.as_ref()?.user;
        (aor_of(&uri, &self.cfg.domain)? == format!("sip:{user}@{}", self.cfg.domain))
            .then(|| user.clone())
    }

    async fn reply(self: &Arc<Self>, req: &Request, code: u16, extra: Vec<Header>, src: Hop) {
        self.reply_status(req, StatusCode::from(code), extra, src)
            .await
    }

    /// [`Inner::reply`] with a status of our own wording.
    async fn reply_status(
        self: &Arc<Self>,
        req: &Request,
        status: StatusCode,
        extra: Vec<Header>,
        src: Hop,
    ) {
        if req.method == Method::Ack {
            return; // an ACK is never answered
        }
        let mut r = response(req, status.code(), extra);
        r.status_code = status;
        // Over UDP back to where the request came from (RFC 3581: the received address
        // and port, which only the packet tells); on a stream, back on it.
        let to = src;
        if let Err(e) = self.send(r.to_string().into_bytes(), to).await {
            tracing::debug!(%to, error = %e, "SIP: response not sent");
        }
    }

    /// Whether `req` may go on: an initial INVITE, MESSAGE or SUBSCRIBE from a phone whose
    /// From names a user of our domain must carry that user's credentials
    /// (Proxy-Authorization); else it is answered 407 (challenge) or 403 here and false
    /// returned.
    async fn authorized(self: &Arc<Self>, req: &Request, src: Hop) -> Result<bool, SipError> {
        let Some(auth) = self.cfg.auth.as_ref().filter(|_| self.cfg.auth_requests) else {
            return Ok(true);
        };
        // Other front-ends authenticated their own phones.
        if matches!(src, Hop::Node(_)) {
            return Ok(true);
        }
        if !matches!(
            req.method,
            Method::Invite | Method::Message | Method::Subscribe
        ) {
            return Ok(true);
        }
        let in_dialog = to_tag(req).is_some();
        let from = req.from_header()?.typed()?;
        let Some(user) = self.domain_user(&from.uri).filter(|_| !in_dialog) else {
            return Ok(true);
        };
        self.authenticate(req, src, auth, &user, true).await
    }

    /// Checks that `req` carries `user`'s credentials (Proxy-Authorization when `proxy`,
    /// else Authorization). True if so; else it has been answered here (401 or 407 with
    /// challenges, or 403 for another user's credentials and for a limited source or
    /// user) and false is returned (an error for another user's credentials).
    async fn authenticate(
        self: &Arc<Self>,
        req: &Request,
        src: Hop,
        auth: &Authenticator,
        user: &str,
        proxy: bool,
    ) -> Result<bool, SipError> {
        let header = req.headers.iter().find_map(|h| match h {
            Header::ProxyAuthorization(a) if proxy => Some(a.value().to_string()),
            Header::Authorization(a) if !proxy => Some(a.value().to_string()),
            _ => None,
        });
        let ip = match src {
            Hop::Udp(a) | Hop::Tcp(a) => a.ip(),
            Hop::Node(_) => std::net::IpAddr::from([0, 0, 0, 0]),
        };
        match auth.check(&req.method.to_string(), header.as_deref(), ip) {
            Verdict::Authenticated(who) if who == user => Ok(true),
            Verdict::Authenticated(who) => {
                self.reply(req, 403, vec![], src).await;
                refuse!("{who} sent a {} in the name of {user}", req.method);
            }
            Verdict::Challenge { stale } => {
                let challenges = auth.challenges(stale).into_iter();
                let (code, extra) = if proxy {
                    let h = challenges.map(|c| {
                        Header::ProxyAuthenticate(rsip::headers::ProxyAuthenticate::new(c))
                    });
                    (407, h.collect())
                } else {
                    let h = challenges
                        .map(|c| Header::WwwAuthenticate(rsip::headers::WwwAuthenticate::new(c)));
                    (401, h.collect())
                };
                self.reply(req, code, extra, src).await;
                if header.is_some() {
                    crate::remote_log!(info, "sip_auth_failed", %user, from = %src, "SIP: {} not authenticated", req.method);
                }
                Ok(false)
            }
            Verdict::Refused(why) => {
                self.reply(req, 403, vec![], src).await;
                crate::remote_log!(warn, "sip_auth_limited", %user, from = %src, "SIP: {} refused: {why}", req.method);
                Ok(false)
            }
        }
    }

    /// Sets the top Via's `received` and `rport` to where the request really came from
    /// (RFC 3261 section 18.2.1, RFC 3581); values the sender put there are dropped.
    fn mark_received(&self, req: &mut Request, src: SocketAddr) {
        for h in req.headers.iter_mut() {
            if let Header::Via(v) = h {
                let value = v.value().to_string();
                let (top, rest) = match value.split_once(',') {
                    Some((t, r)) => (t.to_string(), Some(r.to_string())),
                    None => (value.clone(), None),
                };
                let mut parts = top.split(';').map(str::trim);
                let mut out = parts.next().unwrap_or("").to_string();
                let mut rport = false;
                for p in parts {
                    let name = p.split('=').next().unwrap_or("").to_ascii_lowercase();
                    match name.as_str() {
                        "rport" => rport = true,
                        "received" => {}
                        _ => {
                            out.push(';');
                            out.push_str(p);
                        }
                    }
                }
                out.push_str(&format!(";received={}", src.ip()));
                if rport {
                    out.push_str(&format!(";rport={}", src.port()));
                }
                if let Some(r) = rest {
                    out.push(',');
                    out.push_str(&r);
                }
                *v = rsip::headers::Via::new(out);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An INVITE through two Route entries, as the unit tests of the front-end read it.
    pub(crate) const INVITE: &str = "INVITE sip:alice@10.0.0.5:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.9:5070;branch=z9hG4bK-1;rport\r\n\
Route: <sip:10.0.0.5:5060;lr>, <sip:10.0.0.7:5060;lr>\r\n\
From: <sip:bob@p2psip>;tag=1\r\n\
To: <sip:alice@p2psip>\r\n\
Call-ID: c1\r\n\
CSeq: 1 INVITE\r\n\
Max-Forwards: 70\r\n\
Content-Length: 0\r\n\r\n";

    #[test]
    fn responses_copy_the_dialog_headers_and_tag_the_to() {
        let SipMessage::Request(r) = SipMessage::try_from(INVITE.as_bytes()).unwrap() else {
            panic!("not a request");
        };
        let resp = response(&r, 404, vec![]);
        let text = resp.to_string();
        assert!(text.starts_with("SIP/2.0 404"), "{text}");
        assert!(text.contains("Call-ID: c1"));
        assert!(text.contains("CSeq: 1 INVITE"));
        assert!(text.contains("To: <sip:alice@p2psip>;tag="));
        assert!(text.contains("Via: SIP/2.0/UDP 10.0.0.9:5070;branch=z9hG4bK-1"));
        // A Via with received and rport sends the response there.
        let v = rsip::headers::Via::new(
            "SIP/2.0/UDP 10.0.0.9:5070;branch=z9hG4bK-1;received=192.0.2.1;rport=6000",
        );
        assert_eq!(
            via_target(&v),
            Some(Hop::Udp("192.0.2.1:6000".parse().unwrap()))
        );
    }
}
