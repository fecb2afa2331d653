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

use crate::config::{Config, Limits};
use crate::tls;
use anyhow::{anyhow, Context};
use dashmap::DashMap;
use p2psip_algorithms::NodeId;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, IdleTimeout, RecvStream, SendStream, TransportConfig, VarInt};

pub(crate) mod limits;
mod relay;
use limits::{ByteWindows, ConnectionSlots, Queued, ReadRefusal, Slots, StreamBudget};
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
/// First bytes of a link control stream (proto/SPEC.md 2.8); a message starts `D2 50 32 50`.
const CONTROL_MAGIC: [u8; 4] = [0xD2, 0x50, 0x32, 0x43];
/// Control frame type: the address the sender observed the link's peer at.
const CONTROL_OBSERVED: u8 = 1;
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
}

/// Where a node's application endpoint can be reached: its direct (host and reflexive)
/// addresses, and the peer that relays for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    pub direct: Vec<SocketAddr>,
    pub relay: Option<SocketAddr>,
    /// The node offers a reflexive address (it sits behind a NAT whose mapping a punch can
    /// use). A node with a relay but no reflexive address is behind a NAT that maps each
    /// destination anew: only its relay reaches it.
    pub reflexive: bool,
}

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

impl Transport {
    /// Binds the endpoint and starts accepting connections.
    pub fn bind(
        cfg: &Config,
        listen: SocketAddr,
        creds: &crate::identity::Credentials,
        events: mpsc::Sender<NetEvent>,
    ) -> anyhow::Result<Arc<Transport>> {
        let me = creds.identity.node_id;
        let (server_tls, client_tls) = tls::configs(
            creds.certs.clone(),
            creds.key.clone_key(),
            creds.trust.clone(),
            crate::runtime::label(me),
        )?;
        let mut t = TransportConfig::default();
        t.max_concurrent_uni_streams(VarInt::from_u32(cfg.limits.max_streams_per_connection));
        t.max_concurrent_bidi_streams(VarInt::from_u32(0));
        t.keep_alive_interval(Some(Duration::from_millis(cfg.timers.keep_alive_ms)));
        t.max_idle_timeout(Some(
            IdleTimeout::try_from(Duration::from_millis(cfg.timers.idle_timeout_ms))
                .map_err(|e| anyhow!("timers.idle_timeout_ms: {e}"))?,
        ));
        let t = Arc::new(t);
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(
            QuicServerConfig::try_from(server_tls).context("QUIC server TLS")?,
        ));
        server.transport_config(t.clone());
        let mut app_tls = client_tls.clone();
        app_tls.alpn_protocols = vec![tls::ALPN_APP.to_vec()];
        let mut client = quinn::ClientConfig::new(Arc::new(
            QuicClientConfig::try_from(client_tls).context("QUIC client TLS")?,
        ));
        client.transport_config(t.clone());
        let mut app_client = quinn::ClientConfig::new(Arc::new(
            QuicClientConfig::try_from(app_tls).context("QUIC client TLS")?,
        ));
        app_client.transport_config(t);
        let socket =
            std::net::UdpSocket::bind(listen).with_context(|| format!("binding UDP {listen}"))?;
        socket.set_nonblocking(true)?;
        let raw = socket.try_clone()?;
        let runtime = quinn::default_runtime().ok_or_else(|| anyhow!("no async runtime"))?;
        let mut endpoint = Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            runtime,
        )
        .with_context(|| format!("QUIC endpoint on {listen}"))?;
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
            slots: Arc::default(),
            relay_slots: Arc::default(),
            relay_windows: ByteWindows::default(),
            stats: TransportStats::default(),
        });
        let acceptor = tr.clone();
        tokio::spawn(async move { acceptor.accept_loop().await });
        Ok(tr)
    }

    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.endpoint.local_addr()?)
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

    async fn accept_loop(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let addr = incoming.remote_address();
            let slot = self.slots.take(
                addr.ip(),
                self.limits.max_connections,
                self.limits.max_connections_per_ip,
            );
            let Some(slot) = slot else {
                self.stats
                    .connection_limit_refused
                    .fetch_add(1, Ordering::Relaxed);
                self.stats
                    .refused_connections
                    .fetch_add(1, Ordering::Relaxed);
                incoming.refuse();
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(conn) => {
                        // The slot is held as long as the connection is open.
                        let c = conn.clone();
                        tokio::spawn(async move {
                            c.closed().await;
                            drop(slot);
                        });
                        if let Err(e) = me.admit(conn, None, true).await {
                            me.stats.refused_connections.fetch_add(1, Ordering::Relaxed);
                            crate::remote_log!(info, "incoming_refused", %addr, "refused incoming connection: {e}");
                        }
                    }
                    Err(e) => {
                        me.stats.refused_connections.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%addr, "incoming handshake failed: {e}");
                    }
                }
            });
        }
    }

    /// Incoming connections open now.
    pub fn incoming_connections(&self) -> usize {
        self.slots.open()
    }

    /// Connects to `addr`; with `expect`, the node there must be that Node-ID.
    pub fn connect(self: &Arc<Self>, addr: SocketAddr, expect: Option<NodeId>) {
        let me = self.clone();
        tokio::spawn(async move {
            let res = async {
                let conn = me
                    .endpoint
                    .connect(addr, &me.sni)
                    .map_err(|e| anyhow!("{e}"))?
                    .await
                    .map_err(|e| anyhow!("{e}"))?;
                me.admit(conn, expect, false).await
            }
            .await;
            if let Err(e) = res {
                let _ = me
                    .events
                    .send(NetEvent::ConnectFailed {
                        node: expect,
                        addr,
                        reason: e.to_string(),
                    })
                    .await;
            }
        });
    }

    /// Checks a fresh connection (overlay, Node-ID) and starts its reader and writer.
    async fn admit(
        self: &Arc<Self>,
        conn: Connection,
        expect: Option<NodeId>,
        incoming: bool,
    ) -> anyhow::Result<()> {
        let peer = peer_node_id(&conn)?;
        let mut app = false;
        if let Some(hd) = conn
            .handshake_data()
            .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        {
            app = hd.protocol.as_deref() == Some(tls::ALPN_APP);
            // On the accepting side the SNI names the overlay the peer wants.
            if let Some(sni) = hd.server_name.as_deref() {
                if sni != self.sni {
                    let reason =
                        format!("incompatible overlay: this peer serves {:?}", self.overlay);
                    conn.close(VarInt::from_u32(CLOSE_WRONG_OVERLAY), reason.as_bytes());
                    anyhow::bail!("peer {peer} asked for another overlay ({sni})");
                }
            }
        }
        if let Some(want) = expect {
            if want != peer {
                conn.close(VarInt::from_u32(CLOSE_WRONG_NODE), b"unexpected node");
                anyhow::bail!(
                    "{} is node {peer}, not the expected {want}",
                    conn.remote_address()
                );
            }
        }
        if peer == self.me {
            conn.close(VarInt::from_u32(CLOSE_WRONG_NODE), b"connected to self");
            anyhow::bail!("connected to itself");
        }
        if app {
            self.serve_app_connection(peer, conn);
            return Ok(());
        }
        let addr = conn.remote_address();
        if incoming {
            // Tell the peer where its packets come from (its reflexive address).
            let frame = observed_frame(addr);
            let c = conn.clone();
            tokio::spawn(async move {
                if let Ok(mut s) = c.open_uni().await {
                    let _ = s.write_all(&frame).await;
                    let _ = s.finish();
                }
            });
        } else {
            // The peer we dialled may relay application streams to us on this connection.
            self.serve_relayed(conn.clone());
        }
        if self.links.contains_key(&peer) {
            // Both ends connected at once: keep the existing link for sending, but read
            // from this one too until it closes.
            self.spawn_reader(peer, conn, false, !incoming);
            return Ok(());
        }
        let (tx, rx) = mpsc::channel(self.limits.send_queue.max(1));
        self.links.insert(
            peer,
            Link {
                conn: conn.clone(),
                tx,
            },
        );
        self.spawn_writer(conn.clone(), rx);
        self.spawn_reader(peer, conn, true, !incoming);
        let _ = self
            .events
            .send(NetEvent::LinkUp {
                node: peer,
                addr,
                dialled: !incoming,
            })
            .await;
        Ok(())
    }

    fn spawn_writer(&self, conn: Connection, mut rx: mpsc::Receiver<Vec<u8>>) {
        tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                let sent = async {
                    let mut s = conn.open_uni().await?;
                    s.write_all(&bytes).await?;
                    s.finish()?;
                    anyhow::Ok(())
                }
                .await;
                if sent.is_err() {
                    break;
                }
            }
        });
    }

    /// Reads the messages of a link. `dialled`: this node opened it, so the peer's link
    /// control frame (our observed address) is taken; on a link the peer opened, such a
    /// frame is a claim of a node that merely connected, and is ignored.
    fn spawn_reader(
        self: &Arc<Self>,
        peer: NodeId,
        conn: Connection,
        primary: bool,
        dialled: bool,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            let max = me.limits.max_message_bytes;
            let budget = Arc::new(StreamBudget::default());
            let mut refused = None;
            loop {
                match conn.accept_uni().await {
                    Ok(mut recv) => {
                        let me2 = me.clone();
                        let budget = budget.clone();
                        tokio::spawn(async move {
                            let limit = me2.limits.max_connection_buffer_bytes;
                            let deadline = Duration::from_millis(me2.limits.stream_read_timeout_ms);
                            match limits::read_message(&mut recv, max, &budget, limit, deadline)
                                .await
                            {
                                Ok(bytes) if bytes.starts_with(&CONTROL_MAGIC) => {
                                    if let Some(addr) = parse_observed(&bytes).filter(|_| dialled) {
                                        let _ = me2
                                            .events
                                            .try_send(NetEvent::Observed { by: peer, addr });
                                    }
                                }
                                Ok(bytes) => me2.queue_message(peer, bytes),
                                Err(ReadRefusal::TooLong) => {
                                    me2.stats.oversized_drops.fetch_add(1, Ordering::Relaxed);
                                    let _ = recv.stop(VarInt::from_u32(0));
                                }
                                Err(ReadRefusal::BufferFull) => {
                                    me2.stats.buffer_full_drops.fetch_add(1, Ordering::Relaxed);
                                    let _ = recv.stop(VarInt::from_u32(0));
                                }
                                Err(ReadRefusal::Timeout) => {
                                    me2.stats.stream_timeouts.fetch_add(1, Ordering::Relaxed);
                                    let _ = recv.stop(VarInt::from_u32(0));
                                }
                                Err(ReadRefusal::Failed) => {}
                            }
                        });
                    }
                    Err(quinn::ConnectionError::ApplicationClosed(ac))
                        if ac.error_code == VarInt::from_u32(CLOSE_WRONG_OVERLAY)
                            || ac.error_code == VarInt::from_u32(CLOSE_WRONG_NODE) =>
                    {
                        let reason = String::from_utf8_lossy(&ac.reason).into_owned();
                        crate::remote_log!(warn, "peer_refused", %peer, "peer refused the connection: {reason}");
                        refused = Some(reason);
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(%peer, "link closed: {e}");
                        break;
                    }
                }
            }
            if primary {
                let same = me
                    .links
                    .get(&peer)
                    .is_some_and(|l| l.conn.stable_id() == conn.stable_id());
                if same {
                    me.links.remove(&peer);
                    let _ = me
                        .events
                        .send(NetEvent::LinkDown {
                            node: peer,
                            refused,
                        })
                        .await;
                }
            }
        });
    }

    /// Hands a received message to the runtime, or drops it (counted) when the messages
    /// waiting there already hold `limits.event_queue` entries or
    /// `limits.event_queue_bytes` bytes.
    fn queue_message(&self, from: NodeId, bytes: Vec<u8>) {
        let limit = self.limits.event_queue_bytes;
        let sent = Queued::take(&self.queued, bytes.len(), limit).is_some_and(|queued| {
            let ev = NetEvent::Message {
                from,
                bytes,
                queued,
            };
            self.events.try_send(ev).is_ok()
        });
        if !sent {
            self.stats.event_queue_drops.fetch_add(1, Ordering::Relaxed);
            crate::remote_log!(debug, "event_queue_full", %from, "message dropped: the queue to the runtime is full");
        }
    }

    /// Serves application `app` on this node: streams peers open for it arrive on the
    /// returned channel (a stream for an application nobody serves is reset).
    pub fn serve_app(&self, app: u32) -> mpsc::Receiver<AppStream> {
        let (tx, rx) = mpsc::channel(64);
        self.apps.insert(app, tx);
        rx
    }

    /// Records that this node's NAT maps each destination to a new port (two peers saw
    /// two different reflexive addresses).
    pub fn set_symmetric(&self, symmetric: bool) {
        self.symmetric.store(symmetric, Ordering::Relaxed);
    }

    /// Whether a direct connection to a node reached as `reach` can come up: it has no
    /// relay (it is reachable), or it offers a reflexive address and our NAT keeps one
    /// mapping for every destination.
    fn direct_possible(&self, reach: &Reach) -> bool {
        !reach.direct.is_empty()
            && (reach.relay.is_none()
                || (reach.reflexive && !self.symmetric.load(Ordering::Relaxed)))
    }

    /// Sends hole-punching packets to `addr` from the endpoint's port: they open this side's
    /// NAT for packets from `addr`, so that a connection attempt from there gets through.
    pub fn punch(&self, addr: SocketAddr) {
        for _ in 0..2 {
            if let Err(e) = self.raw.send_to(&PUNCH, addr) {
                tracing::debug!(%addr, "punch: {e}");
                break;
            }
        }
    }

    /// Opens a stream of application `app` to node `node`: over the application connection
    /// to it if one is open; else over a new direct connection to one of its direct
    /// candidates (punched first, all tried at once, the first to prove to be `node` wins,
    /// within the punch timeout); else through its relay.
    pub async fn open_app(
        self: &Arc<Self>,
        node: NodeId,
        reach: &Reach,
        app: u32,
    ) -> anyhow::Result<(SendStream, RecvStream, AppPath)> {
        let existing = self
            .app_conns
            .get(&node)
            .map(|c| c.clone())
            .filter(|c| c.close_reason().is_none());
        let recently_failed = self
            .unpunchable
            .get(&node)
            .is_some_and(|t| t.elapsed() < RELAY_MEMORY);
        let direct = match existing {
            Some(c) => Some(c),
            None if !self.direct_possible(reach) || (recently_failed && reach.relay.is_some()) => {
                None
            }
            None => match self.connect_direct(node, &reach.direct).await {
                Ok(c) => Some(c),
                Err(e) if reach.relay.is_some() => {
                    self.stats.punch_failed.fetch_add(1, Ordering::Relaxed);
                    if self.unpunchable.len() >= UNPUNCHABLE_MAX {
                        self.unpunchable.retain(|_, t| t.elapsed() < RELAY_MEMORY);
                    }
                    if self.unpunchable.len() < UNPUNCHABLE_MAX {
                        self.unpunchable.insert(node, std::time::Instant::now());
                    }
                    crate::remote_log!(info, "using_relay", %node, "no direct connection ({e}); using its relay");
                    None
                }
                Err(e) => return Err(e),
            },
        };
        if let Some(conn) = direct {
            let (send, recv) = self.open_stream(&conn, node, &app.to_be_bytes()).await?;
            return Ok((send, recv, AppPath::Direct));
        }
        let relay = reach
            .relay
            .ok_or_else(|| anyhow!("node {node} has no candidates"))?;
        let conn = self.relay_connection(relay).await?;
        let mut head = Vec::with_capacity(24);
        head.extend_from_slice(&APP_RELAY.to_be_bytes());
        head.extend_from_slice(&node.to_bytes());
        head.extend_from_slice(&app.to_be_bytes());
        let (send, recv) = match self.open_stream(&conn, node, &head).await {
            Ok(s) => s,
            Err(e) => {
                self.relay_conns
                    .remove_if(&relay, |_, c| c.stable_id() == conn.stable_id());
                return Err(e);
            }
        };
        self.stats.app_relayed.fetch_add(1, Ordering::Relaxed);
        Ok((send, recv, AppPath::Relayed))
    }

    /// Tries every address at once (after punching it); the first connection that proves
    /// to be `node` is kept, the others are dropped.
    async fn connect_direct(
        self: &Arc<Self>,
        node: NodeId,
        addrs: &[SocketAddr],
    ) -> anyhow::Result<Connection> {
        let mut tries = tokio::task::JoinSet::new();
        // An address this host has no route to (another site's private network) is skipped.
        for &addr in addrs.iter().filter(|a| local_ip_towards(**a).is_some()) {
            self.punch(addr);
            let me = self.clone();
            tries.spawn(async move {
                let conn = me
                    .endpoint
                    .connect_with(me.app_client.clone(), addr, &me.sni)
                    .map_err(|e| anyhow!("{addr}: {e}"))?
                    .await
                    .map_err(|e| anyhow!("{addr}: {e}"))?;
                let peer = peer_node_id(&conn)?;
                if peer != node {
                    conn.close(VarInt::from_u32(CLOSE_WRONG_NODE), b"unexpected node");
                    anyhow::bail!("{addr} is node {peer}, not the expected {node}");
                }
                anyhow::Ok(conn)
            });
        }
        let deadline = tokio::time::Instant::now() + self.nat.punch_timeout;
        let mut errors = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, tries.join_next()).await {
                Ok(Some(Ok(Ok(conn)))) => {
                    tracing::debug!(%node, addr = %conn.remote_address(), "direct application connection");
                    self.stats.app_direct.fetch_add(1, Ordering::Relaxed);
                    self.unpunchable.remove(&node);
                    self.app_conns.insert(node, conn.clone());
                    return Ok(conn);
                }
                Ok(Some(Ok(Err(e)))) => errors.push(e.to_string()),
                Ok(Some(Err(e))) => errors.push(e.to_string()),
                Ok(None) => break,
                Err(_) => {
                    errors.push(format!("timed out after {:?}", self.nat.punch_timeout));
                    break;
                }
            }
        }
        anyhow::bail!(
            "application connection to {node}: {}",
            if errors.is_empty() {
                "no address".to_string()
            } else {
                errors.join("; ")
            }
        )
    }

    /// The application connection to a relay (any node of this overlay at that address).
    async fn relay_connection(&self, relay: SocketAddr) -> anyhow::Result<Connection> {
        if let Some(c) = self
            .relay_conns
            .get(&relay)
            .map(|c| c.clone())
            .filter(|c| c.close_reason().is_none())
        {
            return Ok(c);
        }
        let conn = tokio::time::timeout(
            self.nat.punch_timeout,
            self.endpoint
                .connect_with(self.app_client.clone(), relay, &self.sni)
                .map_err(|e| anyhow!("relay {relay}: {e}"))?,
        )
        .await
        .map_err(|_| anyhow!("relay {relay}: no answer"))?
        .map_err(|e| anyhow!("relay {relay}: {e}"))?;
        self.relay_conns.insert(relay, conn.clone());
        Ok(conn)
    }

    /// Opens a bidirectional stream on `conn` and sends `head` on it.
    async fn open_stream(
        &self,
        conn: &Connection,
        node: NodeId,
        head: &[u8],
    ) -> anyhow::Result<(SendStream, RecvStream)> {
        let (mut send, recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => {
                self.app_conns
                    .remove_if(&node, |_, c| c.stable_id() == conn.stable_id());
                anyhow::bail!("application stream to {node}: {e}");
            }
        };
        send.write_all(head)
            .await
            .map_err(|e| anyhow!("application stream to {node}: {e}"))?;
        self.stats
            .app_streams_opened
            .fetch_add(1, Ordering::Relaxed);
        Ok((send, recv))
    }

    /// Accepts bidirectional streams on `conn` (up to 64 at once), each served by `serve`
    /// in its own task.
    fn accept_streams<F, Fut>(self: &Arc<Self>, conn: Connection, serve: F)
    where
        F: Fn(Arc<Self>, SendStream, RecvStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        conn.set_max_concurrent_bi_streams(VarInt::from_u32(APP_STREAMS));
        let me = self.clone();
        tokio::spawn(async move {
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(serve(me.clone(), send, recv));
            }
        });
    }

    /// An incoming application connection: each stream names its application in its first
    /// four bytes and goes to that application's channel, or asks to be relayed.
    fn serve_app_connection(self: &Arc<Self>, peer: NodeId, conn: Connection) {
        self.accept_streams(conn, move |me, send, mut recv| async move {
            let Some(app) = read_head::<4>(&mut recv).await.map(u32::from_be_bytes) else {
                return;
            };
            if app == APP_RELAY {
                me.relay(peer, send, recv).await;
            } else {
                me.dispatch(peer, app, send, recv).await;
            }
        });
    }

    /// Streams a relay opens to us on an overlay link we dialled: the application number
    /// and the originator's Node-ID (which the relay proved), then the application's bytes.
    fn serve_relayed(self: &Arc<Self>, conn: Connection) {
        self.accept_streams(conn, |me, send, mut recv| async move {
            let Some(head) = read_head::<20>(&mut recv).await else {
                return;
            };
            let mut app = [0u8; 4];
            app.copy_from_slice(&head[..4]);
            let mut from = [0u8; 16];
            from.copy_from_slice(&head[4..]);
            me.dispatch(
                NodeId::from_bytes(from),
                u32::from_be_bytes(app),
                send,
                recv,
            )
            .await;
        });
    }

    /// Hands an application stream to its application, or resets it.
    async fn dispatch(&self, from: NodeId, app: u32, send: SendStream, recv: RecvStream) {
        let handler = self.apps.get(&app).map(|h| h.clone());
        let stream = AppStream { from, send, recv };
        let mut refused = match handler {
            Some(h) => match h.send(stream).await {
                Ok(()) => {
                    self.stats
                        .app_streams_accepted
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(mpsc::error::SendError(s)) => s,
            },
            None => stream,
        };
        tracing::debug!(%from, app, "application stream for no application");
        let _ = refused.send.reset(VarInt::from_u32(RESET_UNKNOWN_APP));
        let _ = refused.recv.stop(VarInt::from_u32(RESET_UNKNOWN_APP));
    }

    /// Relays a stream from `from` to the node its header names, over our overlay link to
    /// that node, within the relay limit.
    async fn relay(self: &Arc<Self>, from: NodeId, mut send: SendStream, mut recv: RecvStream) {
        let Some(head) = read_head::<20>(&mut recv).await else {
            return;
        };
        let mut target = [0u8; 16];
        target.copy_from_slice(&head[..16]);
        let target = NodeId::from_bytes(target);
        let app = &head[16..];
        let conn = self.links.get(&target).map(|l| l.conn.clone());
        let refuse = |why: &str| {
            self.stats.relay_refused.fetch_add(1, Ordering::Relaxed);
            crate::remote_log!(info, "relay_refused", %from, %target, "relay refused: {why}");
        };
        // The slot is checked and taken in one step, and held until the stream ends.
        let slot = self.relay_slots.take(
            from,
            self.nat.relay_max_streams,
            self.nat.relay_max_per_originator,
        );
        let Some((conn, _slot)) = conn.zip(slot).filter(|_| self.nat.relay) else {
            refuse(if !self.nat.relay {
                "relaying is off"
            } else if self.links.get(&target).is_none() {
                "no link to the target"
            } else {
                "at the relay limit (in total or for this originator)"
            });
            let _ = send.reset(VarInt::from_u32(RESET_RELAY_REFUSED));
            let _ = recv.stop(VarInt::from_u32(RESET_RELAY_REFUSED));
            return;
        };
        let opened = async {
            let (mut s, r) = conn.open_bi().await?;
            s.write_all(app).await?;
            s.write_all(&from.to_bytes()).await?;
            anyhow::Ok((s, r))
        }
        .await;
        let (mut to_send, mut to_recv) = match opened {
            Ok(x) => x,
            Err(e) => {
                refuse(&e.to_string());
                let _ = send.reset(VarInt::from_u32(RESET_RELAY_REFUSED));
                return;
            }
        };
        self.stats.relay_streams.fetch_add(1, Ordering::Relaxed);
        self.stats.relay_active.fetch_add(1, Ordering::Relaxed);
        let (carried, cut) = relay::carry(
            from,
            (&mut send, &mut recv),
            (&mut to_send, &mut to_recv),
            &self.relay_windows,
            self.nat.relay_caps,
        )
        .await;
        self.stats.relay_bytes.fetch_add(carried, Ordering::Relaxed);
        if let Some(cut) = cut {
            let counter = match cut {
                relay::Cut::Idle => &self.stats.relay_cut_idle,
                relay::Cut::StreamBytes => &self.stats.relay_cut_stream_bytes,
                relay::Cut::OriginatorBytes => &self.stats.relay_cut_originator_bytes,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            crate::remote_log!(info, "relay_cut", %from, %target, "relayed stream cut: {}", cut.reason());
        }
        self.stats.relay_active.fetch_sub(1, Ordering::Relaxed);
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

/// The Node-ID the connection's peer proved with its certificate.
pub fn peer_node_id(conn: &Connection) -> anyhow::Result<NodeId> {
    let certs = conn
        .peer_identity()
        .and_then(|i| i.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| anyhow!("peer presented no certificate"))?;
    let first = certs
        .first()
        .ok_or_else(|| anyhow!("peer presented no certificate"))?;
    tls::node_id_of_cert(first).map_err(|e| anyhow!("peer certificate: {e}"))
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

/// The control frame telling a peer the address its link comes from.
fn observed_frame(addr: SocketAddr) -> Vec<u8> {
    let mut f = CONTROL_MAGIC.to_vec();
    f.push(CONTROL_OBSERVED);
    // An IPv4 peer seen on a dual-stack socket is reported as IPv4, as it knows itself.
    match addr.ip().to_canonical() {
        std::net::IpAddr::V4(v) => {
            f.push(4);
            f.extend_from_slice(&v.octets());
        }
        std::net::IpAddr::V6(v) => {
            f.push(6);
            f.extend_from_slice(&v.octets());
        }
    }
    f.extend_from_slice(&addr.port().to_be_bytes());
    f
}

/// The address in an observed-address control frame (None for anything malformed or of
/// another control type). Public for the fuzz target `control`.
pub fn parse_observed(f: &[u8]) -> Option<SocketAddr> {
    let rest = f.strip_prefix(&CONTROL_MAGIC)?;
    let (&kind, rest) = rest.split_first()?;
    if kind != CONTROL_OBSERVED {
        return None;
    }
    let (&family, rest) = rest.split_first()?;
    let (ip, rest): (std::net::IpAddr, &[u8]) = match family {
        4 if rest.len() == 6 => (<[u8; 4]>::try_from(&rest[..4]).ok()?.into(), &rest[4..]),
        6 if rest.len() == 18 => (<[u8; 16]>::try_from(&rest[..16]).ok()?.into(), &rest[16..]),
        _ => return None,
    };
    let port = u16::from_be_bytes([rest[0], rest[1]]);
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observed_frames_round_trip_and_reject_garbage() {
        for a in ["198.51.100.11:4433", "[2001:db8::7]:9"] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(parse_observed(&observed_frame(a)), Some(a));
        }
        let mapped: SocketAddr = "[::ffff:198.51.100.11]:4433".parse().unwrap();
        assert_eq!(
            parse_observed(&observed_frame(mapped)),
            Some("198.51.100.11:4433".parse().unwrap())
        );
        let good = observed_frame("10.0.0.1:1".parse().unwrap());
        for n in 0..good.len() {
            assert_eq!(parse_observed(&good[..n]), None, "truncated at {n}");
        }
        let mut other = good.clone();
        other[4] = 2;
        assert_eq!(parse_observed(&other), None);
        let mut longer = good;
        longer.push(0);
        assert_eq!(parse_observed(&longer), None);
    }
}
