//! Peer links: accepting and dialling QUIC connections, admitting them (overlay and
//! Node-ID checks), one writer and one reader per link, the observed-address frame.

use super::*;
use p2psip_algorithms::core::hop_ack_timeout;
use tokio::time::Instant;

/// Why a connection did not become a link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("{0}")]
    Handshake(#[from] quinn::ConnectionError),
    #[error(transparent)]
    PeerId(#[from] PeerIdError),
    #[error("peer {peer} asked for another overlay ({sni})")]
    OtherOverlay { peer: NodeId, sni: String },
    #[error("{addr} is node {peer}, not the expected {want}")]
    OtherNode {
        addr: SocketAddr,
        peer: NodeId,
        want: NodeId,
    },
    #[error("connected to itself")]
    Itself,
}

/// Message streams one link's hop acknowledgement watches at once.
const ACK_WATCH_QUEUE: usize = 1024;

impl Transport {
    pub(super) async fn accept_loop(self: Arc<Self>) {
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

    /// Connects to `addr`; with `expect`, the node there must be that Node-ID.
    pub fn connect(self: &Arc<Self>, addr: SocketAddr, expect: Option<NodeId>) {
        let me = self.clone();
        tokio::spawn(async move {
            let res = async {
                let conn = me.endpoint.connect(addr, &me.sni)?.await?;
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
    pub(super) async fn admit(
        self: &Arc<Self>,
        conn: Connection,
        expect: Option<NodeId>,
        incoming: bool,
    ) -> Result<(), LinkError> {
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
                    return Err(LinkError::OtherOverlay {
                        peer,
                        sni: sni.into(),
                    });
                }
            }
        }
        if let Some(want) = expect {
            if want != peer {
                conn.close(VarInt::from_u32(CLOSE_WRONG_NODE), b"unexpected node");
                return Err(LinkError::OtherNode {
                    addr: conn.remote_address(),
                    peer,
                    want,
                });
            }
        }
        if peer == self.me {
            conn.close(VarInt::from_u32(CLOSE_WRONG_NODE), b"connected to self");
            return Err(LinkError::Itself);
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
        self.spawn_writer(peer, conn.clone(), rx);
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

    pub(super) fn spawn_writer(
        self: &Arc<Self>,
        peer: NodeId,
        conn: Connection,
        mut rx: mpsc::Receiver<Vec<u8>>,
    ) {
        let acks = self
            .hop_ack_slack
            .map(|slack| (self.spawn_ack_watch(peer, conn.clone()), slack));
        tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                let sent = async {
                    let mut s = conn.open_uni().await?;
                    s.write_all(&bytes).await?;
                    s.finish()?;
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(s)
                }
                .await;
                match sent {
                    Ok(s) => {
                        if let Some((tx, slack)) = &acks {
                            let wait = hop_ack_timeout(conn.rtt(), bytes.len(), *slack);
                            // A full watch queue holds a message still unacknowledged: it
                            // alone decides; this one goes unwatched.
                            let now = Instant::now();
                            let _ = tx.try_send(Watched {
                                stream: s,
                                sent: now,
                                deadline: now + wait,
                                counts: packet_counts(&conn),
                            });
                        }
                    }
                    Err(_) => break,
                }
            }
        });
    }

    /// How long the hop acknowledgement lets the endpoint run before it concludes that a
    /// peer sent nothing (QUIC's default max_ack_delay).
    const ACK_GRACE: Duration = Duration::from_millis(25);

    /// The hop acknowledgement (proto/SPEC.md 2.6): waits, in the order they were sent,
    /// until the peer's QUIC stack has acknowledged every byte of each message stream; a
    /// stream still unacknowledged at its deadline, on a connection that carried packets
    /// from this node but none from the peer meanwhile, closes the connection, which
    /// reports the link failed to the runtime, whose core routes again what left on it.
    fn spawn_ack_watch(self: &Arc<Self>, peer: NodeId, conn: Connection) -> mpsc::Sender<Watched> {
        let (tx, mut rx) = mpsc::channel::<Watched>(ACK_WATCH_QUEUE);
        let me = self.clone();
        tokio::spawn(async move {
            while let Some(w) = rx.recv().await {
                let (s, sent, mut deadline) = (w.stream, w.sent, w.deadline);
                // What the connection had carried when the message left: the peer must be
                // heard from after that, however long this watch queue made us wait to
                // look (a backlog here is no silence of the peer).
                let (mut heard, mut said) = w.counts;
                let window = deadline.saturating_duration_since(sent);
                while tokio::time::timeout_at(deadline, s.stopped())
                    .await
                    .is_err()
                {
                    // The peer is gone only if we sent it packets all that time and heard
                    // nothing back. A peer that sent anything is slow (loaded), not gone;
                    // if we sent nothing, the message waits for the peer's flow control
                    // (it reads slowly). Either way: wait another window. The endpoint
                    // first takes in what has arrived: after a busy spell of this
                    // runtime, the socket may hold the peer's packets uncounted.
                    tokio::time::sleep(Self::ACK_GRACE).await;
                    let (now_heard, now_said) = packet_counts(&conn);
                    if now_heard > heard || now_said == said {
                        (heard, said) = (now_heard, now_said);
                        deadline = Instant::now() + window;
                        continue;
                    }
                    me.stats
                        .unacknowledged_links
                        .fetch_add(1, Ordering::Relaxed);
                    let rtt = conn.rtt();
                    crate::remote_log!(info, "link_unacknowledged", %peer,
                        "closing the link: a message was not acknowledged and nothing was heard from the peer in time (round trip {rtt:?})");
                    conn.close(VarInt::from_u32(CLOSE_UNACKNOWLEDGED), b"not acknowledged");
                    return;
                }
            }
        });
        tx
    }

    /// Reads the messages of a link. `dialled`: this node opened it, so the peer's link
    /// control frame (our observed address) is taken; on a link the peer opened, such a
    /// frame is a claim of a node that merely connected, and is ignored.
    pub(super) fn spawn_reader(
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
    pub(super) fn queue_message(&self, from: NodeId, bytes: Vec<u8>) {
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
}

/// A message stream the hop acknowledgement watches: when it left, its deadline, and the
/// connection's packet counts (received, sent) at that moment.
pub(super) struct Watched {
    stream: quinn::SendStream,
    sent: Instant,
    deadline: Instant,
    counts: (u64, u64),
}

/// UDP datagrams a connection has received and sent.
fn packet_counts(c: &Connection) -> (u64, u64) {
    let st = c.stats();
    (st.udp_rx.datagrams, st.udp_tx.datagrams)
}
