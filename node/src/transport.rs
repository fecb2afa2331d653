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
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
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
/// Bidirectional streams a peer may have open at once on an application connection.
const APP_STREAMS: u32 = 64;
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
    },
    LinkUp {
        node: NodeId,
        addr: SocketAddr,
    },
    /// The link closed; `refused` carries the peer's reason when it refused us.
    LinkDown {
        node: NodeId,
        refused: Option<String>,
    },
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
    pub oversized_drops: AtomicU64,
    pub refused_connections: AtomicU64,
    /// Application streams opened to other nodes and accepted from them.
    pub app_streams_opened: AtomicU64,
    pub app_streams_accepted: AtomicU64,
}

pub struct Transport {
    endpoint: Endpoint,
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
    events: mpsc::UnboundedSender<NetEvent>,
    limits: Limits,
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
        me: NodeId,
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        events: mpsc::UnboundedSender<NetEvent>,
    ) -> anyhow::Result<Arc<Transport>> {
        let (server_tls, client_tls) = tls::configs(certs, key)?;
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
        let mut endpoint =
            Endpoint::server(server, listen).with_context(|| format!("binding UDP {listen}"))?;
        endpoint.set_default_client_config(client);
        let tr = Arc::new(Transport {
            endpoint,
            me,
            sni: sni_of(&cfg.overlay),
            overlay: cfg.overlay.clone(),
            links: DashMap::new(),
            app_client,
            app_conns: DashMap::new(),
            apps: DashMap::new(),
            events,
            limits: cfg.limits.clone(),
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
            let me = self.clone();
            tokio::spawn(async move {
                let addr = incoming.remote_address();
                match incoming.await {
                    Ok(conn) => {
                        if let Err(e) = me.admit(conn, None).await {
                            me.stats.refused_connections.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(%addr, "refused incoming connection: {e}");
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
                me.admit(conn, expect).await
            }
            .await;
            if let Err(e) = res {
                let _ = me.events.send(NetEvent::ConnectFailed {
                    node: expect,
                    addr,
                    reason: e.to_string(),
                });
            }
        });
    }

    /// Checks a fresh connection (overlay, Node-ID) and starts its reader and writer.
    async fn admit(
        self: &Arc<Self>,
        conn: Connection,
        expect: Option<NodeId>,
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
        if self.links.contains_key(&peer) {
            // Both ends connected at once: keep the existing link for sending, but read
            // from this one too until it closes.
            self.spawn_reader(peer, conn, false);
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
        self.spawn_reader(peer, conn, true);
        let _ = self.events.send(NetEvent::LinkUp { node: peer, addr });
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

    fn spawn_reader(self: &Arc<Self>, peer: NodeId, conn: Connection, primary: bool) {
        let me = self.clone();
        tokio::spawn(async move {
            let max = me.limits.max_message_bytes;
            let mut refused = None;
            loop {
                match conn.accept_uni().await {
                    Ok(mut recv) => {
                        let me2 = me.clone();
                        tokio::spawn(async move {
                            match recv.read_to_end(max).await {
                                Ok(bytes) => {
                                    let _ =
                                        me2.events.send(NetEvent::Message { from: peer, bytes });
                                }
                                Err(quinn::ReadToEndError::TooLong) => {
                                    me2.stats.oversized_drops.fetch_add(1, Ordering::Relaxed);
                                    let _ = recv.stop(VarInt::from_u32(0));
                                }
                                Err(_) => {}
                            }
                        });
                    }
                    Err(quinn::ConnectionError::ApplicationClosed(ac))
                        if ac.error_code == VarInt::from_u32(CLOSE_WRONG_OVERLAY)
                            || ac.error_code == VarInt::from_u32(CLOSE_WRONG_NODE) =>
                    {
                        let reason = String::from_utf8_lossy(&ac.reason).into_owned();
                        tracing::warn!(%peer, "peer refused the connection: {reason}");
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
                    let _ = me.events.send(NetEvent::LinkDown {
                        node: peer,
                        refused,
                    });
                }
            }
        });
    }

    /// Serves application `app` on this node: streams peers open for it arrive on the
    /// returned channel (a stream for an application nobody serves is reset).
    pub fn serve_app(&self, app: u32) -> mpsc::Receiver<AppStream> {
        let (tx, rx) = mpsc::channel(64);
        self.apps.insert(app, tx);
        rx
    }

    /// Opens a stream of application `app` to node `node`, whose endpoint is at `addr`
    /// (an AppAttach candidate): over the application connection to it if one is open,
    /// else over a new one, which must prove to be `node`.
    pub async fn open_app(
        self: &Arc<Self>,
        addr: SocketAddr,
        node: NodeId,
        app: u32,
    ) -> anyhow::Result<(SendStream, RecvStream)> {
        let existing = self
            .app_conns
            .get(&node)
            .map(|c| c.clone())
            .filter(|c| c.close_reason().is_none());
        let conn = match existing {
            Some(c) => c,
            None => {
                let conn = self
                    .endpoint
                    .connect_with(self.app_client.clone(), addr, &self.sni)
                    .map_err(|e| anyhow!("application connection to {addr}: {e}"))?
                    .await
                    .map_err(|e| anyhow!("application connection to {addr}: {e}"))?;
                let peer = peer_node_id(&conn)?;
                if peer != node {
                    conn.close(VarInt::from_u32(CLOSE_WRONG_NODE), b"unexpected node");
                    anyhow::bail!("{addr} is node {peer}, not the expected {node}");
                }
                tracing::debug!(%node, %addr, "application connection open");
                self.app_conns.insert(node, conn.clone());
                conn
            }
        };
        let (mut send, recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => {
                self.app_conns
                    .remove_if(&node, |_, c| c.stable_id() == conn.stable_id());
                anyhow::bail!("application stream to {node}: {e}");
            }
        };
        send.write_all(&app.to_be_bytes())
            .await
            .map_err(|e| anyhow!("application stream to {node}: {e}"))?;
        self.stats
            .app_streams_opened
            .fetch_add(1, Ordering::Relaxed);
        Ok((send, recv))
    }

    /// An incoming application connection: each stream names its application in its first
    /// four bytes and goes to that application's channel.
    fn serve_app_connection(self: &Arc<Self>, peer: NodeId, conn: Connection) {
        conn.set_max_concurrent_bi_streams(VarInt::from_u32(APP_STREAMS));
        let me = self.clone();
        tokio::spawn(async move {
            while let Ok((send, mut recv)) = conn.accept_bi().await {
                let me = me.clone();
                tokio::spawn(async move {
                    let mut head = [0u8; 4];
                    let app =
                        match tokio::time::timeout(APP_HEADER_TIMEOUT, recv.read_exact(&mut head))
                            .await
                        {
                            Ok(Ok(())) => u32::from_be_bytes(head),
                            _ => return,
                        };
                    let handler = me.apps.get(&app).map(|h| h.clone());
                    let stream = AppStream {
                        from: peer,
                        send,
                        recv,
                    };
                    let refused = match handler {
                        Some(h) => match h.send(stream).await {
                            Ok(()) => {
                                me.stats
                                    .app_streams_accepted
                                    .fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                            Err(mpsc::error::SendError(s)) => s,
                        },
                        None => stream,
                    };
                    tracing::debug!(%peer, app, "application stream for no application");
                    let mut s = refused;
                    let _ = s.send.reset(VarInt::from_u32(RESET_UNKNOWN_APP));
                    let _ = s.recv.stop(VarInt::from_u32(RESET_UNKNOWN_APP));
                });
            }
        });
    }

    /// Closes every connection and the endpoint.
    pub async fn shutdown(&self) {
        for l in self.links.iter() {
            l.conn.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
        }
        for c in self.app_conns.iter() {
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
