//! The SIP front-end of a node (RFC 7904's SIP usage, for this overlay): a registrar that
//! stores bindings in the overlay and a stateless proxy that finds a callee's node through
//! the overlay, asks it where its front-end listens (AppAttach, application 5060) and
//! carries the request there; that node delivers it to the registered device. Responses
//! follow the Via headers back; in-dialog requests follow the Record-Route set. SIP
//! parsing is rsip's (a nom tokenizer); SIP itself stays standard: any UA can register
//! and call through any node.

use crate::runtime::NodeClient;
use anyhow::{anyhow, bail, Context};
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
/// An AppAttach answer is reused this long.
const ATTACH_CACHE: Duration = Duration::from_secs(60);
/// A registration's record stays in the overlay this long after it expired, so that a
/// call to it gets 480 (Temporarily Unavailable) instead of 404.
const EXPIRED_GRACE_S: u32 = 3600;
/// Largest SIP message accepted (UDP datagram or TCP message).
const MAX_MESSAGE: usize = 65_535;
/// Our Via branches start with the RFC 3261 magic cookie.
const COOKIE: &str = "z9hG4bK";

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
        Ok(SipSettings {
            listen,
            advertise,
            domain: c.domain.to_ascii_lowercase(),
            max_expires: c.max_expires_s,
            min_expires: c.min_expires_s,
        })
    }
}

/// A device bound at this node.
#[derive(Debug, Clone)]
struct Binding {
    contact: String,
    /// Where requests for the device go.
    addr: SocketAddr,
    tcp: bool,
    expires: Instant,
}

/// How a message came in (responses to it go back the same way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Udp,
    Tcp,
}

struct Inner {
    node: NodeClient,
    cfg: SipSettings,
    udp: UdpSocket,
    /// Bindings registered at this node, by AOR.
    bindings: DashMap<String, Binding>,
    /// Other nodes' front-ends, from AppAttach.
    attached: DashMap<NodeId, (SocketAddr, Instant)>,
    /// Open TCP connections, by remote address: their writers.
    tcp: DashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
}

/// A running front-end.
pub struct SipFrontEnd {
    pub addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for SipFrontEnd {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts the front-end on `cfg.listen` (UDP and TCP) and tells the node to give its
/// address out in AppAttach answers.
pub async fn start(node: NodeClient, cfg: SipSettings) -> anyhow::Result<SipFrontEnd> {
    let udp = UdpSocket::bind(cfg.listen)
        .await
        .with_context(|| format!("SIP: binding UDP {}", cfg.listen))?;
    let addr = udp.local_addr()?;
    let tcp = TcpListener::bind(addr)
        .await
        .with_context(|| format!("SIP: binding TCP {addr}"))?;
    let mut cfg = cfg;
    if cfg.advertise.port() == 0 {
        cfg.advertise.set_port(addr.port());
    }
    let advertise = cfg.advertise;
    node.with_core(move |core| {
        core.set_app_candidates(APP_SIP, vec![crate::runtime::candidate(advertise)])
    })
    .await;
    let inner = Arc::new(Inner {
        node,
        cfg,
        udp,
        bindings: DashMap::new(),
        attached: DashMap::new(),
        tcp: DashMap::new(),
    });
    tracing::info!(udp = %addr, tcp = %addr, advertised = %advertise, "SIP front-end listening");
    let i = inner.clone();
    let udp_task = tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            match i.udp.recv_from(&mut buf).await {
                Ok((n, src)) => i.clone().dispatch(buf[..n].to_vec(), src, Via::Udp).await,
                Err(e) => tracing::debug!(error = %e, "SIP: UDP receive"),
            }
        }
    });
    let i = inner.clone();
    let tcp_task = tokio::spawn(async move {
        loop {
            match tcp.accept().await {
                Ok((s, src)) => {
                    i.register_tcp(s, src);
                }
                Err(e) => tracing::debug!(error = %e, "SIP: TCP accept"),
            }
        }
    });
    Ok(SipFrontEnd {
        addr,
        tasks: vec![udp_task, tcp_task],
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Reads one SIP message from a stream: headers up to the blank line, then
/// Content-Length bytes of body. None at end of stream.
async fn read_message(s: &mut (impl AsyncReadExt + Unpin), buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
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
            if end + 4 + len <= buf.len() {
                let msg: Vec<u8> = buf.drain(..end + 4 + len).collect();
                return Some(msg);
            }
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

/// Where a response goes after we pop our Via: the next Via's received/rport or sent-by.
fn via_target(v: &rsip::headers::Via) -> Option<(SocketAddr, bool)> {
    let t = v.typed().ok()?;
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
    Some((addr, tcp))
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
                    v.push_str(&format!(";tag={tag}"));
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
        uri_addr(uri).is_some_and(|a| a == self.cfg.advertise || a == self.cfg.listen)
    }

    async fn send(self: &Arc<Self>, bytes: Vec<u8>, to: SocketAddr, tcp: bool) {
        tracing::debug!(
            %to,
            tcp,
            first = %String::from_utf8_lossy(bytes.split(|b| *b == b'\r').next().unwrap_or(&[])),
            "SIP: out"
        );
        if tcp {
            let w = self.tcp.get(&to).map(|w| w.clone());
            if let Some(w) = w {
                if w.send(bytes).await.is_ok() {
                    return;
                }
                self.tcp.remove(&to);
                return;
            }
            match TcpStream::connect(to).await {
                Ok(s) => {
                    let w = self.register_tcp(s, to);
                    let _ = w.send(bytes).await;
                }
                Err(e) => tracing::debug!(%to, error = %e, "SIP: TCP connect"),
            }
            return;
        }
        if let Err(e) = self.udp.send_to(&bytes, to).await {
            tracing::debug!(%to, error = %e, "SIP: UDP send");
        }
    }

    fn register_tcp(self: &Arc<Self>, s: TcpStream, peer: SocketAddr) -> mpsc::Sender<Vec<u8>> {
        let (mut rd, mut wr) = s.into_split();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
        self.tcp.insert(peer, tx.clone());
        tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if wr.write_all(&b).await.is_err() {
                    break;
                }
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            while let Some(m) = read_message(&mut rd, &mut buf).await {
                me.clone().dispatch(m, peer, Via::Tcp).await;
            }
            me.tcp.remove(&peer);
        });
        tx
    }

    async fn reply(
        self: &Arc<Self>,
        req: &Request,
        code: u16,
        extra: Vec<Header>,
        src: SocketAddr,
        via: Via,
    ) {
        if req.method == Method::Ack {
            return; // an ACK is never answered
        }
        let r = response(req, code, extra);
        let to = req
            .via_header()
            .ok()
            .and_then(via_target)
            .map_or(src, |(a, _)| if via == Via::Tcp { src } else { a });
        self.send(r.to_string().into_bytes(), to, via == Via::Tcp)
            .await;
    }

    /// Responses are sent on at once, in the order they came (a 180 must not overtake its
    /// 200); requests, which may wait for the overlay, each get a task.
    async fn dispatch(self: Arc<Self>, bytes: Vec<u8>, src: SocketAddr, via: Via) {
        if bytes.starts_with(b"SIP/") {
            self.handle(bytes, src, via).await;
        } else {
            tokio::spawn(self.handle(bytes, src, via));
        }
    }

    async fn handle(self: Arc<Self>, bytes: Vec<u8>, src: SocketAddr, via: Via) {
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return; // keep-alive
        }
        tracing::debug!(
            %src,
            first = %String::from_utf8_lossy(bytes.split(|b| *b == b'\r').next().unwrap_or(&[])),
            "SIP: in"
        );
        match SipMessage::try_from(bytes.as_slice()) {
            Ok(SipMessage::Request(r)) => {
                let method = r.method.to_string();
                if let Err(e) = self.request(r, src, via).await {
                    tracing::info!(%src, %method, error = %e, "SIP: request not handled");
                }
            }
            Ok(SipMessage::Response(r)) => self.response(r).await,
            Err(e) => tracing::debug!(%src, error = %e, "SIP: unparsable message dropped"),
        }
    }

    /// A response: pop our Via, send it on to the next one.
    async fn response(self: &Arc<Self>, mut r: Response) {
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
        let Some((to, tcp)) = vias.get(1).and_then(via_target) else {
            tracing::debug!("SIP: response with no Via after ours dropped");
            return;
        };
        r.headers = headers;
        self.send(r.to_string().into_bytes(), to, tcp).await;
    }

    async fn request(
        self: &Arc<Self>,
        mut req: Request,
        src: SocketAddr,
        via: Via,
    ) -> anyhow::Result<()> {
        // Where the sender really is (RFC 3261 §18.2.1, RFC 3581).
        self.mark_received(&mut req, src);
        let mf = req
            .max_forwards_header()
            .ok()
            .and_then(|h| h.num().ok())
            .unwrap_or(70);
        if mf == 0 {
            self.reply(&req, 483, vec![], src, via).await;
            return Ok(());
        }
        // Loose routing: a top Route naming us is consumed; another one is followed.
        let routes = route_uris(&req);
        let mut routes = routes.into_iter().peekable();
        if routes.peek().is_some_and(|u| self.is_me(u)) {
            routes.next();
            pop_route(&mut req);
        }
        if let Some(next) = routes.next() {
            let to = uri_addr(&next).ok_or_else(|| anyhow!("Route {next} has no IP host"))?;
            let tcp = next.to_string().contains("transport=tcp");
            return self.forward(req, to, tcp, false).await;
        }
        match req.method {
            Method::Register => self.register(req, src, via).await,
            _ => self.route(req, src, via).await,
        }
    }

    fn mark_received(&self, req: &mut Request, src: SocketAddr) {
        for h in req.headers.iter_mut() {
            if let Header::Via(v) = h {
                let Ok(t) = v.typed() else { return };
                let sent = uri_addr(&t.uri);
                if sent != Some(src) {
                    let mut s = v.value().to_string();
                    if sent.map(|a| a.ip()) != Some(src.ip()) {
                        s.push_str(&format!(";received={}", src.ip()));
                    }
                    if s.contains(";rport") && !s.contains(";rport=") {
                        s = s.replacen(";rport", &format!(";rport={}", src.port()), 1);
                    }
                    *v = rsip::headers::Via::new(s);
                }
                return;
            }
        }
    }

    /// REGISTER: the binding is kept here and stored in the overlay under hash(AOR).
    async fn register(
        self: &Arc<Self>,
        req: Request,
        src: SocketAddr,
        via: Via,
    ) -> anyhow::Result<()> {
        let to = req.to_header()?.typed()?;
        let Some(aor) = aor_of(&to.uri, &self.cfg.domain) else {
            self.reply(&req, 400, vec![], src, via).await;
            bail!("REGISTER To has no user part");
        };
        let default_expires = req
            .expires_header()
            .and_then(|e| e.seconds().ok())
            .unwrap_or(3600);
        let Some(contact) = req.contact_headers().first().map(|c| (*c).clone()) else {
            // A query: answer with the current binding.
            let extra = self.contact_header_for(&aor);
            self.reply(&req, 200, extra, src, via).await;
            return Ok(());
        };
        let (expires, contact_uri, prefs) = if contact.value().trim() == "*" {
            (0, String::new(), String::new())
        } else {
            let c = contact.typed()?;
            let exp = c
                .params
                .iter()
                .find_map(|p| match p {
                    rsip::Param::Expires(e) => e.value().parse().ok(),
                    _ => None,
                })
                .unwrap_or(default_expires);
            let prefs = c
                .params
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("");
            (exp, c.uri.to_string(), prefs)
        };
        if expires > 0 && expires < self.cfg.min_expires {
            let extra = vec![Header::MinExpires(rsip::headers::MinExpires::new(
                self.cfg.min_expires.to_string(),
            ))];
            self.reply(&req, 423, extra, src, via).await;
            return Ok(());
        }
        let expires = expires.min(self.cfg.max_expires);
        let expires_at = now_ms() + u64::from(expires) * 1000;
        let gruu = format!("{aor};gr={:#}", self.node.id);
        let value = pb::SipRegistration {
            target: Some(RegTarget::Destination(pb::SipDestination {
                node: self.node.id.to_bytes().to_vec(),
                contact: contact_uri.clone(),
                contact_prefs: prefs,
                expires_at,
                gruu: gruu.clone(),
            })),
        }
        .encode_to_vec();
        let resource = Id::hash_of(aor.as_bytes());
        let lifetime = expires + EXPIRED_GRACE_S;
        let name = aor.clone();
        let stored = tokio::time::timeout(
            OP_TIMEOUT,
            self.node.op(move |n, t| {
                // USER-NODE-MATCH wants the AOR as the signer's user name: the binding is
                // signed by an identity for this AOR derived from the node's own key (the
                // same one for every refresh, so a refresh replaces the entry).
                let mut h = Sha256::new();
                h.update(b"p2psip sip aor\0");
                h.update(n.identity().key.to_bytes());
                h.update(name.as_bytes());
                let who = p2psip_proto::security::Identity::from_seed(h.finalize().into(), &name);
                let (res, v) = crate::cli_ops::build_value(
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
            Ok(Ok(Event::Completed {
                outcome: Ok(ans),
                responder,
                ..
            })) => {
                if let Body::StoreAns(a) = &ans {
                    let replicas: Vec<String> = a
                        .kind_responses
                        .iter()
                        .flat_map(|k| k.replicas.iter())
                        .filter_map(|r| Id::from_slice(r))
                        .map(|r| r.to_string())
                        .collect();
                    tracing::debug!(%aor, responder = ?responder, ?replicas, "SIP: binding stored");
                }
            }
            other => {
                let why = match other {
                    Err(_) => "timed out".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Ok(Ok(Event::Completed {
                        outcome: Err(e), ..
                    })) => format!("{e:?}"),
                    Ok(Ok(_)) => "unexpected event".into(),
                };
                self.reply(&req, 503, vec![], src, via).await;
                bail!("storing the registration of {aor} failed: {why}");
            }
        }
        if expires == 0 {
            self.bindings.remove(&aor);
            tracing::info!(%aor, "SIP: unregistered");
            self.reply(&req, 200, vec![], src, via).await;
            return Ok(());
        }
        let curi = rsip::Uri::try_from(contact_uri.as_str())?;
        let addr = uri_addr(&curi).unwrap_or(src);
        self.bindings.insert(
            aor.clone(),
            Binding {
                contact: contact_uri.clone(),
                addr: if via == Via::Tcp { src } else { addr },
                tcp: via == Via::Tcp,
                expires: Instant::now() + Duration::from_secs(u64::from(expires)),
            },
        );
        tracing::info!(%aor, contact = %contact_uri, expires, "SIP: registered");
        let extra = vec![Header::Contact(rsip::headers::Contact::new(format!(
            "<{contact_uri}>;expires={expires};pub-gruu=\"{gruu}\""
        )))];
        self.reply(&req, 200, extra, src, via).await;
        Ok(())
    }

    fn contact_header_for(&self, aor: &str) -> Vec<Header> {
        self.bindings
            .get(aor)
            .filter(|b| b.expires > Instant::now())
            .map(|b| {
                let left = b
                    .expires
                    .saturating_duration_since(Instant::now())
                    .as_secs();
                vec![Header::Contact(rsip::headers::Contact::new(format!(
                    "<{}>;expires={left}",
                    b.contact
                )))]
            })
            .unwrap_or_default()
    }

    /// A request for an AOR: delivered to a device bound here, or carried to the node
    /// that holds the callee's registration.
    async fn route(
        self: &Arc<Self>,
        mut req: Request,
        src: SocketAddr,
        via: Via,
    ) -> anyhow::Result<()> {
        if req.method == Method::Invite {
            // Finding the callee may take a few overlay round trips: 100 Trying stops the
            // previous hop retransmitting the INVITE meanwhile (RFC 3261 §16.2).
            self.reply(&req, 100, vec![], src, via).await;
        }
        // A device's own address (the remote target of a dialog): straight there.
        if matches!(req.uri.host_with_port.host, rsip::Host::IpAddr(_)) && !self.is_me(&req.uri) {
            let to = uri_addr(&req.uri).ok_or_else(|| anyhow!("no address in {}", req.uri))?;
            let tcp = req
                .uri
                .to_string()
                .to_ascii_lowercase()
                .contains("transport=tcp");
            return self.forward(req, to, tcp, false).await;
        }
        let Some(mut aor) = aor_of(&req.uri, &self.cfg.domain) else {
            self.reply(&req, 404, vec![], src, via).await;
            bail!("request URI {} names no user", req.uri);
        };
        let gr = gr_param(&req.uri);
        // A device bound here.
        if gr
            .as_deref()
            .is_none_or(|g| g == format!("{:#}", self.node.id))
        {
            if let Some(b) = self.bindings.get(&aor).map(|b| b.clone()) {
                if b.expires <= Instant::now() {
                    self.reply(&req, 480, vec![], src, via).await;
                    bail!("{aor}: registration expired");
                }
                req.uri = rsip::Uri::try_from(b.contact.as_str())?;
                return self.forward(req, b.addr, b.tcp, true).await;
            }
        }
        // Else through the overlay, following URI indirections a few times.
        for _ in 0..4 {
            match self.resolve(&aor, gr.as_deref()).await? {
                Resolved::Uri(u) => aor = u,
                Resolved::Nobody => {
                    self.reply(&req, 404, vec![], src, via).await;
                    bail!("{aor}: not registered");
                }
                Resolved::Expired => {
                    self.reply(&req, 480, vec![], src, via).await;
                    bail!("{aor}: registration expired");
                }
                Resolved::Node(n) if n == self.node.id => {
                    // Our own record, but the binding is gone (this node restarted).
                    self.reply(&req, 480, vec![], src, via).await;
                    bail!("{aor}: registered here before a restart");
                }
                Resolved::Node(n) => {
                    let to = match self.attach(n).await {
                        Ok(a) => a,
                        Err(e) => {
                            self.reply(&req, 480, vec![], src, via).await;
                            return Err(e);
                        }
                    };
                    return self.forward(req, to, false, true).await;
                }
            }
        }
        self.reply(&req, 482, vec![], src, via).await;
        bail!("{aor}: too many URI indirections")
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
        let mut best: Option<(u64, NodeId)> = None;
        let mut expired = false;
        for v in crate::cli_ops::values_of(&ans) {
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
                    } else if best.is_none_or(|(e, _)| d.expires_at > e) {
                        best = Some((d.expires_at, node));
                    }
                }
                None => {}
            }
        }
        Ok(match best {
            Some((_, n)) => Resolved::Node(n),
            None if expired => Resolved::Expired,
            None => Resolved::Nobody,
        })
    }

    /// AppAttach: where node `n`'s SIP front-end listens.
    async fn attach(&self, n: NodeId) -> anyhow::Result<SocketAddr> {
        if let Some(a) = self.attached.get(&n) {
            if a.1 > Instant::now() {
                return Ok(a.0);
            }
        }
        let ev = tokio::time::timeout(
            OP_TIMEOUT,
            self.node.op(move |core, t| core.app_attach(t, n, APP_SIP)),
        )
        .await
        .map_err(|_| anyhow!("AppAttach to {n} timed out"))??;
        let Event::Completed { outcome, .. } = ev else {
            bail!("unexpected event");
        };
        let addr = match outcome {
            Ok(Body::AppAttachAns(a)) => a
                .candidates
                .iter()
                .find_map(crate::runtime::candidate_addr)
                .ok_or_else(|| anyhow!("AppAttach answer of {n} has no candidate"))?,
            Ok(b) => bail!("unexpected answer {}", b.method_name()),
            Err(e) => bail!("AppAttach to {n}: {e:?}"),
        };
        self.attached
            .insert(n, (addr, Instant::now() + ATTACH_CACHE));
        Ok(addr)
    }

    /// Sends a request on with our Via (and, when `record`, our Record-Route) on top.
    async fn forward(
        self: &Arc<Self>,
        mut req: Request,
        to: SocketAddr,
        tcp: bool,
        record: bool,
    ) -> anyhow::Result<()> {
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
        let branch = hex::encode(
            &Sha256::digest(format!("{}|{top_branch}|{}", self.node.id, req.uri).as_bytes())[..10],
        );
        if top_branch.contains(&format!("{COOKIE}{branch}")) {
            bail!("loop: the request already went through us");
        }
        let transport = if tcp { "TCP" } else { "UDP" };
        let mut headers = Headers::default();
        headers.push(Header::Via(rsip::headers::Via::new(format!(
            "SIP/2.0/{transport} {};branch={COOKIE}{branch}",
            self.me()
        ))));
        if record && req.method != Method::Register {
            headers.push(Header::RecordRoute(rsip::headers::RecordRoute::new(
                format!("<sip:{};lr>", self.me()),
            )));
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
        self.send(req.to_string().into_bytes(), to, tcp).await;
        Ok(())
    }
}

enum Resolved {
    Node(NodeId),
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
            Some(("192.0.2.1:6000".parse().unwrap(), false))
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
