//! SIP transports: the UDP socket and TCP connections to devices, application streams
//! (QUIC) to other nodes, and which addresses requests may be sent to.

use super::*;

/// How many ports `bind_sockets` tries when the kernel picks one.
pub(super) const BIND_TRIES: usize = 64;

/// Binds UDP with `udp` and TCP on the same address. With port 0 the kernel picks a UDP
/// port that may be taken for TCP: then another one is tried, `BIND_TRIES` at most.
pub(super) fn bind_sockets(
    listen: SocketAddr,
    mut udp: impl FnMut() -> std::io::Result<std::net::UdpSocket>,
) -> Result<(std::net::UdpSocket, std::net::TcpListener), SipError> {
    let tries = if listen.port() == 0 { BIND_TRIES } else { 1 };
    for _ in 0..tries {
        let u = udp().map_err(io(format!("SIP: binding UDP {listen}")))?;
        let addr = u.local_addr()?;
        match std::net::TcpListener::bind(addr) {
            Ok(t) => return Ok((u, t)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && listen.port() == 0 => {
                tracing::debug!(%addr, "SIP: TCP port taken, trying another");
            }
            Err(e) => return Err(io(format!("SIP: binding TCP {addr}"))(e)),
        }
    }
    refuse!(
        "SIP: no port on {} was free for both UDP and TCP in {tries} tries",
        listen.ip()
    )
}

/// The length of the first complete SIP message at the start of `buf` (headers up to the
/// blank line, then Content-Length bytes of body; RFC 3261 section 18.3), or None when more
/// bytes are needed.
pub(super) fn frame_len(buf: &[u8]) -> Option<usize> {
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
pub(super) async fn read_message(
    s: &mut (impl AsyncReadExt + Unpin),
    buf: &mut Vec<u8>,
) -> Option<Vec<u8>> {
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

impl Inner {
    /// Whether `a` reaches this front-end's own socket.
    pub(super) fn is_own(&self, a: SocketAddr) -> bool {
        names_front_end(a, self.cfg.listen, self.cfg.advertise)
    }

    /// Remembers `a` as a device address requests may go to, until `until`.
    pub(super) fn know(&self, a: SocketAddr, until: Instant) {
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
    pub(super) fn may_send_to(&self, to: Hop) -> bool {
        match to {
            Hop::Node(_) => true,
            Hop::Udp(a) | Hop::Tcp(a) => {
                !self.is_own(a) && self.known.get(&a).is_some_and(|t| *t > Instant::now())
            }
        }
    }

    /// Sends a message; to a node, over its application stream (opened on demand).
    pub(super) async fn send(self: &Arc<Self>, bytes: Vec<u8>, to: Hop) -> Result<(), SipError> {
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
                    .map_err(io(format!("UDP to {a}")))?;
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
                        refuse!("TCP connection to {a}: queue full, message dropped")
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        self.tcp.remove_if(&a, |_, s| s.same_channel(&w));
                        refuse!("TCP connection to {a} closed");
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
                            refuse!("application stream to {n} stalled: message dropped, stream replaced");
                        }
                        Err(mpsc::error::TrySendError::Closed(b)) => {
                            self.streams.remove_if(&n, |_, s| s.same_channel(&w));
                            bytes = b;
                        }
                    }
                }
                refuse!("application stream to {n} keeps closing");
            }
        }
        Ok(())
    }

    /// A writer for a new TCP connection to `a`: connected in the background (within
    /// `CONNECT_TIMEOUT`), messages queued meanwhile; nothing waits for the handshake.
    pub(super) fn connect_tcp(self: &Arc<Self>, a: SocketAddr) -> mpsc::Sender<Vec<u8>> {
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

    pub(super) fn register_tcp(
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
    pub(super) fn attach_stream(
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
    pub(super) fn spawn_stream(
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
    pub(super) fn run_stream(
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
    pub(super) async fn stream_to(
        self: &Arc<Self>,
        n: NodeId,
    ) -> Result<mpsc::Sender<Vec<u8>>, SipError> {
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
            opened.map_err(|_| request_err!("application connection to {n} timed out"))??;
        tracing::debug!(node = %n, path = path.as_str(), ms = began.elapsed().as_millis() as u64, "SIP: application stream open");
        Ok(self.attach_stream(n, send, recv))
    }
}

/// Whether `a` names the front-end listening on `listen` and advertised as `advertise`:
/// either of them, or the listen port on a loopback or unspecified address, or, for a
/// front-end listening on every address, on any address of this host.
fn names_front_end(a: SocketAddr, listen: SocketAddr, advertise: SocketAddr) -> bool {
    a == advertise
        || a == listen
        || (a.port() == listen.port()
            && (a.ip().is_loopback()
                && (listen.ip().is_unspecified() || listen.ip().is_loopback())
                || a.ip().is_unspecified()
                || listen.ip().is_unspecified()
                    && a.is_ipv4() == listen.is_ipv4()
                    && is_local_ip(a.ip())))
}

/// Whether `ip` is an address of this host: binding a UDP socket to it (port 0, nothing
/// sent, closed at once) succeeds only then.
fn is_local_ip(ip: std::net::IpAddr) -> bool {
    !ip.is_multicast() && std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::tests::INVITE;

    /// A front-end listening on every address (0.0.0.0) is reached at any address of the
    /// host, not only the one it advertises: a URI naming another of the host's addresses
    /// with its port names it (issue 23: it took that URI for another host).
    #[test]
    fn a_front_end_on_every_address_is_named_by_any_address_of_the_host() {
        let listen: SocketAddr = "0.0.0.0:5060".parse().unwrap();
        let advertise: SocketAddr = "198.51.100.7:5060".parse().unwrap();
        // This host's own non-loopback address, as the route to a TEST-NET address picks it
        // (no packet is sent).
        let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        probe.connect("192.0.2.1:9").unwrap();
        let own = probe.local_addr().unwrap().ip();
        assert!(!own.is_loopback() && !own.is_unspecified(), "{own}");
        assert!(names_front_end(
            SocketAddr::new(own, 5060),
            listen,
            advertise
        ));
        assert!(names_front_end(advertise, listen, advertise));
        assert!(names_front_end(
            "127.0.0.9:5060".parse().unwrap(),
            listen,
            advertise
        ));
        // Not another port, not an address of another host.
        assert!(!names_front_end(
            SocketAddr::new(own, 5061),
            listen,
            advertise
        ));
        assert!(!names_front_end(
            "192.0.2.1:5060".parse().unwrap(),
            listen,
            advertise
        ));
        // A front-end bound to one address is named by that one only.
        let one: SocketAddr = SocketAddr::new(own, 5060);
        assert!(!names_front_end(
            "127.0.0.1:5060".parse().unwrap(),
            one,
            one
        ));
    }

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
