//! Application connections (AppAttach, proto/SPEC.md 2.7): direct, punched or through a
//! relay, and the streams served on them.

use super::*;
use p2psip_algorithms::reach::FirstTry;

impl Transport {
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
    ) -> Result<(SendStream, RecvStream, AppPath), AppError> {
        let existing = self
            .app_conns
            .get(&node)
            .map(|c| c.clone())
            .filter(|c| c.close_reason().is_none());
        let recently_failed = self
            .unpunchable
            .get(&node)
            .is_some_and(|t| t.elapsed() < RELAY_MEMORY);
        let symmetric = self.symmetric.load(Ordering::Relaxed);
        let direct = match existing {
            Some(c) => Some(c),
            None if reach.first_try(symmetric, recently_failed) != FirstTry::Direct => None,
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
        let relay = reach.relay.ok_or(AppError::NoCandidates(node))?;
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
    pub(super) async fn connect_direct(
        self: &Arc<Self>,
        node: NodeId,
        addrs: &[SocketAddr],
    ) -> Result<Connection, AppError> {
        let mut tries = tokio::task::JoinSet::new();
        // An address this host has no route to (another site's private network) is skipped.
        for &addr in addrs.iter().filter(|a| local_ip_towards(**a).is_some()) {
            self.punch(addr);
            let me = self.clone();
            tries.spawn(async move {
                let conn = me
                    .endpoint
                    .connect_with(me.app_client.clone(), addr, &me.sni)
                    .map_err(|e| format!("{addr}: {e}"))?
                    .await
                    .map_err(|e| format!("{addr}: {e}"))?;
                let peer = peer_node_id(&conn).map_err(|e| format!("{addr}: {e}"))?;
                if peer != node {
                    conn.close(VarInt::from_u32(CLOSE_WRONG_NODE), b"unexpected node");
                    return Err(format!("{addr} is node {peer}, not the expected {node}"));
                }
                Ok(conn)
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
                Ok(Some(Ok(Err(e)))) => errors.push(e),
                Ok(Some(Err(e))) => errors.push(e.to_string()),
                Ok(None) => break,
                Err(_) => {
                    errors.push(format!("timed out after {:?}", self.nat.punch_timeout));
                    break;
                }
            }
        }
        Err(AppError::NoDirect {
            node,
            reasons: if errors.is_empty() {
                "no address".to_string()
            } else {
                errors.join("; ")
            },
        })
    }

    /// The application connection to a relay (any node of this overlay at that address).
    pub(super) async fn relay_connection(&self, relay: SocketAddr) -> Result<Connection, AppError> {
        let failed = |why: String| AppError::Relay { relay, why };
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
                .map_err(|e| failed(e.to_string()))?,
        )
        .await
        .map_err(|_| failed("no answer".into()))?
        .map_err(|e| failed(e.to_string()))?;
        self.relay_conns.insert(relay, conn.clone());
        Ok(conn)
    }

    /// Opens a bidirectional stream on `conn` and sends `head` on it.
    pub(super) async fn open_stream(
        &self,
        conn: &Connection,
        node: NodeId,
        head: &[u8],
    ) -> Result<(SendStream, RecvStream), AppError> {
        let (mut send, recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => {
                self.app_conns
                    .remove_if(&node, |_, c| c.stable_id() == conn.stable_id());
                return Err(AppError::Stream {
                    node,
                    why: e.to_string(),
                });
            }
        };
        send.write_all(head).await.map_err(|e| AppError::Stream {
            node,
            why: e.to_string(),
        })?;
        self.stats
            .app_streams_opened
            .fetch_add(1, Ordering::Relaxed);
        Ok((send, recv))
    }

    /// Accepts bidirectional streams on `conn` (up to 64 at once), each served by `serve`
    /// in its own task.
    pub(super) fn accept_streams<F, Fut>(self: &Arc<Self>, conn: Connection, serve: F)
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
    pub(super) fn serve_app_connection(self: &Arc<Self>, peer: NodeId, conn: Connection) {
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
    pub(super) fn serve_relayed(self: &Arc<Self>, conn: Connection) {
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
    pub(super) async fn dispatch(
        &self,
        from: NodeId,
        app: u32,
        send: SendStream,
        recv: RecvStream,
    ) {
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
    pub(super) async fn relay(
        self: &Arc<Self>,
        from: NodeId,
        mut send: SendStream,
        mut recv: RecvStream,
    ) {
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
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((s, r))
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
}
