//! The QUIC transport: one long-lived, mutually authenticated connection per neighbour
//! (quinn + rustls), one unidirectional stream per message (proto/SPEC.md section 2.6).
//!
//! The transport knows nothing of routing: it delivers `(from, bytes)` to the runtime,
//! sends bytes to a Node-ID it has a link to, and reports links coming up and going down.
//! The peer's Node-ID is always the one its certificate proves, never a claim.
//!
//! Application connections (AppAttach, proto/SPEC.md section 2.7) are separate QUIC
//! connections with their own ALPN: never overlay links, they carry bidirectional streams
//! that an application on this node (the SIP front-end) reads and writes.

mod apps;
pub(crate) mod limits;
mod links;
mod relay;

use crate::config::{Config, Limits};
use crate::tls;
use dashmap::DashMap;
use p2psip_algorithms::NodeId;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, IdleTimeout, RecvStream, SendStream, TransportConfig, VarInt};

use limits::{ByteWindows, ConnectionSlots, Queued, ReadRefusal, Slots, StreamBudget};
pub use p2psip_proto::control::parse_observed;
use p2psip_proto::control::{observed_frame, CONTROL_MAGIC};
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// QUIC application close code: the peer belongs to another overlay.
pub const CLOSE_WRONG_OVERLAY: u32 = 1;
/// QUIC application close code: the peer is not the node that was expected at that address.
pub const CLOSE_WRONG_NODE: u32 = 2;
/// QUIC application close code: orderly shutdown.
pub const CLOSE_SHUTDOWN: u32 = 3;
/// QUIC application close code: the peer did not acknowledge a message in time (the hop
/// acknowledgement, proto/SPEC.md 2.6).
pub const CLOSE_UNACKNOWLEDGED: u32 = 7;
/// Stream reset code on an application connection: no application of that number here.
pub const RESET_UNKNOWN_APP: u32 = 4;
/// Stream reset code: the relay refuses to carry the stream (relaying off, at its limit, or
/// no link to the target).
pub const RESET_RELAY_REFUSED: u32 = 5;
/// Stream reset code: the relay cut the stream (idle, or past its bytes or its
/// originator's bytes per minute).
pub const RESET_RELAY_CUT: u32 = 6;
/// Application number of a stream that asks its receiver to relay it (proto/SPEC.md 2.8).
pub const APP_RELAY: u32 = 0xFFFF_FFFF;
/// Bidirectional streams a peer may have open at once on an application connection.
const APP_STREAMS: u32 = 64;
/// What a hole punch sends: too short to be a QUIC packet, so every endpoint drops it.
const PUNCH: [u8; 4] = [0x00, b'p', b'n', b'h'];
/// A node found unreachable directly is reached through its relay for this long before
/// punching is tried again.
const RELAY_MEMORY: Duration = Duration::from_secs(60);
/// Nodes remembered as unpunchable at most (past it, ones older than `RELAY_MEMORY` go;
/// a node not remembered is simply punched again).
const UNPUNCHABLE_MAX: usize = 4096;
/// How long an application stream's opener has to send its application number.
const APP_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// An application stream a peer opened to us (after its application number).
pub struct AppStream {
    /// The Node-ID the peer proved.
    pub from: NodeId,
    pub send: SendStream,
    pub recv: RecvStream,
}

/// What the transport reports to the runtime.
#[derive(Debug)]
pub enum NetEvent {
    Message {
        from: NodeId,
        bytes: Vec<u8>,
        /// The message's share of the queue's bytes, given back when it is dropped.
        queued: Queued,
    },
    LinkUp {
        node: NodeId,
        addr: SocketAddr,
        /// This node opened the link (to the address it dialled); else the peer did.
        dialled: bool,
    },
    /// The link closed; `refused` carries the peer's reason when it refused us.
    LinkDown {
        node: NodeId,
        refused: Option<String>,
    },
    /// A peer reported the address it sees this node's link at (the reflexive address).
    Observed { by: NodeId, addr: SocketAddr },
    /// An outgoing connection attempt failed (`node` if a specific node was expected).
    ConnectFailed {
        node: Option<NodeId>,
        addr: SocketAddr,
        reason: String,
    },
}

struct Link {
    conn: Connection,
    tx: mpsc::Sender<Vec<u8>>,
}

/// Counters the transport keeps (exported as metrics).
#[derive(Default, Debug)]
pub struct TransportStats {
    pub queue_full_drops: AtomicU64,
    /// Received messages dropped because the queue to the runtime was full.
    pub event_queue_drops: AtomicU64,
    pub oversized_drops: AtomicU64,
    pub refused_connections: AtomicU64,
    /// Application streams opened to other nodes and accepted from them.
    pub app_streams_opened: AtomicU64,
    pub app_streams_accepted: AtomicU64,
    /// Application connections opened directly (after a hole punch if needed) and
    /// application streams opened through a relay.
    pub app_direct: AtomicU64,
    pub app_relayed: AtomicU64,
    /// Direct attempts that failed within the punch timeout (the relay was tried next).
    pub punch_failed: AtomicU64,
    /// Streams this node relayed, refused to relay, carries now, and the bytes it carried.
    pub relay_streams: AtomicU64,
    pub relay_refused: AtomicU64,
    pub relay_active: AtomicU64,
    pub relay_bytes: AtomicU64,
    /// Relayed streams cut: idle, past the stream's bytes, past the originator's minute.
    pub relay_cut_idle: AtomicU64,
    pub relay_cut_stream_bytes: AtomicU64,
    pub relay_cut_originator_bytes: AtomicU64,
    /// Incoming streams given up: the connection's unfinished streams held their budget
    /// of bytes, or the stream was not finished within the read deadline.
    pub buffer_full_drops: AtomicU64,
    pub stream_timeouts: AtomicU64,
    /// Incoming connections refused before their handshake: too many open in total or
    /// from that address.
    pub connection_limit_refused: AtomicU64,
    /// Links closed because their peer did not acknowledge a message in time.
    pub unacknowledged_links: AtomicU64,
}

/// Where a node's application endpoint can be reached (the core's decision,
/// `p2psip_algorithms::reach`).
pub use p2psip_algorithms::reach::Reach;

/// How an application stream reached its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppPath {
    Direct,
    Relayed,
}

impl AppPath {
    pub fn as_str(self) -> &'static str {
        match self {
            AppPath::Direct => "direct",
            AppPath::Relayed => "relayed",
        }
    }
}

/// What this transport does for NATs (the `[nat]` table).
#[derive(Debug, Clone)]
pub struct NatPolicy {
    pub punch_timeout: Duration,
    pub relay: bool,
    pub relay_max_streams: usize,
    /// Relayed streams one originator may have open through this node.
    pub relay_max_per_originator: usize,
    /// What each relayed stream may use.
    pub relay_caps: relay::RelayCaps,
}

pub struct Transport {
    endpoint: Endpoint,
    /// The endpoint's UDP socket, for hole-punching packets sent from the same port.
    raw: std::net::UdpSocket,
    me: NodeId,
    sni: String,
    overlay: String,
    links: DashMap<NodeId, Link>,
    /// Client configuration of application connections (ALPN `p2psip-app/1`).
    app_client: quinn::ClientConfig,
    /// Application connections this node opened, by the node they go to.
    app_conns: DashMap<NodeId, Connection>,
    /// Applications served here: where their incoming streams go.
    apps: DashMap<u32, mpsc::Sender<AppStream>>,
    /// Application connections to relays, by the relay's address.
    relay_conns: DashMap<SocketAddr, Connection>,
    /// Nodes a direct attempt failed for, and when.
    unpunchable: DashMap<NodeId, std::time::Instant>,
    nat: NatPolicy,
    /// This node's own NAT maps each destination to a new port: its punches cannot open
    /// a way in for a node behind another NAT.
    symmetric: std::sync::atomic::AtomicBool,
    events: mpsc::Sender<NetEvent>,
    /// Bytes of the messages waiting in `events`.
    queued: Arc<StreamBudget>,
    limits: Limits,
    /// The hop acknowledgement's slack (`timers.hop_ack_slack_ms`); `None`: off.
    hop_ack_slack: Option<Duration>,
    /// Incoming connections open now (for the caps in total and per address).
    slots: Arc<ConnectionSlots>,
    /// Relayed streams open now (for the caps in total and per originator).
    relay_slots: Arc<Slots<NodeId>>,
    /// Bytes each originator's relayed streams carried this minute.
    relay_windows: ByteWindows<NodeId>,
    pub stats: TransportStats,
}

/// The SNI a node sends: derived from the overlay name, so a peer of another overlay can
/// refuse the connection with a clear reason.
fn sni_of(overlay: &str) -> String {
    format!("o{:08x}.p2psip", p2psip_proto::overlay_id(overlay))
}

/// Why the QUIC endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("QUIC TLS: {0}")]
    QuicTls(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    #[error("timers.idle_timeout_ms: {0}")]
    IdleTimeout(String),
    #[error("binding UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("QUIC endpoint on {addr}: {source}")]
    Endpoint {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no async runtime")]
    NoRuntime,
}

impl Transport {
    /// Binds the endpoint and starts accepting connections.
    pub fn bind(
        cfg: &Config,
        listen: SocketAddr,
        creds: &crate::identity::Credentials,
        events: mpsc::Sender<NetEvent>,
    ) -> Result<Arc<Transport>, TransportError> {
        let me = creds.identity.node_id;
        let (server_tls, client_tls) = tls::configs(
            creds.certs.clone(),
            creds.key.clone_key(),
            creds.trust.clone(),
            crate::metrics::label(me),
        )?;
        // Keep-alives from the dialling end only (proto/SPEC.md 2.8): its PINGs and the
        // acceptor's ACKs carry packets both ways, which holds the NAT mappings on both
        // sides and the idle timers of both ends; PINGs from both ends would double an idle
        // link's wake-ups for nothing.
        let transport = |keep_alive: bool| -> Result<TransportConfig, TransportError> {
            let mut t = TransportConfig::default();
            t.max_concurrent_uni_streams(VarInt::from_u32(cfg.limits.max_streams_per_connection));
            t.max_concurrent_bidi_streams(VarInt::from_u32(0));
            t.keep_alive_interval(
                keep_alive.then(|| Duration::from_millis(cfg.timers.keep_alive_ms)),
            );
            t.max_idle_timeout(Some(
                IdleTimeout::try_from(Duration::from_millis(cfg.timers.idle_timeout_ms))
                    .map_err(|e| TransportError::IdleTimeout(e.to_string()))?,
            ));
            Ok(t)
        };
        let t = Arc::new(transport(true)?);
        let mut server =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server_tls)?));
        server.transport_config(Arc::new(transport(false)?));
        let mut app_tls = client_tls.clone();
        app_tls.alpn_protocols = vec![tls::ALPN_APP.to_vec()];
        let mut client =
            quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client_tls)?));
        client.transport_config(t.clone());
        let mut app_client =
            quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(app_tls)?));
        app_client.transport_config(t);
        let bind = |source| TransportError::Bind {
            addr: listen,
            source,
        };
        let socket = std::net::UdpSocket::bind(listen).map_err(bind)?;
        socket.set_nonblocking(true).map_err(bind)?;
        let raw = socket.try_clone().map_err(bind)?;
        let runtime = quinn::default_runtime().ok_or(TransportError::NoRuntime)?;
        let mut endpoint = Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            runtime,
        )
        .map_err(|source| TransportError::Endpoint {
            addr: listen,
            source,
        })?;
        endpoint.set_default_client_config(client);
        let tr = Arc::new(Transport {
            endpoint,
            raw,
            me,
            sni: sni_of(&cfg.overlay),
            overlay: cfg.overlay.clone(),
            links: DashMap::new(),
            app_client,
            app_conns: DashMap::new(),
            apps: DashMap::new(),
            relay_conns: DashMap::new(),
            unpunchable: DashMap::new(),
            symmetric: std::sync::atomic::AtomicBool::new(false),
            nat: NatPolicy {
                punch_timeout: Duration::from_millis(cfg.nat.punch_timeout_ms),
                relay: cfg.nat.relay,
                relay_max_streams: cfg.nat.relay_max_streams,
                relay_max_per_originator: cfg.nat.relay_max_streams_per_originator,
                relay_caps: relay::RelayCaps {
                    idle: Duration::from_secs(cfg.nat.relay_idle_timeout_s),
                    stream_bytes: cfg.nat.relay_max_stream_bytes,
                    originator_per_min: cfg.nat.relay_originator_bytes_per_min,
                },
            },
            events,
            queued: Arc::default(),
            limits: cfg.limits.clone(),
            hop_ack_slack: Some(Duration::from_millis(cfg.timers.hop_ack_slack_ms))
                .filter(|d| !d.is_zero()),
            slots: Arc::default(),
            relay_slots: Arc::default(),
            relay_windows: ByteWindows::default(),
            stats: TransportStats::default(),
        });
        let acceptor = tr.clone();
        tokio::spawn(async move { acceptor.accept_loop().await });
        Ok(tr)
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    pub fn connection_count(&self) -> usize {
        self.links.len()
    }

    /// Some node with a link, other than `except`.
    pub fn any_link(&self, except: NodeId) -> Option<NodeId> {
        self.links.iter().map(|l| *l.key()).find(|k| *k != except)
    }

    /// Every node with a link.
    pub fn linked_nodes(&self) -> Vec<NodeId> {
        self.links.iter().map(|l| *l.key()).collect()
    }

    /// QUIC's round-trip estimate of each link.
    pub fn link_rtts(&self) -> Vec<(NodeId, std::time::Duration)> {
        self.links
            .iter()
            .map(|l| (*l.key(), l.value().conn.rtt()))
            .collect()
    }

    pub fn is_linked(&self, node: NodeId) -> bool {
        self.links.contains_key(&node)
    }

    /// Queues a message for a linked node. Fails when there is no link; drops (and counts)
    /// when the neighbour's queue is full, so a slow neighbour cannot make us buffer
    /// without bound.
    pub fn send(&self, to: NodeId, bytes: Vec<u8>) -> Result<(), Vec<u8>> {
        let Some(link) = self.links.get(&to) else {
            return Err(bytes);
        };
        match link.tx.try_send(bytes) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.queue_full_drops.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(b)) => Err(b),
        }
    }

    /// Incoming connections open now.
    pub fn incoming_connections(&self) -> usize {
        self.slots.open()
    }

    /// Closes every connection and the endpoint.
    pub async fn shutdown(&self) {
        for l in self.links.iter() {
            l.conn.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
        }
        for c in self.app_conns.iter() {
            c.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
        }
        for c in self.relay_conns.iter() {
            c.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
        }
        self.endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// Why a connection's peer names no Node-ID.
#[derive(Debug, thiserror::Error)]
pub enum PeerIdError {
    #[error("peer presented no certificate")]
    NoCertificate,
    #[error("peer certificate: {0}")]
    Certificate(String),
}

/// The Node-ID the connection's peer proved with its certificate.
pub fn peer_node_id(conn: &Connection) -> Result<NodeId, PeerIdError> {
    let certs = conn
        .peer_identity()
        .and_then(|i| i.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(PeerIdError::NoCertificate)?;
    let first = certs.first().ok_or(PeerIdError::NoCertificate)?;
    tls::node_id_of_cert(first).map_err(|e| PeerIdError::Certificate(e.to_string()))
}

/// Why an application stream to a node could not be opened (proto/SPEC.md 2.7).
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Its AppAttach answer named no address to try and no relay.
    #[error("node {0} has no candidates")]
    NoCandidates(NodeId),
    /// No direct connection came up and the node has no relay (each address's failure).
    #[error("application connection to {node}: {reasons}")]
    NoDirect { node: NodeId, reasons: String },
    /// Its relay could not be reached.
    #[error("relay {relay}: {why}")]
    Relay { relay: SocketAddr, why: String },
    /// The connection came up but the stream could not be opened or its head sent.
    #[error("application stream to {node}: {why}")]
    Stream { node: NodeId, why: String },
}

/// The address of the local interface that routes towards `to` (no packet is sent); None
/// when this host has no route there.
pub fn local_ip_towards(to: SocketAddr) -> Option<std::net::IpAddr> {
    let any: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let s = std::net::UdpSocket::bind(any).ok()?;
    s.connect(to).ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// Reads a stream's fixed-size head, or gives up after the header timeout.
async fn read_head<const N: usize>(recv: &mut RecvStream) -> Option<[u8; N]> {
    let mut head = [0u8; N];
    match tokio::time::timeout(APP_HEADER_TIMEOUT, recv.read_exact(&mut head)).await {
        Ok(Ok(())) => Some(head),
        _ => None,
    }
}
