//! The SIP front-end of a node (RFC 7904's SIP usage, for this overlay): a registrar that
//! stores bindings in the overlay and a stateless proxy that finds a callee's node through
//! the overlay, opens an application connection to it (AppAttach for application 5060,
//! then a QUIC stream to the endpoint the answer names, proto/SPEC.md section 2.7) and
//! carries the request over it; that node delivers it to the registered device. Responses
//! follow the Via headers back; in-dialog requests follow the Record-Route set. Between
//! nodes a Via or Record-Route entry names its node with a `node` parameter, and SIP rides
//! the node's application stream. SIP parsing is rsip's (a nom tokenizer); SIP itself
//! stays standard: any UA can register and call through any node.

pub mod auth;
pub mod contact;
mod fork;
mod forking;
pub mod identities;
pub mod raw;
mod registrar;
pub mod sample;

use crate::runtime::NodeClient;
use crate::transport::limits::{ByteWindows, Slot, Slots};
use anyhow::{anyhow, bail, Context};
use auth::{Authenticator, Verdict};
use dashmap::DashMap;
use p2psip_algorithms::storage::KIND_SIP_REGISTRATION;
use p2psip_algorithms::{Event, Id, NodeId};
use p2psip_proto::pb::{self, sip_registration::Target as RegTarget};
use p2psip_proto::Body;
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

/// Settings of the front-end (the `[sip]` table of the node's configuration).
#[derive(Debug, Clone)]
pub struct SipSettings {
    /// UDP and TCP address the front-end listens on.
    pub listen: SocketAddr,
    /// The address put in our Via and Record-Route headers (how UAs and other nodes reach
    /// us); the listen address when it is specified.
    pub advertise: SocketAddr,
    /// Domain of AORs whose request URI names a host by IP address (a UA that sends to a
    /// node's address): `sip:alice@10.0.0.5` is `sip:alice@<domain>`.
    pub domain: String,
    pub max_expires: u32,
    pub min_expires: u32,
    /// Digest authentication of REGISTER (None: anyone may register any AOR).
    pub auth: Option<Arc<Authenticator>>,
    /// Also challenge initial INVITE, MESSAGE and SUBSCRIBE from users of the domain (407).
    pub auth_requests: bool,
    /// TCP connections at once, in all and per IP address (0: no limit).
    pub tcp_max: usize,
    pub tcp_max_per_ip: usize,
    /// A TCP connection idle this long without a registration over it is closed.
    pub tcp_idle: Duration,
    /// Requests a second from one IP address (0: no limit), and handled at once.
    pub requests_per_s: u32,
    pub max_in_flight: usize,
    /// Proxies in front: no per-address rate or failure limit for them.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Keys and CA certificates of the users (`<user>.key`, `<user>.pem`), signing their
    /// registrations in an enrolled overlay (None: keys derived from the node's key).
    pub user_certificates: Option<std::path::PathBuf>,
}

impl SipSettings {
    /// From the `[sip]` table; an unspecified listen IP is advertised as the node's own
    /// advertised IP.
    pub fn from_config(
        c: &crate::config::SipSection,
        node_advertised: Option<SocketAddr>,
    ) -> anyhow::Result<Self> {
        let listen: SocketAddr = c
            .listen
            .parse()
            .with_context(|| format!("sip.listen {:?}", c.listen))?;
        let mut advertise = listen;
        if listen.ip().is_unspecified() {
            let ip = node_advertised.map(|a| a.ip()).ok_or_else(|| {
                anyhow!("sip.listen is unspecified and the node has no address to advertise")
            })?;
            advertise.set_ip(ip);
        }
        let domain = c.domain.to_ascii_lowercase();
        let trusted_proxies = c
            .trusted_proxies
            .iter()
            .map(|a| {
                a.parse::<std::net::IpAddr>()
                    .with_context(|| format!("sip.trusted_proxies: {a:?} is not an IP address"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let auth = if c.auth {
            let Some(file) = &c.users_file else {
                bail!(
                    "sip.auth is on (the default) and sip.users_file is not set: write one with \
                     `p2psip sip add-user FILE USER --realm {domain}`, or set sip.auth = false \
                     (then anyone who reaches the front-end can register any AOR)"
                );
            };
            let users = auth::Users::load(std::path::Path::new(file))?;
            Some(Arc::new(
                Authenticator::new(
                    &domain,
                    users,
                    auth::parse_algorithms(&c.digest_algorithms)?,
                )
                .with_trusted_proxies(trusted_proxies.clone()),
            ))
        } else {
            None
        };
        Ok(SipSettings {
            listen,
            advertise,
            domain,
            max_expires: c.max_expires_s,
            min_expires: c.min_expires_s,
            auth_requests: c.auth_requests,
            auth,
            tcp_max: c.tcp_max_connections,
            tcp_max_per_ip: c.tcp_max_connections_per_ip,
            tcp_idle: Duration::from_secs(c.tcp_idle_timeout_s.max(1)),
            requests_per_s: c.requests_per_s_per_source,
            max_in_flight: c.max_requests_in_flight.max(1),
            trusted_proxies,
            user_certificates: c.user_certificates.as_ref().map(std::path::PathBuf::from),
        })
    }
}

/// Where a SIP message came from or goes: a device over UDP or TCP, or another node over
/// an application stream (QUIC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    Udp(SocketAddr),
    Tcp(SocketAddr),
    Node(NodeId),
}

impl std::fmt::Display for Hop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hop::Udp(a) => write!(f, "udp:{a}"),
            Hop::Tcp(a) => write!(f, "tcp:{a}"),
            Hop::Node(n) => write!(f, "node:{n}"),
        }
    }
}

struct Inner {
    node: NodeClient,
    cfg: SipSettings,
    udp: UdpSocket,
    /// Devices registered at this node, by AOR.
    bindings: DashMap<String, Vec<registrar::Device>>,
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
    ) -> anyhow::Result<()> {
        let i = &self.inner;
        let aor = format!("sip:{user}@{}", i.cfg.domain);
        let uri = rsip::Uri::try_from(contact)?;
        let a = uri_addr(&uri).ok_or_else(|| anyhow!("Contact {contact} has no address"))?;
        let change = registrar::Change {
            contact: contact.to_string(),
            prefs: String::new(),
            instance: None,
            hop: Hop::Udp(a),
            expires,
            path: Vec::new(),
        };
        match i.bind(&aor, user, &[change]).await {
            Ok(_) => Ok(()),
            Err(Unbound::TooManyDevices) => bail!("{aor}: too many devices"),
            Err(Unbound::NotStored(e)) => bail!("storing {aor}: {e}"),
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

/// How many ports `bind_sockets` tries when the kernel picks one.
const BIND_TRIES: usize = 64;

/// Binds UDP with `udp` and TCP on the same address. With port 0 the kernel picks a UDP
/// port that may be taken for TCP: then another one is tried, `BIND_TRIES` at most.
fn bind_sockets(
    listen: SocketAddr,
    mut udp: impl FnMut() -> std::io::Result<std::net::UdpSocket>,
) -> anyhow::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let tries = if listen.port() == 0 { BIND_TRIES } else { 1 };
    for _ in 0..tries {
        let u = udp().with_context(|| format!("SIP: binding UDP {listen}"))?;
        let addr = u.local_addr()?;
        match std::net::TcpListener::bind(addr) {
            Ok(t) => return Ok((u, t)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && listen.port() == 0 => {
                tracing::debug!(%addr, "SIP: TCP port taken, trying another");
            }
            Err(e) => return Err(e).with_context(|| format!("SIP: binding TCP {addr}")),
        }
    }
    anyhow::bail!(
        "SIP: no port on {} was free for both UDP and TCP in {tries} tries",
        listen.ip()
    )
}

/// Starts the front-end on `cfg.listen` (UDP and TCP), serves SIP streams from other
/// nodes and tells the node to answer AppAttach for SIP with its QUIC endpoint.
pub async fn start(node: NodeClient, cfg: SipSettings) -> anyhow::Result<SipFrontEnd> {
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
    });
    tracing::info!(udp = %addr, tcp = %addr, advertised = %advertise, "SIP front-end listening");
    let i = inner.clone();
    let udp_task = tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            match i.udp.recv_from(&mut buf).await {
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
    Ok(SipFrontEnd {
        addr,
        tasks: vec![udp_task, tcp_task, app_task],
        inner,
    })
}

/// Who will sign the users' registrations: their CA certificates in an enrolled overlay.
/// Refuses to start where registrations could not be stored (an enrolled overlay that takes
/// only its CA's certificates, without them) or the directory cannot be used.
fn signers(
    node: &NodeClient,
    cfg: &SipSettings,
) -> anyhow::Result<Option<identities::UserCertificates>> {
    use p2psip_proto::security::CertificateCheck as _;
    let trust = node.trust();
    match &cfg.user_certificates {
        Some(dir) => {
            if !trust.is_enrolled() {
                bail!(
                    "sip.user_certificates is set but this node is not enrolled (no security.ca): \
                     certificates of a CA mean nothing in a self-signed overlay"
                );
            }
            if !dir.is_dir() {
                bail!(
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
        None if trust.is_enrolled() && !trust.allows_self_signed() => bail!(
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

/// The length of the first complete SIP message at the start of `buf` (headers up to the
/// blank line, then Content-Length bytes of body; RFC 3261 section 18.3), or None when more
/// bytes are needed.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = &buf[..end + 4];
    let headers = match rsip::SipMessage::try_from(head) {
        Ok(SipMessage::Request(r)) => r.headers,
        Ok(SipMessage::Response(r)) => r.headers,
        Err(_) => Headers::default(),
    };
    let len = headers
        .iter()
        .find_map(|h| match h {
            Header::ContentLength(c) => c.value().trim().parse::<usize>().ok(),
            _ => None,
        })
        .unwrap_or(0);
    let total = (end + 4).checked_add(len)?;
    (total <= buf.len()).then_some(total)
}

/// Reads one SIP message from a stream (see [`frame_len`]). None at end of stream or when
/// a message would exceed the size limit.
async fn read_message(s: &mut (impl AsyncReadExt + Unpin), buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(n) = frame_len(buf) {
            return Some(buf.drain(..n).collect());
        }
        if buf.len() > MAX_MESSAGE {
            return None;
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
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

/// Canonical AOR of a SIP URI: `sip:user@domain`, with an IP host replaced by the
/// configured domain.
fn aor_of(uri: &rsip::Uri, domain: &str) -> Option<String> {
    let user = uri.auth.as_ref()?.user.clone();
    let host = match &uri.host_with_port.host {
        rsip::Host::Domain(d) => d.to_string(),
        rsip::Host::IpAddr(_) => domain.to_string(),
    };
    Some(format!("sip:{user}@{}", host.to_ascii_lowercase()))
}

fn gr_param(uri: &rsip::Uri) -> Option<String> {
    uri.params.iter().find_map(|p| match p {
        rsip::Param::Other(name, Some(v)) if name.value().eq_ignore_ascii_case("gr") => {
            Some(v.value().to_string())
        }
        _ => None,
    })
}

fn uri_addr(uri: &rsip::Uri) -> Option<SocketAddr> {
    let ip = match &uri.host_with_port.host {
        rsip::Host::IpAddr(ip) => *ip,
        rsip::Host::Domain(d) => d.to_string().parse().ok()?,
    };
    let port = uri
        .host_with_port
        .port
        .as_ref()
        .map_or(5060, |p| *p.value());
    Some(SocketAddr::new(ip, port))
}

/// The node a Via or Route entry names with its `node` parameter.
fn node_param(params: &[rsip::Param]) -> Option<NodeId> {
    params.iter().find_map(|p| match p {
        rsip::Param::Other(n, Some(v)) if n.value().eq_ignore_ascii_case(NODE_PARAM) => {
            u128::from_str_radix(v.value(), 16).ok().map(Id)
        }
        _ => None,
    })
}

/// Where a request following Route entry `uri` goes.
fn route_hop(uri: &rsip::Uri) -> Option<Hop> {
    if let Some(n) = node_param(&uri.params) {
        return Some(Hop::Node(n));
    }
    let a = uri_addr(uri)?;
    let tcp = uri.params.iter().any(|p| {
        matches!(p, rsip::Param::Transport(t) if *t == rsip::Transport::Tcp)
            || p.to_string().eq_ignore_ascii_case(";transport=tcp")
    });
    Some(if tcp { Hop::Tcp(a) } else { Hop::Udp(a) })
}

/// Where a request following Path entry `entry` (`<sip:proxy;lr>`) goes.
fn path_hop(entry: &str) -> Option<Hop> {
    let uri = entry.trim_start_matches('<').split('>').next()?;
    route_hop(&rsip::Uri::try_from(uri).ok()?)
}

/// The tag of a request's To header: none before a dialog exists.
fn to_tag(req: &Request) -> Option<String> {
    let to = req.to_header().ok()?.value().to_string();
    to.split(';').skip(1).find_map(|p| {
        let (n, v) = p.split_once('=')?;
        n.trim()
            .eq_ignore_ascii_case("tag")
            .then(|| v.trim().to_string())
    })
}

/// Where a response goes after we pop our Via: the node the next Via names, else its
/// received/rport or sent-by.
fn via_target(v: &rsip::headers::Via) -> Option<Hop> {
    let t = v.typed().ok()?;
    if let Some(n) = node_param(&t.params) {
        return Some(Hop::Node(n));
    }
    let tcp = matches!(t.transport, rsip::Transport::Tcp);
    let mut addr = uri_addr(&t.uri)?;
    for p in &t.params {
        match p {
            rsip::Param::Received(r) => {
                if let Ok(ip) = r.value().parse() {
                    addr.set_ip(ip);
                }
            }
            rsip::Param::Other(n, Some(v)) if n.value().eq_ignore_ascii_case("rport") => {
                if let Ok(port) = v.value().parse() {
                    addr.set_port(port);
                }
            }
            _ => {}
        }
    }
    Some(if tcp { Hop::Tcp(addr) } else { Hop::Udp(addr) })
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
        let user = &uri.auth.as_ref()?.user;
        (aor_of(uri, &self.cfg.domain)? == format!("sip:{user}@{}", self.cfg.domain))
            .then(|| user.clone())
    }

    /// Whether `a` reaches this front-end's own socket.
    fn is_own(&self, a: SocketAddr) -> bool {
        a == self.cfg.advertise
            || a == self.cfg.listen
            || (a.port() == self.cfg.listen.port()
                && (a.ip().is_loopback()
                    && (self.cfg.listen.ip().is_unspecified()
                        || self.cfg.listen.ip().is_loopback())
                    || a.ip().is_unspecified()))
    }

    /// Remembers `a` as a device address requests may go to, until `until`.
    fn know(&self, a: SocketAddr, until: Instant) {
        if self.known.len() >= KNOWN_MAX && !self.known.contains_key(&a) {
            let now = Instant::now();
            self.known.retain(|_, t| *t > now);
            if self.known.len() >= KNOWN_MAX {
                return;
            }
        }
        let mut e = self.known.entry(a).or_insert(until);
        if *e < until {
            *e = until;
        }
    }

    /// Whether a request may be sent to `to`: a node of the overlay, or a device address
    /// this front-end knows (a registered contact, or where a request came from).
    fn may_send_to(&self, to: Hop) -> bool {
        match to {
            Hop::Node(_) => true,
            Hop::Udp(a) | Hop::Tcp(a) => {
                !self.is_own(a) && self.known.get(&a).is_some_and(|t| *t > Instant::now())
            }
        }
    }

    /// Sends a message; to a node, over its application stream (opened on demand).
    async fn send(self: &Arc<Self>, bytes: Vec<u8>, to: Hop) -> anyhow::Result<()> {
        tracing::debug!(
            %to,
            first = %String::from_utf8_lossy(bytes.split(|b| *b == b'\r').next().unwrap_or(&[])),
            "SIP: out"
        );
        match to {
            Hop::Udp(a) => {
                self.udp
                    .send_to(&bytes, a)
                    .await
                    .with_context(|| format!("UDP to {a}"))?;
            }
            Hop::Tcp(a) => {
                let w = self.tcp.get(&a).map(|w| w.clone());
                let w = match w.filter(|w| !w.is_closed()) {
                    Some(w) => w,
                    None => self.connect_tcp(a),
                };
                match w.try_send(bytes) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        bail!("TCP connection to {a}: queue full, message dropped")
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        self.tcp.remove_if(&a, |_, s| s.same_channel(&w));
                        bail!("TCP connection to {a} closed");
                    }
                }
            }
            Hop::Node(n) => {
                // A stream that died since it was cached is replaced once; one whose queue
                // stays full (stalled) is dropped, and the next message opens a new one.
                let mut bytes = bytes;
                for _ in 0..2 {
                    let w = self.stream_to(n).await?;
                    match w.try_send(bytes) {
                        Ok(()) => return Ok(()),
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            self.streams.remove_if(&n, |_, s| s.same_channel(&w));
                            bail!("application stream to {n} stalled: message dropped, stream replaced");
                        }
                        Err(mpsc::error::TrySendError::Closed(b)) => {
                            self.streams.remove_if(&n, |_, s| s.same_channel(&w));
                            bytes = b;
                        }
                    }
                }
                bail!("application stream to {n} keeps closing");
            }
        }
        Ok(())
    }

    /// A writer for a new TCP connection to `a`: connected in the background (within
    /// `CONNECT_TIMEOUT`), messages queued meanwhile; nothing waits for the handshake.
    fn connect_tcp(self: &Arc<Self>, a: SocketAddr) -> mpsc::Sender<Vec<u8>> {
        let (tx, rx) = mpsc::channel::<Vec<u8>>(STREAM_QUEUE);
        self.tcp.insert(a, tx.clone());
        let me = self.clone();
        let mine = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(a)).await {
                Ok(Ok(s)) => {
                    let (rd, wr) = s.into_split();
                    me.run_stream(rd, wr, Hop::Tcp(a), mine, rx, None);
                }
                Ok(Err(e)) => {
                    tracing::debug!(%a, error = %e, "SIP: TCP connect failed");
                    me.tcp.remove_if(&a, |_, s| s.same_channel(&mine));
                }
                Err(_) => {
                    crate::remote_log!(info, "sip_connect_timeout", %a, "SIP: TCP connect timed out");
                    me.tcp.remove_if(&a, |_, s| s.same_channel(&mine));
                }
            }
        });
        tx
    }

    fn register_tcp(
        self: &Arc<Self>,
        s: TcpStream,
        peer: SocketAddr,
        slot: Option<Slot<std::net::IpAddr>>,
    ) -> mpsc::Sender<Vec<u8>> {
        let (rd, wr) = s.into_split();
        let (tx, rx) = mpsc::channel::<Vec<u8>>(STREAM_QUEUE);
        self.tcp.insert(peer, tx.clone());
        self.run_stream(rd, wr, Hop::Tcp(peer), tx.clone(), rx, slot);
        tx
    }

    /// Takes an application stream to or from node `n` into use.
    fn attach_stream(
        self: &Arc<Self>,
        n: NodeId,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> mpsc::Sender<Vec<u8>> {
        let tx = self.spawn_stream(recv, send, Hop::Node(n));
        self.streams.insert(n, tx.clone());
        tx
    }

    /// A writer task and a reader task on a stream carrying SIP (messages delimited by
    /// Content-Length, RFC 3261 section 18.3); returns the writer's queue.
    fn spawn_stream(
        self: &Arc<Self>,
        rd: impl AsyncReadExt + Unpin + Send + 'static,
        wr: impl AsyncWriteExt + Unpin + Send + 'static,
        peer: Hop,
    ) -> mpsc::Sender<Vec<u8>> {
        let (tx, rx) = mpsc::channel::<Vec<u8>>(STREAM_QUEUE);
        self.run_stream(rd, wr, peer, tx.clone(), rx, None);
        tx
    }

    /// The writer and reader tasks of a stream whose queue is `mine` / `rx`; the reader
    /// holds `slot` (an incoming connection's place under the caps) until it ends. A TCP
    /// connection that carries nothing for `tcp_idle` is closed unless a device is
    /// registered over it.
    fn run_stream(
        self: &Arc<Self>,
        mut rd: impl AsyncReadExt + Unpin + Send + 'static,
        mut wr: impl AsyncWriteExt + Unpin + Send + 'static,
        peer: Hop,
        mine: mpsc::Sender<Vec<u8>>,
        mut rx: mpsc::Receiver<Vec<u8>>,
        slot: Option<Slot<std::net::IpAddr>>,
    ) {
        tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if wr.write_all(&b).await.is_err() {
                    break;
                }
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut buf = Vec::new();
            loop {
                let m = match peer {
                    Hop::Tcp(_) => {
                        match tokio::time::timeout(me.cfg.tcp_idle, read_message(&mut rd, &mut buf))
                            .await
                        {
                            Ok(m) => m,
                            Err(_)
                                if me
                                    .bindings
                                    .iter()
                                    .any(|e| e.value().iter().any(|d| d.hop == peer)) =>
                            {
                                continue
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "SIP: idle TCP connection closed");
                                break;
                            }
                        }
                    }
                    _ => read_message(&mut rd, &mut buf).await,
                };
                let Some(m) = m else { break };
                me.clone().dispatch(m, peer).await;
            }
            tracing::debug!(%peer, "SIP: stream closed");
            match peer {
                Hop::Tcp(a) => {
                    me.tcp.remove_if(&a, |_, s| s.same_channel(&mine));
                }
                Hop::Node(n) => {
                    me.streams.remove_if(&n, |_, s| s.same_channel(&mine));
                }
                Hop::Udp(_) => {}
            }
        });
    }

    /// The application stream to node `n`: the open one, else AppAttach through the
    /// overlay and a QUIC stream to the endpoint its answer names.
    async fn stream_to(self: &Arc<Self>, n: NodeId) -> anyhow::Result<mpsc::Sender<Vec<u8>>> {
        if let Some(w) = self.streams.get(&n).map(|w| w.clone()) {
            if !w.is_closed() {
                return Ok(w);
            }
        }
        let lock = self.opening.entry(n).or_default().clone();
        let _held = lock.lock().await;
        if let Some(w) = self.streams.get(&n).map(|w| w.clone()) {
            if !w.is_closed() {
                return Ok(w);
            }
        }
        let began = Instant::now();
        let opened = tokio::time::timeout(OP_TIMEOUT, self.node.connect_app(n, APP_SIP)).await;
        // Only while an attempt is under way (the map holds no entry per node ever tried).
        self.opening.remove_if(&n, |_, l| Arc::ptr_eq(l, &lock));
        let (send, recv, path) =
            opened.map_err(|_| anyhow!("application connection to {n} timed out"))??;
        tracing::debug!(node = %n, path = path.as_str(), ms = began.elapsed().as_millis() as u64, "SIP: application stream open");
        Ok(self.attach_stream(n, send, recv))
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

    /// Responses are sent on at once, in the order they came (a 180 must not overtake its
    /// 200); requests, which may wait for the overlay, each get a task.
    ///
    /// A request beyond its source's rate (`sip.requests_per_s_per_source`), or beyond
    /// the requests handled at once, is answered 503 with Retry-After instead.
    async fn dispatch(self: Arc<Self>, bytes: Vec<u8>, src: Hop) {
        if bytes.starts_with(b"SIP/") {
            self.handle(bytes, src).await;
            return;
        }
        let within_rate = match src {
            Hop::Udp(a) | Hop::Tcp(a) if self.cfg.trusted_proxies.contains(&a.ip()) => true,
            Hop::Udp(a) | Hop::Tcp(a) => self.rate.take(
                a.ip(),
                1,
                u64::from(self.cfg.requests_per_s),
                Instant::now(),
            ),
            Hop::Node(_) => true,
        };
        let permit = self.in_flight.clone().try_acquire_owned().ok();
        match permit.filter(|_| within_rate) {
            Some(permit) => {
                tokio::spawn(async move {
                    self.handle(bytes, src).await;
                    drop(permit);
                });
            }
            None => self.overloaded(&bytes, src).await,
        }
    }

    /// Answers a request that is not handled now: 503 with Retry-After (never an ACK).
    async fn overloaded(self: &Arc<Self>, bytes: &[u8], src: Hop) {
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return;
        }
        crate::remote_log!(info, "sip_overloaded", %src, "SIP: request answered 503 (rate or load limit)");
        if let Ok(SipMessage::Request(r)) = SipMessage::try_from(bytes) {
            let retry = vec![Header::RetryAfter(rsip::headers::RetryAfter::new("1"))];
            self.reply(&r, 503, retry, src).await;
        }
    }

    async fn handle(self: Arc<Self>, bytes: Vec<u8>, src: Hop) {
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            // A keep-alive: CRLFCRLF on a stream is answered with CRLF (RFC 5626 3.5.1).
            if bytes.as_slice() == b"\r\n\r\n" && matches!(src, Hop::Tcp(_)) {
                let _ = self.send(b"\r\n".to_vec(), src).await;
            }
            return;
        }
        tracing::debug!(
            %src,
            first = %String::from_utf8_lossy(bytes.split(|b| *b == b'\r').next().unwrap_or(&[])),
            "SIP: in"
        );
        match SipMessage::try_from(bytes.as_slice()) {
            Ok(SipMessage::Request(r)) => {
                let method = r.method.to_string();
                if let Err(e) = self.request(r, src).await {
                    crate::remote_log!(info, "sip_not_handled", %src, %method, error = %e, "SIP: request not handled");
                }
            }
            Ok(SipMessage::Response(r)) => {
                let line = raw::first_line(&bytes).unwrap_or_default().to_string();
                self.response(r, &line).await
            }
            Err(e) => match raw::answer_unparsable(&bytes) {
                Some(answer) => {
                    crate::remote_log!(info, "sip_malformed", %src, error = %e, "SIP: unparsable request answered {}", answer.get(8..11).unwrap_or(""));
                    let _ = self.send(answer.into_bytes(), src).await;
                }
                None => tracing::debug!(%src, error = %e, "SIP: unparsable message dropped"),
            },
        }
    }

    /// A response: to its fork if it answers a forked request; else relayed.
    async fn response(self: &Arc<Self>, r: Response, status_line: &str) {
        if !self.forks.is_empty() && self.fork_response(&r, status_line).await {
            return;
        }
        self.relay_response(r, status_line).await
    }

    /// A response: pop our Via, send it on to the next one, its status line as it came.
    async fn relay_response(self: &Arc<Self>, mut r: Response, status_line: &str) {
        // One Via per header (a UA may fold them into one, comma-separated: 1#via-parm).
        let mut headers = Headers::default();
        let mut vias = Vec::new();
        for h in r.headers.iter() {
            match h {
                Header::Via(v) => {
                    for part in v
                        .value()
                        .split(',')
                        .map(str::trim)
                        .filter(|p| !p.is_empty())
                    {
                        let one = rsip::headers::Via::new(part);
                        if vias.is_empty() {
                            // Ours, to be popped: not copied.
                        } else {
                            headers.push(Header::Via(one.clone()));
                        }
                        vias.push(one);
                    }
                }
                other => headers.push(other.clone()),
            }
        }
        let Some(top) = vias.first() else {
            tracing::debug!("SIP: response without Via dropped");
            return;
        };
        if r.status_code == StatusCode::Trying {
            return; // hop by hop: not forwarded (RFC 3261 §16.7)
        }
        if !top.uri().is_ok_and(|u| self.is_me(&u)) {
            tracing::debug!(via = %top.value(), "SIP: response whose top Via is not ours dropped");
            return;
        }
        let Some(to) = vias.get(1).and_then(via_target) else {
            tracing::debug!("SIP: response with no Via after ours dropped");
            return;
        };
        r.headers = headers;
        let bytes = raw::with_status_line(r.to_string(), status_line).into_bytes();
        if let Hop::Node(n) = to {
            if self.streams.get(&n).is_none_or(|w| w.is_closed()) {
                // Opening the stream waits for the overlay: not on the receive loop.
                let me = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = me.send(bytes, to).await {
                        tracing::debug!(%to, error = %e, "SIP: response not forwarded");
                    }
                });
                return;
            }
        }
        if let Err(e) = self.send(bytes, to).await {
            tracing::debug!(%to, error = %e, "SIP: response not forwarded");
        }
    }

    async fn request(self: &Arc<Self>, mut req: Request, src: Hop) -> anyhow::Result<()> {
        // Where the sender really is (RFC 3261 §18.2.1, RFC 3581); a node's Via names it.
        if let Hop::Udp(a) | Hop::Tcp(a) = src {
            self.mark_received(&mut req, a);
            self.know(a, Instant::now() + SOURCE_MEMORY);
        }
        if let Some(why) = malformed(&req) {
            let status = StatusCode::Other(400, raw::phrase(&why));
            self.reply_status(&req, status, vec![], src).await;
            bail!("{} answered 400: {why}", req.method);
        }
        // The ACK of a final answer we gave ourselves ends here (its To tag is ours).
        if req.method == Method::Ack && to_tag(&req).is_some_and(|t| t.starts_with(raw::LOCAL_TAG))
        {
            return Ok(());
        }
        // The CANCEL, ACK or retransmission of a request we forked.
        if !self.forks_in.is_empty() && self.fork_request(&req, src).await {
            return Ok(());
        }
        let mf = req
            .max_forwards_header()
            .ok()
            .and_then(|h| h.num().ok())
            .unwrap_or(MAX_FORWARDS);
        // OPTIONS for the front-end itself (its address or the bare domain), or one that
        // may go no further: answered here (RFC 3261 sections 11 and 16.3), as the
        // health checks of dispatchers in front want.
        let for_us = req.uri.auth.is_none()
            && (self.is_me(&req.uri)
                || matches!(&req.uri.host_with_port.host, rsip::Host::Domain(d)
                    if d.to_string().eq_ignore_ascii_case(&self.cfg.domain)));
        if req.method == Method::Options && (mf == 0 || for_us) {
            self.reply(&req, 200, capabilities(), src).await;
            return Ok(());
        }
        if mf == 0 {
            self.reply(&req, 483, vec![], src).await;
            return Ok(());
        }
        if mf > MAX_FORWARDS {
            for h in req.headers.iter_mut() {
                if let Header::MaxForwards(m) = h {
                    *m = rsip::headers::MaxForwards::new(MAX_FORWARDS.to_string());
                }
            }
        }
        // Loop detection (RFC 3261 section 16.3 item 4): one of our own Vias whose loop
        // part matches this very request (same Request-URI, dialog and CSeq) means it
        // came round to us again.
        let key = loop_key(&req);
        let me = self.me();
        let looped = req.headers.iter().any(|h| match h {
            Header::Via(v) => v.value().split(',').any(|one| {
                let one = one.trim();
                one.starts_with("SIP/2.0/") && one.contains(&me) && one.contains(&format!(".{key}"))
            }),
            _ => false,
        });
        if looped {
            self.reply(&req, 482, vec![], src).await;
            bail!("loop detected: {} came back to this front-end", req.uri);
        }
        if !self.authorized(&req, src).await? {
            return Ok(());
        }
        // Loose routing: a top Route naming us is consumed; another one is followed.
        let routes = route_uris(&req);
        let mut routes = routes.into_iter().peekable();
        // Our entries, two where we double-record-routed.
        while routes.peek().is_some_and(|u| self.is_me(u)) {
            routes.next();
            pop_route(&mut req);
        }
        if let Some(next) = routes.next() {
            let to = route_hop(&next).ok_or_else(|| anyhow!("Route {next} has no IP host"))?;
            if !self.may_send_to(to) {
                self.reply(&req, 403, vec![], src).await;
                bail!("Route {next} names neither a node nor a device known here");
            }
            return self.forward(req, to, None).await;
        }
        match req.method {
            Method::Register => self.register(req, src).await,
            _ => self.route(req, src).await,
        }
    }

    /// Whether `req` may go on: an initial INVITE, MESSAGE or SUBSCRIBE from a phone whose
    /// From names a user of our domain must carry that user's credentials
    /// (Proxy-Authorization); else it is answered 407 (challenge) or 403 here and false
    /// returned.
    async fn authorized(self: &Arc<Self>, req: &Request, src: Hop) -> anyhow::Result<bool> {
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
    ) -> anyhow::Result<bool> {
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
                bail!("{who} sent a {} in the name of {user}", req.method);
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

    /// REGISTER: the binding is kept here and stored in the overlay under hash(AOR).
    async fn register(self: &Arc<Self>, req: Request, src: Hop) -> anyhow::Result<()> {
        let to = req.to_header()?.typed()?;
        let Some(aor) = aor_of(&to.uri, &self.cfg.domain) else {
            self.reply(&req, 400, vec![], src).await;
            bail!("REGISTER To has no user part");
        };
        let Some(user) = self.domain_user(&to.uri) else {
            self.reply(&req, 403, vec![], src).await;
            bail!(
                "REGISTER for {aor}: this front-end serves the domain {}",
                self.cfg.domain
            );
        };
        if let Some(auth) = &self.cfg.auth {
            if !self.authenticate(&req, src, auth, &user, false).await? {
                return Ok(());
            }
        }
        let default_expires = req
            .expires_header()
            .and_then(|e| e.seconds().ok())
            .unwrap_or(3600);
        let explicit_expires = req.expires_header().and_then(|e| e.seconds().ok());
        // Every Contact of every Contact header, each a change of one binding.
        let mut changes = Vec::new();
        let mut star = false;
        for h in req.contact_headers() {
            match contact::parse(h.value()) {
                Some(contact::Contacts::Star) => star = true,
                Some(contact::Contacts::List(l)) if !l.is_empty() => {
                    for c in l {
                        let expires = c.expires().unwrap_or(default_expires);
                        changes.push((c, expires));
                    }
                }
                _ => {
                    self.reply(&req, 400, vec![], src).await;
                    bail!("REGISTER of {aor}: malformed Contact {:?}", h.value());
                }
            }
        }
        // The proxies the REGISTER came through (RFC 3327), nearest the phone last.
        let path: Vec<String> = req
            .headers
            .iter()
            .filter_map(|h| match h {
                Header::Other(n, v) if n.eq_ignore_ascii_case("path") => Some(v.clone()),
                _ => None,
            })
            .flat_map(|v| {
                contact::split_outside(&v, ',')
                    .into_iter()
                    .map(|e| e.trim().to_string())
                    .filter(|e| !e.is_empty())
                    .collect::<Vec<_>>()
            })
            .collect();
        let path_hop = match path.first() {
            Some(first) => match path_hop(first) {
                Some(h @ (Hop::Udp(_) | Hop::Tcp(_))) => Some(h),
                _ => {
                    self.reply(&req, 400, vec![], src).await;
                    bail!("REGISTER of {aor}: Path {first} names no address");
                }
            },
            None => None,
        };
        let changes: Vec<registrar::Change> = if star {
            // RFC 3261 section 10.3 step 6: `*` only alone, with Expires 0.
            if explicit_expires != Some(0) || !changes.is_empty() {
                self.reply(&req, 400, vec![], src).await;
                bail!("REGISTER of {aor}: Contact * needs Expires: 0 and no other Contact");
            }
            self.devices_of(&aor)
                .into_iter()
                .map(|d| registrar::Change {
                    contact: d.contact,
                    prefs: d.prefs,
                    instance: d.instance,
                    hop: d.hop,
                    expires: 0,
                    path: d.path,
                })
                .collect()
        } else {
            let mut out = Vec::with_capacity(changes.len());
            for (c, expires) in changes {
                let curi = match rsip::Uri::try_from(c.uri.as_str()) {
                    Ok(u) => u,
                    Err(_) if expires == 0 => rsip::Uri::default(),
                    Err(_) => {
                        self.reply(&req, 400, vec![], src).await;
                        bail!("REGISTER of {aor}: Contact URI {} not understood", c.uri);
                    }
                };
                if expires > 0 && expires < self.cfg.min_expires {
                    let extra = vec![Header::MinExpires(rsip::headers::MinExpires::new(
                        self.cfg.min_expires.to_string(),
                    ))];
                    self.reply(&req, 423, extra, src).await;
                    return Ok(());
                }
                // A device on TCP is reached on its connection; a Contact asking for TCP
                // over TCP wherever the REGISTER came from; else at its Contact address.
                let hop = match (src, route_hop(&curi)) {
                    (Hop::Tcp(a), _) => Hop::Tcp(a),
                    (_, Some(h @ Hop::Tcp(_))) => h,
                    (_, Some(Hop::Udp(a))) => Hop::Udp(a),
                    // A `node` parameter in a phone's Contact means nothing.
                    (_, Some(Hop::Node(_))) | (_, None) => match (uri_addr(&curi), src) {
                        (Some(a), _) | (None, Hop::Udp(a)) => Hop::Udp(a),
                        _ if expires == 0 => src,
                        _ => {
                            self.reply(&req, 400, vec![], src).await;
                            bail!("{aor}: Contact {} has no address", c.uri);
                        }
                    },
                };
                out.push(registrar::Change {
                    instance: registrar::instance_of(&c),
                    prefs: c.params_text(),
                    contact: c.uri,
                    hop,
                    expires: expires.min(self.cfg.max_expires),
                    path: path.clone(),
                });
            }
            out
        };
        if changes.is_empty() {
            // A query: answer with the current bindings.
            let extra = self.contact_header_for(&aor);
            self.reply(&req, 200, extra, src).await;
            return Ok(());
        }
        let devices = match self.bind(&aor, &user, &changes).await {
            Ok(d) => d,
            Err(Unbound::TooManyDevices) => {
                let status = StatusCode::Other(403, "Too Many Devices".into());
                self.reply_status(&req, status, vec![], src).await;
                bail!(
                    "REGISTER of {aor}: more than {} devices",
                    registrar::MAX_DEVICES
                );
            }
            Err(Unbound::NotStored(why)) => {
                self.reply(&req, 503, vec![], src).await;
                bail!("storing the registration of {aor} failed: {why}");
            }
        };
        if let (Some(Hop::Udp(a) | Hop::Tcp(a)), Some(until)) =
            (path_hop, devices.iter().map(|d| d.expires).max())
        {
            self.know(a, until);
        }
        for c in &changes {
            if c.expires == 0 {
                crate::remote_log!(info, "sip_unregistered", %aor, contact = %c.contact, "SIP: unregistered");
            } else {
                crate::remote_log!(info, "sip_registered", %aor, contact = %c.contact, expires = c.expires, devices = devices.len(), "SIP: registered");
            }
        }
        let mut extra = self.contact_header_for(&aor);
        if !path.is_empty() {
            extra.push(Header::Other("Path".into(), path.join(", ")));
        }
        self.reply(&req, 200, extra, src).await;
        Ok(())
    }

    /// Applies `changes` to `aor`'s devices here, stores the result in the overlay and
    /// remembers the devices' addresses as ones requests may go to; the devices after.
    async fn bind(
        self: &Arc<Self>,
        aor: &str,
        user: &str,
        changes: &[registrar::Change],
    ) -> Result<Vec<registrar::Device>, Unbound> {
        let now = Instant::now();
        let devices = {
            let mut e = self.bindings.entry(aor.to_string()).or_default();
            let d = registrar::apply(&e, changes, now).map_err(|_| Unbound::TooManyDevices)?;
            *e = d.clone();
            d
        };
        if devices.is_empty() {
            self.bindings.remove_if(aor, |_, v| v.is_empty());
        }
        self.store_bindings(aor, user, &devices, now)
            .await
            .map_err(Unbound::NotStored)?;
        for d in &devices {
            if let Hop::Udp(a) | Hop::Tcp(a) = d.hop {
                self.know(a, d.expires);
            }
        }
        Ok(devices)
    }

    /// The devices of `aor` bound here (expired ones included).
    fn devices_of(&self, aor: &str) -> Vec<registrar::Device> {
        self.bindings
            .get(aor)
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// The GRUU of device `d` of `aor` here (RFC 5627 pub-gruu).
    fn gruu(&self, aor: &str, d: &registrar::Device) -> String {
        format!("{aor};gr={:#}-{}", self.node.id, d.id)
    }

    /// Stores this front-end's entry of `aor` in the overlay: every device bound here
    /// (none: an expired entry, so that calls get 480), signed for the AOR.
    async fn store_bindings(
        self: &Arc<Self>,
        aor: &str,
        user: &str,
        devices: &[registrar::Device],
        now: Instant,
    ) -> Result<(), String> {
        let now_wall = now_ms();
        let at = |i: Instant| now_wall + i.saturating_duration_since(now).as_millis() as u64;
        let pb_devices: Vec<pb::SipDevice> = devices
            .iter()
            .map(|d| pb::SipDevice {
                contact: d.contact.clone(),
                instance: d.instance.clone().unwrap_or_default(),
                expires_at: at(d.expires),
                gruu: self.gruu(aor, d),
            })
            .collect();
        let first = pb_devices.first().cloned().unwrap_or_default();
        let latest = devices.iter().map(|d| d.expires).max().unwrap_or(now);
        let value = pb::SipRegistration {
            target: Some(RegTarget::Destination(pb::SipDestination {
                node: self.node.id.to_bytes().to_vec(),
                contact: first.contact,
                contact_prefs: devices.first().map(|d| d.prefs.clone()).unwrap_or_default(),
                expires_at: at(latest),
                gruu: first.gruu,
                devices: pb_devices,
            })),
        }
        .encode_to_vec();
        let resource = Id::hash_of(aor.as_bytes());
        let left = latest.saturating_duration_since(now).as_secs();
        let lifetime = u32::try_from(left)
            .unwrap_or(u32::MAX)
            .saturating_add(EXPIRED_GRACE_S);
        let signer = match &self.certified {
            Some(c) => Some(c.identity(user, aor)?),
            None => None,
        };
        let name = aor.to_string();
        let stored = tokio::time::timeout(
            OP_TIMEOUT,
            self.node.op(move |n, t| {
                let who = signer
                    .unwrap_or_else(|| identities::derived(&n.identity().key.to_bytes(), &name));
                let (res, v) = crate::cli::ops::build_value(
                    &who,
                    &name,
                    KIND_SIP_REGISTRATION,
                    &value,
                    t,
                    lifetime,
                );
                debug_assert_eq!(res, resource);
                n.store(t, res, KIND_SIP_REGISTRATION, vec![v], 0)
            }),
        )
        .await;
        match stored {
            Ok(Ok(Event::Completed { outcome: Ok(_), .. })) => Ok(()),
            Err(_) => Err("timed out".to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(Event::Completed {
                outcome: Err(e), ..
            })) => Err(format!("{e:?}")),
            Ok(Ok(_)) => Err("unexpected event".into()),
        }
    }

    /// The Contact headers of the 200 to a REGISTER: every binding of `aor` here, with
    /// its expiry and GRUU.
    fn contact_header_for(&self, aor: &str) -> Vec<Header> {
        let now = Instant::now();
        self.devices_of(aor)
            .iter()
            .filter(|d| d.expires > now)
            .map(|d| {
                let left = d.expires.saturating_duration_since(now).as_secs();
                let instance = d
                    .instance
                    .as_ref()
                    .map(|i| format!(";+sip.instance=\"<{i}>\""))
                    .unwrap_or_default();
                Header::Contact(rsip::headers::Contact::new(format!(
                    "<{}>;expires={left}{instance};pub-gruu=\"{}\"",
                    d.contact,
                    self.gruu(aor, d)
                )))
            })
            .collect()
    }

    /// A request for an AOR: delivered to a device bound here, or carried to the node
    /// that holds the callee's registration.
    async fn route(self: &Arc<Self>, mut req: Request, src: Hop) -> anyhow::Result<()> {
        if req.method == Method::Invite {
            // Finding the callee may take a few overlay round trips: 100 Trying stops the
            // previous hop retransmitting the INVITE meanwhile (RFC 3261 §16.2).
            self.reply(&req, 100, vec![], src).await;
        }
        // A device's own address (the remote target of a dialog): straight there.
        if matches!(req.uri.host_with_port.host, rsip::Host::IpAddr(_)) && !self.is_me(&req.uri) {
            let to = route_hop(&req.uri).ok_or_else(|| anyhow!("no address in {}", req.uri))?;
            // Only to devices known here: no open relay, no requests to arbitrary hosts.
            if !self.may_send_to(to) {
                self.reply(&req, 403, vec![], src).await;
                crate::remote_log!(info, "sip_relay_refused", %src, uri = %req.uri, "SIP: request to a host that is no device known here refused");
                return Ok(());
            }
            return self.forward(req, to, None).await;
        }
        let Some(mut aor) = aor_of(&req.uri, &self.cfg.domain) else {
            self.reply(&req, 404, vec![], src).await;
            bail!("request URI {} names no user", req.uri);
        };
        let gr = gr_param(&req.uri);
        // A URI naming this front-end by address means the user of our domain: the
        // request goes on for the AOR itself (else the front-end holding the binding
        // would take the URI for a device and send it back here).
        if self.is_me(&req.uri) {
            let canonical = match &gr {
                Some(g) => format!("{aor};gr={g}"),
                None => aor.clone(),
            };
            req.uri = rsip::Uri::try_from(canonical.as_str())?;
        }
        // Where the AOR is: its devices here and the other front-ends holding some
        // (following URI indirections a few times). A GRUU names one node and device.
        let (gr_node, gr_device) = match gr.as_deref().map(|g| g.split_once('-').unwrap_or((g, "")))
        {
            Some((n, d)) => (Some(n.to_string()), (!d.is_empty()).then(|| d.to_string())),
            None => (None, None),
        };
        let here = gr_node
            .as_deref()
            .is_none_or(|n| n == format!("{:#}", self.node.id));
        let now = Instant::now();
        let mut targets: Vec<Target> = Vec::new();
        let mut expired = false;
        if here {
            let mut devices = self.devices_of(&aor);
            devices.retain(|d| gr_device.as_deref().is_none_or(|g| g == d.id));
            expired = devices.iter().any(|d| d.expires <= now);
            // The most recently refreshed first.
            devices.retain(|d| d.expires > now);
            devices.sort_by_key(|d| std::cmp::Reverse(d.expires));
            for d in devices {
                targets.push(Target::device(&d)?);
            }
        }
        // A GRUU naming this node needs no overlay lookup: its device is here or gone.
        let only_here = gr_node.is_some() && here;
        let mut resolved = Resolved::Nobody;
        for _ in 0..(if only_here { 0 } else { 4 }) {
            resolved = self.resolve(&aor, gr_node.as_deref()).await?;
            match &resolved {
                Resolved::Uri(u) => aor = u.clone(),
                _ => break,
            }
        }
        match resolved {
            Resolved::Uri(_) if targets.is_empty() => {
                self.reply(&req, 482, vec![], src).await;
                bail!("{aor}: too many URI indirections");
            }
            Resolved::Nodes(nodes) => {
                // Our own entry with no device here: they were lost in a restart (the
                // phones will register again).
                if nodes.contains(&self.node.id) && targets.is_empty() {
                    expired = true;
                }
                for n in nodes.into_iter().filter(|n| *n != self.node.id) {
                    targets.push(Target {
                        hop: Hop::Node(n),
                        uri: req.uri.clone(),
                        routes: Vec::new(),
                    });
                }
            }
            Resolved::Expired => expired = true,
            _ => {}
        }
        if targets.is_empty() {
            if expired {
                self.reply(&req, 480, vec![], src).await;
                bail!("{aor}: registration expired");
            }
            self.reply(&req, 404, vec![], src).await;
            bail!("{aor}: not registered");
        }
        if targets.len() > 1 && matches!(req.method, Method::Invite | Method::Message) {
            return self.fork(req, src, targets).await;
        }
        let t = targets.swap_remove(0);
        if let Hop::Node(n) = t.hop {
            if let Err(e) = self.stream_to(n).await {
                self.reply(&req, 480, vec![], src).await;
                return Err(e);
            }
        }
        let hop = t.hop;
        t.apply(&mut req);
        self.forward(req, hop, Some(src)).await
    }

    async fn resolve(&self, aor: &str, gr: Option<&str>) -> anyhow::Result<Resolved> {
        let res = Id::hash_of(aor.as_bytes());
        let ev = tokio::time::timeout(
            OP_TIMEOUT,
            self.node
                .op(move |n, t| n.fetch_kind(t, res, KIND_SIP_REGISTRATION)),
        )
        .await
        .map_err(|_| anyhow!("fetching {aor} timed out"))??;
        let Event::Completed { outcome, .. } = ev else {
            bail!("unexpected event");
        };
        let ans = match outcome {
            Ok(Body::FetchAns(a)) => a,
            Ok(b) => bail!("unexpected answer {}", b.method_name()),
            Err(e) => bail!("fetching {aor}: {e:?}"),
        };
        let now = now_ms();
        let mut nodes: Vec<(u64, NodeId)> = Vec::new();
        let mut expired = false;
        for v in crate::cli::ops::values_of(&ans) {
            let Ok(reg) = pb::SipRegistration::decode(v.as_slice()) else {
                continue;
            };
            match reg.target {
                Some(RegTarget::Uri(u)) => return Ok(Resolved::Uri(u)),
                Some(RegTarget::Destination(d)) => {
                    let Some(node) = Id::from_slice(&d.node) else {
                        continue;
                    };
                    if gr.is_some_and(|g| g != format!("{node:#}")) {
                        continue;
                    }
                    if d.expires_at <= now {
                        expired = true;
                    } else {
                        nodes.push((d.expires_at, node));
                    }
                }
                None => {}
            }
        }
        // The freshest first.
        nodes.sort_by_key(|(e, _)| std::cmp::Reverse(*e));
        nodes.dedup_by_key(|(_, n)| *n);
        Ok(if !nodes.is_empty() {
            Resolved::Nodes(nodes.into_iter().map(|(_, n)| n).collect())
        } else if expired {
            Resolved::Expired
        } else {
            Resolved::Nobody
        })
    }

    /// Sends a request on with our Via on top; and, when it came from `record`, our
    /// Record-Route: one naming the transport of each leg (RFC 5658 double record-routing
    /// when the leg towards `to` and the one it came from differ), the top one for the
    /// side `to` is on.
    async fn forward(
        self: &Arc<Self>,
        req: Request,
        to: Hop,
        record: Option<Hop>,
    ) -> anyhow::Result<()> {
        let (_, req) = self.prepare(req, to, record)?;
        self.send(req.to_string().into_bytes(), to).await
    }

    /// The request [`Inner::forward`] sends, and the branch of our Via in it.
    fn prepare(
        &self,
        mut req: Request,
        to: Hop,
        record: Option<Hop>,
    ) -> anyhow::Result<(String, Request)> {
        let mf = req
            .max_forwards_header()
            .ok()
            .and_then(|h| h.num().ok())
            .unwrap_or(70);
        let top_branch = req
            .via_header()
            .ok()
            .map(|v| v.value().to_string())
            .unwrap_or_default();
        // Stateless proxy branch (RFC 3261 §16.11): the same for retransmissions.
        let branch = format!(
            "{}.{}",
            hex::encode(
                &Sha256::digest(
                    format!("{}|{top_branch}|{}|{to}", self.node.id, req.uri).as_bytes()
                )[..10],
            ),
            loop_key(&req)
        );
        if top_branch.contains(&format!("{COOKIE}{branch}")) {
            bail!("loop: the request already went through us");
        }
        // Towards a node: TLS (a secure stream: QUIC) and our Node-ID, so that responses
        // and in-dialog requests come back over an application stream too.
        let node = format!(";{NODE_PARAM}={:#}", self.node.id);
        let (transport, via_node) = match to {
            Hop::Udp(_) => ("UDP", ""),
            Hop::Tcp(_) => ("TCP", ""),
            Hop::Node(_) => ("TLS", node.as_str()),
        };
        let mut headers = Headers::default();
        headers.push(Header::Via(rsip::headers::Via::new(format!(
            "SIP/2.0/{transport} {};branch={COOKIE}{branch}{via_node}",
            self.me()
        ))));
        // Only requests that may start a dialog (no To tag yet) are record-routed.
        let initial = to_tag(&req).is_none();
        if let Some(from) = record.filter(|_| req.method != Method::Register && initial) {
            let entry = |leg: Hop| {
                let t = if matches!(leg, Hop::Tcp(_)) {
                    ";transport=tcp"
                } else {
                    ""
                };
                format!("<sip:{}{t};lr{node}>", self.me())
            };
            let (towards, back) = (entry(to), entry(from));
            let same = towards == back;
            headers.push(Header::RecordRoute(rsip::headers::RecordRoute::new(
                towards,
            )));
            if !same {
                headers.push(Header::RecordRoute(rsip::headers::RecordRoute::new(back)));
            }
        }
        for h in req.headers.iter() {
            match h {
                Header::MaxForwards(_) => headers.push(Header::MaxForwards(
                    rsip::headers::MaxForwards::new((mf.saturating_sub(1)).to_string()),
                )),
                other => headers.push(other.clone()),
            }
        }
        if req.max_forwards_header().is_err() {
            headers.push(Header::MaxForwards(rsip::headers::MaxForwards::new("69")));
        }
        req.headers = headers;
        Ok((format!("{COOKIE}{branch}"), req))
    }
}

/// What is wrong with a request's mandatory headers (RFC 3261 section 8.1.1), if anything.
fn malformed(req: &Request) -> Option<String> {
    let missing = |h: &str| Some(format!("Missing {h} header"));
    let bad = |h: &str| Some(format!("Malformed {h} header"));
    match req.via_header() {
        Err(_) => return missing("Via"),
        Ok(v) if v.typed().is_err() => return bad("Via"),
        _ => {}
    }
    match req.from_header() {
        Err(_) => return missing("From"),
        Ok(v) if v.typed().is_err() => return bad("From"),
        _ => {}
    }
    match req.to_header() {
        Err(_) => return missing("To"),
        Ok(v) if v.typed().is_err() => return bad("To"),
        _ => {}
    }
    if req.call_id_header().is_err() {
        return missing("Call-ID");
    }
    match req.cseq_header() {
        Err(_) => return missing("CSeq"),
        Ok(c) => match c.typed() {
            Err(_) => return bad("CSeq"),
            Ok(c) if c.method != req.method => {
                return Some("CSeq method is not the request's".into())
            }
            _ => {}
        },
    }
    match req.max_forwards_header() {
        Ok(m) if m.num().is_err() => bad("Max-Forwards"),
        _ => None,
    }
}

/// What the front-end supports, for an OPTIONS answer.
fn capabilities() -> Vec<Header> {
    vec![
        Header::Allow(rsip::headers::Allow::new(raw::ALLOW)),
        Header::Accept(rsip::headers::Accept::new("application/sdp")),
    ]
}

/// What identifies a request for loop detection (RFC 3261 section 16.3 item 4): its
/// Request-URI, Call-ID, From tag and CSeq number (not its Vias).
fn loop_key(req: &Request) -> String {
    let call_id = req
        .call_id_header()
        .map(|h| h.value().to_string())
        .unwrap_or_default();
    let from = req
        .from_header()
        .map(|h| h.value().to_string())
        .unwrap_or_default();
    let tag = from
        .split(";tag=")
        .nth(1)
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("");
    let cseq = req
        .cseq_header()
        .map(|h| {
            h.value()
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    hex::encode(&Sha256::digest(format!("{}|{call_id}|{tag}|{cseq}", req.uri).as_bytes())[..6])
}

/// Where a request for an AOR goes: a device here (through its Path, if it has one) or
/// another front-end.
struct Target {
    hop: Hop,
    uri: rsip::Uri,
    /// Route entries to add (a device's Path).
    routes: Vec<String>,
}

impl Target {
    fn device(d: &registrar::Device) -> anyhow::Result<Target> {
        let uri = rsip::Uri::try_from(d.contact.as_str())?;
        Ok(Target {
            hop: d.path.first().and_then(|p| path_hop(p)).unwrap_or(d.hop),
            uri,
            routes: d.path.clone(),
        })
    }

    /// Sets the Request-URI and adds the Route entries.
    fn apply(self, req: &mut Request) {
        req.uri = self.uri;
        for r in self.routes {
            req.headers
                .push(Header::Route(rsip::headers::Route::new(r)));
        }
    }
}

/// Why [`Inner::bind`] bound nothing.
enum Unbound {
    TooManyDevices,
    NotStored(String),
}

enum Resolved {
    /// Nodes holding unexpired bindings, the freshest first.
    Nodes(Vec<NodeId>),
    Uri(String),
    Expired,
    Nobody,
}

fn route_uris(req: &Request) -> Vec<rsip::Uri> {
    req.headers
        .iter()
        .filter_map(|h| match h {
            Header::Route(r) => r.typed().ok(),
            _ => None,
        })
        .flat_map(|r| r.uris().iter().map(|u| u.uri.clone()).collect::<Vec<_>>())
        .collect()
}

/// Removes the first Route entry (one URI of the first Route header).
fn pop_route(req: &mut Request) {
    let mut done = false;
    let mut out = Headers::default();
    for h in req.headers.iter() {
        match h {
            Header::Route(r) if !done => {
                done = true;
                if let Ok(t) = r.typed() {
                    let rest: Vec<String> =
                        t.uris().iter().skip(1).map(|u| u.to_string()).collect();
                    if !rest.is_empty() {
                        out.push(Header::Route(rsip::headers::Route::new(rest.join(", "))));
                    }
                }
            }
            other => out.push(other.clone()),
        }
    }
    req.headers = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_picked_port_taken_for_tcp_is_skipped() {
        // The kernel's first UDP port is one whose TCP port is taken (as happened in CI).
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = held.local_addr().unwrap();
        let mut calls = 0;
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (u, t) = bind_sockets(listen, || {
            calls += 1;
            if calls == 1 {
                std::net::UdpSocket::bind(taken)
            } else {
                std::net::UdpSocket::bind(listen)
            }
        })
        .expect("another port is tried");
        assert_ne!(u.local_addr().unwrap(), taken);
        assert_eq!(u.local_addr().unwrap(), t.local_addr().unwrap());
        assert_eq!(calls, 2);
        // A port the operator chose is not silently replaced.
        let err = bind_sockets(taken, || std::net::UdpSocket::bind(taken)).unwrap_err();
        assert!(format!("{err:#}").contains("binding TCP"), "{err:#}");
    }

    const INVITE: &str = "INVITE sip:alice@10.0.0.5:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.9:5070;branch=z9hG4bK-1;rport\r\n\
Route: <sip:10.0.0.5:5060;lr>, <sip:10.0.0.7:5060;lr>\r\n\
From: <sip:bob@p2psip>;tag=1\r\n\
To: <sip:alice@p2psip>\r\n\
Call-ID: c1\r\n\
CSeq: 1 INVITE\r\n\
Max-Forwards: 70\r\n\
Content-Length: 0\r\n\r\n";

    #[test]
    fn aor_of_names_the_user_at_the_domain() {
        let u = rsip::Uri::try_from("sip:Alice@10.0.0.5:5060").unwrap();
        assert_eq!(aor_of(&u, "p2psip").as_deref(), Some("sip:Alice@p2psip"));
        let u = rsip::Uri::try_from("sip:bob@Example.COM").unwrap();
        assert_eq!(aor_of(&u, "p2psip").as_deref(), Some("sip:bob@example.com"));
        let u = rsip::Uri::try_from("sip:10.0.0.5").unwrap();
        assert_eq!(aor_of(&u, "p2psip"), None);
        let u = rsip::Uri::try_from("sip:alice@p2psip;gr=abc").unwrap();
        assert_eq!(gr_param(&u).as_deref(), Some("abc"));
    }

    #[test]
    fn routes_are_read_in_order_and_popped_one_at_a_time() {
        let SipMessage::Request(mut r) = SipMessage::try_from(INVITE.as_bytes()).unwrap() else {
            panic!("not a request");
        };
        let routes = route_uris(&r);
        assert_eq!(
            routes.iter().filter_map(uri_addr).collect::<Vec<_>>(),
            vec![
                "10.0.0.5:5060".parse::<SocketAddr>().unwrap(),
                "10.0.0.7:5060".parse().unwrap()
            ]
        );
        pop_route(&mut r);
        let routes = route_uris(&r);
        assert_eq!(routes.len(), 1);
        assert_eq!(uri_addr(&routes[0]), "10.0.0.7:5060".parse().ok());
    }

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

    #[test]
    fn entries_naming_a_node_lead_to_its_application_stream() {
        let n = Id(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        let v = rsip::headers::Via::new(format!(
            "SIP/2.0/TLS 10.0.0.7:5060;branch=z9hG4bKabc;node={n:#}"
        ));
        assert_eq!(via_target(&v), Some(Hop::Node(n)));
        let r = rsip::Uri::try_from(format!("sip:10.0.0.7:5060;lr;node={n:#}").as_str()).unwrap();
        assert_eq!(route_hop(&r), Some(Hop::Node(n)));
        let r = rsip::Uri::try_from("sip:10.0.0.7:5070;lr;transport=tcp").unwrap();
        assert_eq!(
            route_hop(&r),
            Some(Hop::Tcp("10.0.0.7:5070".parse().unwrap()))
        );
        let r = rsip::Uri::try_from("sip:10.0.0.7;lr").unwrap();
        assert_eq!(
            route_hop(&r),
            Some(Hop::Udp("10.0.0.7:5060".parse().unwrap()))
        );
        // A malformed node parameter is not a node.
        let v = rsip::headers::Via::new("SIP/2.0/UDP 10.0.0.7:5060;branch=z9hG4bKabc;node=xyz");
        assert_eq!(
            via_target(&v),
            Some(Hop::Udp("10.0.0.7:5060".parse().unwrap()))
        );
    }

    #[test]
    fn a_tcp_stream_is_cut_into_messages_by_content_length() {
        let body = "v=0\r\n";
        let two = format!(
            "MESSAGE sip:a@p SIP/2.0\r\nVia: SIP/2.0/TCP 1.2.3.4;branch=z9hG4bKx\r\nContent-Length: {}\r\n\r\n{body}{INVITE}",
            body.len()
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut rd = two.as_bytes();
            let mut buf = Vec::new();
            let first = read_message(&mut rd, &mut buf).await.unwrap();
            assert!(first.ends_with(body.as_bytes()));
            let second = read_message(&mut rd, &mut buf).await.unwrap();
            assert_eq!(second, INVITE.as_bytes());
            assert!(read_message(&mut rd, &mut buf).await.is_none());
        });
    }
}
