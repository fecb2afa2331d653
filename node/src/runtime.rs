//! The runtime: drives one sans-IO `OverlayNode` with tokio — real time, the QUIC
//! transport, timers — and serves in-process commands (the CLI client and devnet use them).

use crate::config::Config;
use crate::identity;
use crate::metrics;
use crate::storage::{DashStore, OnCorruption, SyncMode};
use crate::transport::{local_ip_towards, AppPath, AppStream, NetEvent, Reach, Transport};
use anyhow::{anyhow, bail, Context};
use p2psip_algorithms::client::ClientTopology;
use p2psip_algorithms::storage::VerifyMode;
use p2psip_algorithms::{
    Event, LinkEvent, NodeId, OpId, OverlayNode, RoutingSnapshot, Stats, Time,
};
use p2psip_proto::pb;
use p2psip_proto::Body;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// Whether the node routes for others.
#[derive(Debug, Clone)]
pub enum Role {
    /// A peer of the overlay.
    Peer,
    /// A client of one admitting peer.
    Client { admitting: SocketAddr },
}

/// A node's state as the runtime reports it.
#[derive(Debug, Clone)]
pub struct Status {
    pub id: NodeId,
    pub joined: bool,
    pub routing: RoutingSnapshot,
    pub stats: Stats,
    pub connections: usize,
    pub stored_values: usize,
    /// Why a client cannot work (its admitting peer refused it or is unreachable).
    pub fatal: Option<String>,
    /// The address a peer sees this node at, once one has said.
    pub reflexive: Option<SocketAddr>,
    /// Whether a NAT sits between this node and the peers (None: not known yet).
    pub behind_nat: Option<bool>,
}

type OpFn = Box<dyn FnOnce(&mut OverlayNode, Time) -> OpId + Send>;

type CoreFn = Box<dyn FnOnce(&mut OverlayNode) + Send>;

enum Command {
    Op(OpFn, oneshot::Sender<Event>),
    Core(CoreFn),
    /// An application is served: advertise the node's candidates for it.
    ServeApp(u32),
    Status(oneshot::Sender<Status>),
    Shutdown(oneshot::Sender<()>),
}

/// A handle on a running node.
pub struct NodeHandle {
    pub id: NodeId,
    pub addr: SocketAddr,
    /// The address given to other nodes (None: none could be found).
    pub advertised: Option<SocketAddr>,
    cmd: mpsc::Sender<Command>,
    transport: Arc<Transport>,
    trust: Arc<crate::enroll::Trust>,
    task: tokio::task::JoinHandle<()>,
}

/// Wall-clock time as the core counts it.
pub fn now() -> Time {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    Time(d.as_micros().min(u64::MAX as u128) as u64)
}

pub(crate) fn label(id: NodeId) -> String {
    format!("{id}")
}

/// A cloneable handle for applications on a node (the SIP front-end): operations only.
#[derive(Clone)]
pub struct NodeClient {
    pub id: NodeId,
    /// The node's QUIC endpoint as given to other nodes.
    pub advertised: Option<SocketAddr>,
    cmd: mpsc::Sender<Command>,
    transport: Arc<Transport>,
    trust: Arc<crate::enroll::Trust>,
}

impl NodeClient {
    /// Which certificates the node accepts (its overlay's CA, if enrolled).
    pub fn trust(&self) -> &Arc<crate::enroll::Trust> {
        &self.trust
    }

    /// Runs an operation on the node and waits for its completion.
    pub async fn op(
        &self,
        f: impl FnOnce(&mut OverlayNode, Time) -> OpId + Send + 'static,
    ) -> anyhow::Result<Event> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Command::Op(Box::new(f), tx))
            .await
            .map_err(|_| anyhow!("node stopped"))?;
        rx.await
            .map_err(|_| anyhow!("node stopped before answering"))
    }

    /// Changes the node's core (no answer awaited beyond the hand-over).
    pub async fn with_core(&self, f: impl FnOnce(&mut OverlayNode) + Send + 'static) {
        let _ = self.cmd.send(Command::Core(Box::new(f))).await;
    }

    /// Serves application `app`: streams other nodes open for it (AppAttach) arrive on
    /// the returned channel, and AppAttach requests for it are answered with this node's
    /// candidates.
    pub async fn serve_app(&self, app: u32) -> mpsc::Receiver<AppStream> {
        let rx = self.transport.serve_app(app);
        let _ = self.cmd.send(Command::ServeApp(app)).await;
        rx
    }

    /// Asks `node` (AppAttach through the overlay) where its application `app` is
    /// reached; the request carries our candidates, so a node behind a NAT punches it
    /// towards us before it answers (proto/SPEC.md 2.8).
    pub async fn attach_app(&self, node: NodeId, app: u32) -> anyhow::Result<Reach> {
        let ev = self
            .op(move |core, t| core.app_attach(t, node, app))
            .await?;
        let Event::Completed { outcome, .. } = ev else {
            bail!("unexpected event");
        };
        match outcome {
            Ok(Body::AppAttachAns(a)) => Ok(reach_of(&a.candidates)),
            Ok(b) => bail!("unexpected answer {}", b.method_name()),
            Err(e) => bail!("AppAttach to {node}: {}", e.info),
        }
    }

    /// Opens a stream of application `app` to `node`, reached as `reach` says: directly
    /// (over an open application connection, or a new one punched through the NATs), or
    /// through its relay when no direct connection comes up within the punch timeout.
    pub async fn open_app(
        &self,
        node: NodeId,
        reach: &Reach,
        app: u32,
    ) -> anyhow::Result<(quinn::SendStream, quinn::RecvStream, AppPath)> {
        self.transport.open_app(node, reach, app).await
    }

    /// AppAttach, then a stream of application `app` to `node`.
    pub async fn connect_app(
        &self,
        node: NodeId,
        app: u32,
    ) -> anyhow::Result<(quinn::SendStream, quinn::RecvStream, AppPath)> {
        let reach = self.attach_app(node, app).await?;
        self.open_app(node, &reach, app).await
    }
}

impl NodeHandle {
    /// A cloneable handle for applications on this node.
    pub fn client(&self) -> NodeClient {
        NodeClient {
            id: self.id,
            advertised: self.advertised,
            cmd: self.cmd.clone(),
            transport: self.transport.clone(),
            trust: self.trust.clone(),
        }
    }

    /// Runs an operation on the node and waits for its completion.
    pub async fn op(
        &self,
        f: impl FnOnce(&mut OverlayNode, Time) -> OpId + Send + 'static,
    ) -> anyhow::Result<Event> {
        self.client().op(f).await
    }

    pub async fn status(&self) -> anyhow::Result<Status> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Command::Status(tx))
            .await
            .map_err(|_| anyhow!("node stopped"))?;
        rx.await.map_err(|_| anyhow!("node stopped"))
    }

    /// Waits until the node has joined, at most `limit`.
    pub async fn wait_joined(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let st = self.status().await?;
            if st.joined {
                return Ok(());
            }
            if let Some(why) = st.fatal {
                bail!("{why}");
            }
            if Instant::now() > deadline {
                bail!("node {} did not join within {limit:?}", self.id);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Leaves gracefully (data handed over, neighbours told), saves the store, stops.
    pub async fn shutdown(self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let _ = self.task.await;
    }

    /// Whether the node's task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// Starts a node. `seed` is its identity key.
pub async fn spawn(cfg: Config, role: Role, seed: [u8; 32]) -> anyhow::Result<NodeHandle> {
    cfg.validate()?;
    let creds = identity::credentials(&cfg, seed)?;
    let mut cfg = cfg;
    let ident = creds.identity.clone();
    let id = ident.node_id;
    let sync = SyncMode::parse(&cfg.storage.sync).unwrap_or(SyncMode::Batch);
    let store = match &cfg.data_dir {
        Some(dir) => DashStore::open(
            dir,
            sync,
            OnCorruption::parse(&cfg.storage.on_corruption).unwrap_or(OnCorruption::Refuse),
            &label(id),
        )?,
        None => DashStore::new(),
    };
    let docs = crate::overlay_config::DocState::startup(&mut cfg, creds.trust.clone(), &store)?;
    let trust = creds.trust.clone();
    let listen: SocketAddr = match &role {
        Role::Peer => resolve(&cfg.listen)
            .await
            .with_context(|| format!("listen address {:?}", cfg.listen))?,
        Role::Client { admitting } => {
            if admitting.is_ipv4() {
                "0.0.0.0:0".parse()?
            } else {
                "[::]:0".parse()?
            }
        }
    };
    let (ev_tx, ev_rx) = mpsc::channel(cfg.limits.event_queue.max(1));
    let transport = Transport::bind(&cfg, listen, &creds, ev_tx)?;
    let addr = transport.local_addr()?;
    let nat_mode = match (&role, cfg.nat.mode.as_str()) {
        (Role::Client { .. }, _) => NatMode::Client,
        (Role::Peer, "client") => NatMode::Client,
        (Role::Peer, "peer") => NatMode::Peer,
        (Role::Peer, _) if cfg.bootstrap.is_empty() => NatMode::Peer,
        (Role::Peer, _) => NatMode::Auto,
    };
    let mut core_cfg = cfg.core();
    for k in &docs.kinds {
        core_cfg.kinds.add(k.clone());
    }
    if creds.trust.is_enrolled() {
        core_cfg.verify = VerifyMode::Certificates(creds.trust.clone());
    }
    let client_core: ClientCoreFn = {
        let (core_cfg, ident, store) = (core_cfg.clone(), ident.clone(), store.clone());
        Box::new(move || {
            OverlayNode::new(
                core_cfg,
                ident,
                Box::new(ClientTopology::new(id)),
                Box::new(store),
                rand::random(),
            )
        })
    };
    let routes = matches!(role, Role::Peer) && nat_mode != NatMode::Client;
    let topology = if routes {
        cfg.algorithm_params()?.build(id)
    } else {
        Box::new(ClientTopology::new(id))
    };
    let node_seed: u64 = rand::random();
    let mut core = OverlayNode::new(
        core_cfg,
        ident,
        topology,
        Box::new(store.clone()),
        node_seed,
    );
    let mut boot: Vec<SocketAddr> = Vec::new();
    let mut form_at = None;
    match &role {
        Role::Peer => {
            // Names may not resolve yet (a container fleet starting together): retry for
            // a while before giving up.
            let give_up = Instant::now() + Duration::from_secs(30);
            loop {
                boot.clear();
                let mut errors = Vec::new();
                for b in &cfg.bootstrap {
                    match resolve(b).await {
                        Ok(a) => boot.push(a),
                        Err(e) => errors.push(format!("{b:?}: {e:#}")),
                    }
                }
                if cfg.bootstrap.is_empty() || !boot.is_empty() || Instant::now() > give_up {
                    for e in &errors {
                        tracing::warn!("bootstrap {e}");
                    }
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if !cfg.bootstrap.is_empty() {
                boot.extend(read_peer_cache(&store, cfg.data_dir.as_deref()));
            }
        }
        Role::Client { admitting } => boot.push(*admitting),
    }
    let me = advertised(&cfg, addr, &boot);
    match me {
        Some(a) => core.set_candidates(vec![candidate(a, pb::candidate::Type::Host)]),
        None => {
            tracing::warn!(%addr, "no address to advertise: other nodes can reach this one only on links it opens")
        }
    }
    if let Role::Peer = role {
        let first_is_me = boot.first().is_some_and(|b| Some(*b) == me || *b == addr);
        boot.retain(|a| *a != addr && Some(*a) != me);
        boot.dedup();
        if first_is_me {
            if boot.is_empty() {
                tracing::info!("this node is the first bootstrap peer and the only one");
            } else {
                form_at = Some(Instant::now() + Duration::from_secs(cfg.form_after_s));
                tracing::info!(
                    "this node is the first bootstrap peer: joining through the others if one answers within {} s",
                    cfg.form_after_s
                );
            }
        } else if !cfg.bootstrap.is_empty() && boot.is_empty() {
            bail!("no bootstrap address could be resolved");
        }
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let rt = Runtime {
        label: label(id),
        core,
        transport: transport.clone(),
        store,
        sync,
        saved_peers: Vec::new(),
        is_peer: routes,
        daemon: matches!(role, Role::Peer),
        nat_mode,
        host: me,
        reflexive: None,
        behind_nat: None,
        symmetric: false,
        reports: HashMap::new(),
        reached: Vec::new(),
        located: false,
        observe_until: None,
        client_core: Some(client_core),
        admitting: None,
        locating: None,
        moving_to: None,
        next_locate: Instant::now(),
        apps: Vec::new(),
        boot,
        boot_ids: Vec::new(),
        started: false,
        addrs: HashMap::new(),
        pending: HashMap::new(),
        attaching: HashMap::new(),
        waiters: HashMap::new(),
        shutdown: None,
        began: Instant::now(),
        fatal: None,
        form_at,
        docs,
    };
    let task = tokio::spawn(rt.run(ev_rx, cmd_rx));
    Ok(NodeHandle {
        id,
        addr,
        advertised: me,
        cmd: cmd_tx,
        transport,
        trust,
        task,
    })
}

/// A candidate of the given type; priorities as ICE's type preferences (host first).
pub fn candidate(a: SocketAddr, kind: pb::candidate::Type) -> pb::Candidate {
    use pb::candidate::Type;
    pb::Candidate {
        address: match a.ip() {
            IpAddr::V4(v) => v.octets().to_vec(),
            IpAddr::V6(v) => v.octets().to_vec(),
        },
        port: u32::from(a.port()),
        r#type: kind as i32,
        priority: match kind {
            Type::Host => 126,
            Type::PeerReflexive => 110,
            Type::ServerReflexive => 100,
            Type::Relayed | Type::Unspecified => 0,
        },
    }
}

fn is_relayed(c: &pb::Candidate) -> bool {
    c.r#type == pb::candidate::Type::Relayed as i32
}

/// Where a node's candidates say it can be reached (direct host and reflexive addresses,
/// and its relay): the first `MAX_CANDIDATES` usable ones, without repeats (proto/SPEC.md
/// 3); however many a message lists, no more are dialled or punched.
pub fn reach_of(candidates: &[pb::Candidate]) -> Reach {
    use p2psip_proto::limits::MAX_CANDIDATES;
    let mut r = Reach::default();
    let mut seen = std::collections::HashSet::new();
    let usable = candidates
        .iter()
        .filter_map(|c| Some((c, candidate_addr(c)?)))
        .filter(|(c, a)| seen.insert((is_relayed(c), *a)))
        .take(MAX_CANDIDATES);
    for (c, a) in usable {
        if is_relayed(c) {
            r.relay = r.relay.or(Some(a));
            continue;
        }
        r.reflexive |= c.r#type == pb::candidate::Type::ServerReflexive as i32;
        r.direct.push(a);
    }
    r
}

pub fn candidate_addr(c: &pb::Candidate) -> Option<SocketAddr> {
    let ip: IpAddr = match c.address.len() {
        4 => <[u8; 4]>::try_from(c.address.as_slice()).ok()?.into(),
        16 => <[u8; 16]>::try_from(c.address.as_slice()).ok()?.into(),
        _ => return None,
    };
    let port = u16::try_from(c.port).ok()?;
    (port != 0 && !ip.is_unspecified()).then(|| SocketAddr::new(ip, port))
}

/// The completion of an operation that a client cannot carry out (its admitting peer is
/// gone), with the reason.
fn failed(op: OpId, why: &str) -> Event {
    Event::Completed {
        op,
        method: "",
        outcome: Err(p2psip_algorithms::OpError {
            code: pb::ErrorCode::Unspecified,
            info: why.to_string(),
        }),
        hops: 0,
        latency: Duration::ZERO,
        responder: None,
    }
}

/// Resolves "host:port": an address, or a name through a DNS resolver of our own
/// (/etc/resolv.conf and /etc/hosts; no libc NSS, so a static binary in an empty container
/// resolves the same way).
pub async fn resolve(s: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("{s:?} is not host:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| anyhow!("{s:?}: {port:?} is not a port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let resolver = hickory_resolver::Resolver::builder_tokio()
        .context("reading the resolver configuration")?
        .build();
    let ips = resolver
        .lookup_ip(host)
        .await
        .with_context(|| format!("resolving {host:?}"))?;
    let ip = ips
        .iter()
        .find(|ip| ip.is_ipv4())
        .or_else(|| ips.iter().next())
        .ok_or_else(|| anyhow!("{host:?} resolves to no address"))?;
    Ok(SocketAddr::new(ip, port))
}

/// The address this node tells others to reach it at.
fn advertised(cfg: &Config, bound: SocketAddr, boot: &[SocketAddr]) -> Option<SocketAddr> {
    if !cfg.advertise.is_empty() {
        if let Ok(a) = cfg.advertise.parse::<SocketAddr>() {
            return Some(a);
        }
        if let Ok(ip) = cfg.advertise.parse::<IpAddr>() {
            return Some(SocketAddr::new(ip, bound.port()));
        }
        tracing::warn!(advertise = %cfg.advertise, "advertise is neither ip:port nor ip; ignored");
    }
    if !bound.ip().is_unspecified() {
        return Some(bound);
    }
    let towards = boot
        .first()
        .copied()
        .or_else(|| "192.0.2.1:9".parse().ok())?;
    local_ip_towards(towards).map(|ip| SocketAddr::new(ip, bound.port()))
}

/// The bootstrap cache: peers known at the last run (the database's `meta` table; data
/// directories of earlier versions kept it in a file `peers`).
fn read_peer_cache(store: &DashStore, dir: Option<&std::path::Path>) -> Vec<SocketAddr> {
    let text = store
        .meta(PEER_CACHE_KEY)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .or_else(|| dir.and_then(|d| std::fs::read_to_string(d.join("peers")).ok()))
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().parse().ok())
        .take(PEER_CACHE_MAX)
        .collect()
}

/// The key of the bootstrap cache in the database's `meta` table, and its size.
const PEER_CACHE_KEY: &str = "peers";
const PEER_CACHE_MAX: usize = 64;
/// Messages handled before one flush (and so one storage commit) at most.
const GROUP_COMMIT_MAX: usize = 64;

/// Peers whose reports of this node's address are kept (the first ones; later ones are
/// not needed to decide).
const REPORTERS_MAX: usize = 8;

/// Messages held back for a node while a link to it is being set up.
const PENDING_CAP: usize = 256;
/// How long a peer in `nat.mode = "auto"` waits for its first bootstrap peer to report its
/// address before it assumes it is reachable.
const OBSERVE_WAIT: Duration = Duration::from_secs(2);
/// How often a node behind a NAT checks that its admitting peer is still the peer
/// responsible for its Node-ID (through which requests addressed to it arrive).
const LOCATE_INTERVAL: Duration = Duration::from_secs(30);

type ClientCoreFn = Box<dyn FnOnce() -> OverlayNode + Send>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NatMode {
    /// Route unless the first bootstrap peer sees another address than our own.
    Auto,
    Peer,
    Client,
}

struct Runtime {
    label: String,
    core: OverlayNode,
    transport: std::sync::Arc<Transport>,
    store: DashStore,
    sync: SyncMode,
    /// The bootstrap cache as last written to the database.
    saved_peers: Vec<SocketAddr>,
    /// Whether this node routes for others (a peer) or not (a client).
    is_peer: bool,
    /// A long-running node (not a CLI client): behind a NAT it moves to the peer
    /// responsible for its Node-ID and recovers when its admitting peer goes.
    daemon: bool,
    nat_mode: NatMode,
    /// The address this node advertises as its host candidate.
    host: Option<SocketAddr>,
    /// The address peers see this node at (reported on the links it opens).
    reflexive: Option<SocketAddr>,
    behind_nat: Option<bool>,
    /// Two peers saw this node at two different addresses: its NAT maps each destination
    /// anew ("symmetric"), so its reflexive address is of no use to others.
    symmetric: bool,
    /// What each peer this node dialled reported seeing it at (at most
    /// [`REPORTERS_MAX`]): two distinct ones must agree that it is not at its own address
    /// before it concludes it is behind a NAT (proto/SPEC.md 2.8).
    reports: HashMap<NodeId, SocketAddr>,
    /// Peers this node dialled and reached, with the address (at most `PEER_CACHE_MAX`,
    /// newest last): the bootstrap cache.
    reached: Vec<(NodeId, SocketAddr)>,
    /// This client's admitting peer is the peer responsible for its Node-ID (requests
    /// addressed to it arrive there).
    located: bool,
    /// A peer in auto mode starts when its address is known, or at this time.
    observe_until: Option<Instant>,
    /// Builds the client core a peer behind a NAT runs instead of its algorithm.
    client_core: Option<ClientCoreFn>,
    /// A client's admitting peer.
    admitting: Option<NodeId>,
    /// The lookup of the peer responsible for this client's Node-ID.
    locating: Option<OpId>,
    /// The peer this client is moving to (an Attach to it is under way).
    moving_to: Option<NodeId>,
    next_locate: Instant,
    /// Applications served here (their AppAttach candidates follow the node's).
    apps: Vec<u32>,
    boot: Vec<SocketAddr>,
    boot_ids: Vec<NodeId>,
    started: bool,
    /// The first bootstrap peer starts the overlay itself at this time if no other
    /// bootstrap peer has answered by then.
    form_at: Option<Instant>,
    addrs: HashMap<NodeId, SocketAddr>,
    pending: HashMap<NodeId, Vec<Vec<u8>>>,
    attaching: HashMap<OpId, NodeId>,
    waiters: HashMap<OpId, oneshot::Sender<Event>>,
    shutdown: Option<(oneshot::Sender<()>, Instant)>,
    began: Instant,
    fatal: Option<String>,
    /// The overlay configuration document (proto/SPEC.md 5.3).
    docs: crate::overlay_config::DocState,
}

impl Runtime {
    async fn run(mut self, mut net: mpsc::Receiver<NetEvent>, mut cmds: mpsc::Receiver<Command>) {
        metrics::config_sequence(&self.label, self.docs.sequence());
        if self.boot.is_empty() {
            self.start_core();
        } else {
            self.dial_bootstrap();
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut boot_retry = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(3),
            Duration::from_secs(3),
        );
        let mut ticks: u64 = 0;
        loop {
            let deadline = self.core.poll_timeout().map(|t| {
                let n = now();
                Instant::now() + t.since(n)
            });
            tokio::select! {
                ev = net.recv() => match ev {
                    Some(ev) => {
                        self.on_net(ev);
                        // Group commit: what has already arrived is handled before the
                        // flush, so the stores among it share one commit.
                        if self.sync != SyncMode::Always {
                            for _ in 1..GROUP_COMMIT_MAX {
                                match net.try_recv() {
                                    Ok(ev) => self.on_net(ev),
                                    Err(_) => break,
                                }
                            }
                        }
                    }
                    None => break,
                },
                cmd = cmds.recv() => match cmd {
                    Some(c) => self.on_cmd(c),
                    None => {
                        // Every handle is gone: stop as on a shutdown request.
                        if self.shutdown.is_none() {
                            let (tx, _rx) = oneshot::channel();
                            self.begin_shutdown(tx);
                        }
                    }
                },
                _ = sleep_until(deadline) => self.core.handle_timeout(now()),
                _ = tick.tick() => {
                    ticks += 1;
                    self.maybe_start();
                    self.locate_responsible();
                    metrics::export(&self.label, &self.core, &self.store, &self.transport, self.began.elapsed().as_secs_f64());
                    // sync = "none": the second's commits reach the disk.
                    self.store.sync_now();
                    if ticks.is_multiple_of(10) {
                        self.save_peers();
                    }
                }
                _ = boot_retry.tick(), if self.is_peer && !self.started && !self.boot.is_empty() => {
                    if self.form_at.is_some_and(|t| Instant::now() >= t) {
                        tracing::info!("no other bootstrap peer answered: forming the overlay");
                        self.boot_ids.clear();
                        self.start_core();
                    } else {
                        self.dial_bootstrap();
                    }
                }
            }
            self.flush();
            if let Some((_, since)) = &self.shutdown {
                let done = self.core.state() == p2psip_algorithms::NodeState::Left
                    || since.elapsed() > Duration::from_secs(5);
                if done {
                    break;
                }
            }
        }
        self.flush();
        self.store.sync_now();
        self.save_peers();
        self.transport.shutdown().await;
        metrics::overlay_event(&self.label, "stopped");
        if let Some((tx, _)) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    fn dial_bootstrap(&mut self) {
        for a in self.boot.clone() {
            self.transport.connect(a, None);
        }
    }

    /// Starts the core once a bootstrap peer is linked and, for a peer in auto mode, its
    /// reachability is known (or the wait for it is over).
    fn maybe_start(&mut self) {
        if self.started || self.boot_ids.is_empty() {
            return;
        }
        if self.nat_mode == NatMode::Auto && self.behind_nat.is_none() {
            let until = *self
                .observe_until
                .get_or_insert_with(|| Instant::now() + OBSERVE_WAIT);
            if Instant::now() < until {
                return;
            }
            tracing::warn!(
                "no bootstrap peer reported this node's address: assuming it is reachable"
            );
            self.behind_nat = Some(false);
        }
        self.start_core();
    }

    /// A peer this node dialled told it the address it sees the link at. One report that
    /// it is at its own address says it is reachable; that a peer in auto mode is behind a
    /// NAT takes the reports of two distinct peers (one peer alone, which may lie, cannot
    /// make it a client; a client takes its admitting peer's report); two that see it at
    /// two ports of one address mean a symmetric NAT.
    fn on_observed(&mut self, by: NodeId, addr: SocketAddr) {
        if self.reports.len() >= REPORTERS_MAX && !self.reports.contains_key(&by) {
            return;
        }
        self.reports.insert(by, addr);
        let elsewhere: Vec<SocketAddr> = self
            .reports
            .values()
            .copied()
            .filter(|a| Some(*a) != self.host)
            .collect();
        // A peer in auto mode would stop routing on this: two reporters. A client routes
        // for nobody anyway; its admitting peer's word gives its reflexive candidate.
        let needed = if self.is_peer && self.nat_mode == NatMode::Auto {
            2
        } else {
            1
        };
        let behind = match (Some(addr) == self.host, elsewhere.len()) {
            (true, _) => false,
            (false, n) if n >= needed => true,
            (false, _) => {
                tracing::info!(%by, seen = %addr, host = ?self.host, "one peer sees this node at another address; a second peer's report decides whether it is behind a NAT (with a single bootstrap peer, set nat.mode = \"client\" if it is)");
                return;
            }
        };
        if behind && !self.symmetric {
            let ports: HashSet<u16> = elsewhere
                .iter()
                .filter(|a| a.ip() == addr.ip())
                .map(|a| a.port())
                .collect();
            if ports.len() >= 2 {
                tracing::info!(seen = ?elsewhere, "two peers see this node at two ports: the NAT maps each destination anew (symmetric); other nodes reach this one through its relay");
                self.symmetric = true;
                self.transport.set_symmetric(true);
            }
        }
        if self.reflexive != Some(addr) || self.behind_nat != Some(behind) {
            if behind {
                tracing::info!(%by, reflexive = %addr, host = ?self.host, "peers see this node at another address: behind a NAT");
            } else {
                tracing::info!(%by, %addr, "a peer sees this node at its own address: reachable");
            }
        }
        self.reflexive = Some(addr);
        self.behind_nat = Some(behind);
        if behind && self.is_peer && self.nat_mode == NatMode::Auto {
            if self.started {
                tracing::warn!("already routing as a peer; set nat.mode = \"client\" if others cannot reach this node");
            } else if let Some(make) = self.client_core.take() {
                self.core = make();
                self.is_peer = false;
                tracing::info!("behind a NAT: running as a client (routing nothing) of the peer responsible for this Node-ID");
            }
        }
        self.export_nat();
        self.refresh_candidates();
        self.maybe_start();
    }

    /// Sets the candidates this node gives in Attach and AppAttach: its host address, the
    /// reflexive address peers see, and behind a NAT its admitting peer as relay.
    fn refresh_candidates(&mut self) {
        use pb::candidate::Type;
        let mut c = Vec::new();
        if let Some(h) = self.host {
            c.push(candidate(h, Type::Host));
        }
        if let Some(r) = self
            .reflexive
            .filter(|r| Some(*r) != self.host && !self.symmetric)
        {
            c.push(candidate(r, Type::ServerReflexive));
        }
        if !self.is_peer {
            if let Some(a) = self.admitting.and_then(|p| self.addrs.get(&p)) {
                c.push(candidate(*a, Type::Relayed));
            }
        }
        self.core.set_candidates(c.clone());
        for app in &self.apps {
            self.core.set_app_candidates(*app, c.clone());
        }
    }

    /// A long-running client (a node behind a NAT) looks up the peer responsible for its
    /// Node-ID now and then: requests addressed to it are routed there.
    fn locate_responsible(&mut self) {
        if self.is_peer
            || !self.daemon
            || !self.core.is_joined()
            || self.locating.is_some()
            || self.moving_to.is_some()
            || Instant::now() < self.next_locate
        {
            return;
        }
        self.next_locate = Instant::now() + LOCATE_INTERVAL;
        let me = self.core.id();
        self.locating = Some(self.core.lookup(now(), me));
    }

    /// The lookup of the responsible peer answered: move there if it is another peer.
    fn on_located(&mut self, responder: Option<NodeId>) {
        self.locating = None;
        if responder.is_some() && responder == self.admitting {
            self.located = true;
            self.export_nat();
        }
        let Some(r) = responder.filter(|r| Some(*r) != self.admitting && *r != self.core.id())
        else {
            return;
        };
        if self.transport.is_linked(r) {
            self.readmit(r);
        } else if let Some(a) = self.admitting {
            tracing::info!(peer = %r, "moving to the peer responsible for this Node-ID");
            self.moving_to = Some(r);
            let op = self.core.attach(now(), r, Some(a));
            self.attaching.insert(op, r);
        }
    }

    /// Makes `peer` (linked) this client's admitting peer.
    fn readmit(&mut self, peer: NodeId) {
        self.core.readmit(now(), peer);
        self.admitting = Some(peer);
        self.moving_to = None;
        tracing::info!(%peer, "admitted by this peer");
        self.refresh_candidates();
        // Confirm at once that it is the responsible peer.
        self.located = false;
        self.next_locate = Instant::now();
        self.export_nat();
    }

    fn export_nat(&self) {
        metrics::nat(
            &self.label,
            metrics::NatState {
                behind_nat: self.behind_nat == Some(true),
                symmetric: self.symmetric,
                routes: self.is_peer,
                located: self.is_peer || self.located,
            },
        );
    }

    fn start_core(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        self.export_nat();
        if !self.is_peer {
            self.admitting = self.boot_ids.first().copied();
            self.refresh_candidates();
        }
        let ids = self.boot_ids.clone();
        self.core.start(now(), &ids);
        if ids.is_empty() {
            tracing::info!(node = %self.core.id(), "forming a new overlay");
        }
    }

    fn on_net(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::Message { from, bytes, .. } => {
                metrics::message(&self.label, "in", &bytes);
                self.core.handle_message(now(), from, &bytes);
            }
            NetEvent::LinkUp {
                node,
                addr,
                dialled,
            } => {
                tracing::debug!(%node, %addr, dialled, "link up");
                self.addrs.insert(node, addr);
                if dialled {
                    // The bootstrap cache holds peers this node reached at the address it
                    // dialled (the handshake proved the Node-ID), newest last.
                    self.reached.retain(|(n, _)| *n != node);
                    self.reached.push((node, addr));
                    if self.reached.len() > PEER_CACHE_MAX {
                        self.reached.remove(0);
                    }
                }
                if self.boot.contains(&addr) && !self.boot_ids.contains(&node) {
                    self.boot_ids.push(node);
                }
                if let Some(msgs) = self.pending.remove(&node) {
                    for m in msgs {
                        self.send_now(node, m);
                    }
                }
                self.core.handle_link(now(), LinkEvent::Up(node));
                self.send_config(node);
                self.maybe_start();
                if self.started
                    && !self.is_peer
                    && self.daemon
                    && (self.moving_to == Some(node) || self.admitting.is_none())
                {
                    self.readmit(node);
                }
            }
            NetEvent::Observed { by, addr } => self.on_observed(by, addr),
            NetEvent::LinkDown { node, refused } => {
                tracing::debug!(%node, "link down");
                if !self.is_peer && self.daemon && self.admitting == Some(node) {
                    tracing::warn!(%node, "lost the admitting peer: reconnecting through the bootstrap peers");
                    self.admitting = None;
                    self.located = false;
                    self.export_nat();
                    self.dial_bootstrap();
                } else if !self.is_peer && !self.daemon && self.admitting == Some(node) {
                    // A client has only its admitting peer: without it every operation
                    // fails, at once and with the peer's reason.
                    let why = match refused {
                        Some(r) => format!("the admitting peer refused us: {r}"),
                        None => "the admitting peer closed the connection".into(),
                    };
                    for (op, tx) in self.waiters.drain() {
                        let _ = tx.send(failed(op, &why));
                    }
                    self.fatal = Some(why);
                }
                self.core.handle_link(now(), LinkEvent::Failed(node));
            }
            NetEvent::ConnectFailed { node, addr, reason } => {
                if !self.is_peer && !self.daemon && self.boot.contains(&addr) {
                    self.fatal = Some(format!("admitting peer {addr} unreachable: {reason}"));
                }
                if self.boot.contains(&addr) && !self.started {
                    tracing::warn!(%addr, "bootstrap peer unreachable: {reason}");
                } else {
                    tracing::debug!(%addr, "connect failed: {reason}");
                }
                if let Some(n) = node {
                    if self.moving_to == Some(n) {
                        // The move failed: the next lookup of the responsible peer retries.
                        self.moving_to = None;
                    }
                    self.pending.remove(&n);
                    self.addrs.remove(&n);
                    self.core.handle_link(now(), LinkEvent::Failed(n));
                }
            }
        }
    }

    fn on_cmd(&mut self, c: Command) {
        match c {
            Command::Op(f, tx) => {
                let op = f(&mut self.core, now());
                match &self.fatal {
                    Some(why) if !self.is_peer => {
                        let _ = tx.send(failed(op, why));
                    }
                    _ => {
                        self.waiters.insert(op, tx);
                    }
                }
            }
            Command::Status(tx) => {
                let _ = tx.send(Status {
                    id: self.core.id(),
                    joined: self.core.is_joined(),
                    routing: self.core.routing_table(),
                    stats: self.core.stats().clone(),
                    connections: self.transport.connection_count(),
                    stored_values: self.core.storage().value_count(),
                    fatal: self.fatal.clone(),
                    reflexive: self.reflexive,
                    behind_nat: self.behind_nat,
                });
            }
            Command::Core(f) => f(&mut self.core),
            Command::ServeApp(app) => {
                if !self.apps.contains(&app) {
                    self.apps.push(app);
                }
                self.refresh_candidates();
            }
            Command::Shutdown(tx) => self.begin_shutdown(tx),
        }
    }

    /// Sends our overlay configuration document (if any) to a linked node: a new neighbour
    /// with an older one takes ours, one with a newer one sends us its own.
    fn send_config(&mut self, to: NodeId) {
        if let Some((sequence, bytes)) = &self.docs.current {
            let update = crate::overlay_config::update_req(*sequence, bytes.clone());
            self.core.config_update(now(), to, update);
        }
    }

    /// A peer's ConfigUpdate: a newer document that verifies is applied, kept and passed on
    /// to every other link; an older one is answered with ours.
    fn on_config_update(&mut self, from: NodeId, update: pb::ConfigUpdateReq) {
        use crate::overlay_config::Offer;
        if update.r#type != pb::config_update_req::Type::Config as i32 {
            return;
        }
        match self.docs.offer(update.sequence, &update.config_data) {
            Offer::Taken(doc) => {
                tracing::info!(sequence = doc.sequence, %from, "new overlay configuration document");
                if let Some(l) = &doc.limits {
                    let c = self.core.config();
                    let mut limits = crate::config::Limits {
                        origin_requests_per_s: c.origin_rate,
                        origin_burst: c.origin_burst,
                        origin_max_in_flight: c.origin_max_in_flight,
                        writer_kind_bytes: c.writer_kind_bytes,
                        ..Default::default()
                    };
                    crate::overlay_config::apply_limits(&mut limits, l);
                    self.core.set_limits(
                        limits.origin_requests_per_s,
                        limits.origin_burst,
                        limits.origin_max_in_flight,
                        limits.writer_kind_bytes,
                    );
                }
                for k in &doc.kinds {
                    if let Ok(k) = k.to_kind() {
                        self.core.define_kind(k);
                    }
                }
                metrics::config_sequence(&self.label, doc.sequence);
                for n in self.transport.linked_nodes() {
                    if n != from {
                        self.send_config(n);
                    }
                }
            }
            Offer::Old => {
                if update.sequence < self.docs.sequence() {
                    self.send_config(from);
                }
            }
            Offer::Refused(why) => {
                crate::remote_log!(warn, "config_refused", %from, sequence = update.sequence, "overlay configuration document refused: {why}");
                metrics::config_refused(&self.label);
            }
        }
    }

    fn begin_shutdown(&mut self, tx: oneshot::Sender<()>) {
        tracing::info!(node = %self.core.id(), "leaving the overlay");
        self.core.leave(now());
        metrics::overlay_event(&self.label, "leave");
        self.shutdown = Some((tx, Instant::now()));
    }

    fn send_now(&mut self, to: NodeId, bytes: Vec<u8>) {
        metrics::message(&self.label, "out", &bytes);
        if let Err(b) = self.transport.send(to, bytes) {
            self.queue_for(to, b);
        }
    }

    /// Holds a message for a node without a link, and sets one up: connect to a known
    /// address, or ask the node for its candidates through the overlay (Attach).
    fn queue_for(&mut self, to: NodeId, bytes: Vec<u8>) {
        let fresh = !self.pending.contains_key(&to);
        let q = self.pending.entry(to).or_default();
        if q.len() >= PENDING_CAP {
            q.remove(0);
        }
        q.push(bytes);
        if !fresh {
            return;
        }
        if let Some(a) = self.addrs.get(&to).copied() {
            self.transport.connect(a, Some(to));
        } else if let Some(via) = self.attach_via(to).filter(|_| self.is_peer) {
            let op = self.core.attach(now(), to, Some(via));
            self.attaching.insert(op, to);
        } else {
            self.pending.remove(&to);
            self.core.handle_link(now(), LinkEvent::Failed(to));
        }
    }

    /// The node an Attach to `to` goes through: a linked peer of the routing table or a
    /// bootstrap peer, and only when there is none, any link. Not any link first: a client
    /// linked to us (one that chose this node as its admitting peer) does not route, and
    /// every Attach sent through it was lost (a just-joined peer then timed out on all its
    /// neighbours at once and went on alone).
    fn attach_via(&self, to: NodeId) -> Option<NodeId> {
        let rt = self.core.routing_table();
        rt.successors
            .iter()
            .chain(&rt.predecessors)
            .chain(&rt.fingers)
            .chain(&self.boot_ids)
            .copied()
            .find(|n| *n != to && self.transport.is_linked(*n))
            .or_else(|| self.transport.any_link(to))
    }

    fn flush(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(t) = self.core.poll_transmit() {
                progressed = true;
                self.send_now(t.to, t.bytes);
            }
            while let Some(e) = self.core.poll_event() {
                progressed = true;
                self.on_event(e);
            }
            if !progressed {
                break;
            }
        }
    }

    fn on_event(&mut self, e: Event) {
        match e {
            Event::Joined => {
                tracing::info!(node = %self.core.id(), algorithm = self.core.algorithm(), "joined the overlay");
                metrics::overlay_event(&self.label, "join");
            }
            Event::JoinFailed(why) => {
                crate::remote_log!(warn, "join_failed", node = %self.core.id(), "join failed: {why}");
                metrics::overlay_event(&self.label, "join_failed");
            }
            Event::Left => tracing::info!(node = %self.core.id(), "left the overlay"),
            Event::ConfigUpdate { from, update } => self.on_config_update(from, update),
            Event::PeerCandidates { node, candidates } => {
                let reach = reach_of(&candidates);
                if self.behind_nat == Some(true) {
                    // Open our NAT towards the requester before our answer reaches it: its
                    // connection attempt then finds the way in (proto/SPEC.md 2.8).
                    for a in &reach.direct {
                        self.transport.punch(*a);
                    }
                }
                if self.is_peer {
                    if let Some(a) = reach.direct.first() {
                        self.addrs.insert(node, *a);
                    }
                }
            }
            Event::Completed {
                op,
                method,
                outcome,
                hops,
                latency,
                responder,
            } => {
                if self.locating == Some(op) {
                    self.on_located(responder.filter(|_| outcome.is_ok()));
                    return;
                }
                if let Some(node) = self.attaching.remove(&op) {
                    let addr = match &outcome {
                        Ok(Body::AttachAns(a)) => reach_of(&a.candidates).direct.first().copied(),
                        _ => None,
                    };
                    if addr.is_none() && self.moving_to == Some(node) {
                        self.moving_to = None;
                    }
                    match addr {
                        Some(a) => {
                            self.addrs.insert(node, a);
                            self.transport.connect(a, Some(node));
                        }
                        None => {
                            tracing::debug!(%node, "attach gave no usable address");
                            self.pending.remove(&node);
                            self.core.handle_link(now(), LinkEvent::Failed(node));
                        }
                    }
                    return;
                }
                metrics::transaction(
                    &self.label,
                    method,
                    latency.as_secs_f64(),
                    hops,
                    outcome.is_ok(),
                );
                if let Some(tx) = self.waiters.remove(&op) {
                    let _ = tx.send(Event::Completed {
                        op,
                        method,
                        outcome,
                        hops,
                        latency,
                        responder,
                    });
                }
            }
        }
    }

    /// Keeps the addresses of the peers this node reached in the database (the bootstrap
    /// cache dialled at the next start), when they changed; at most `PEER_CACHE_MAX`.
    /// Addresses that other nodes merely gave (Attach candidates) are not kept.
    fn save_peers(&mut self) {
        let mut peers: Vec<SocketAddr> = self.reached.iter().map(|(_, a)| *a).collect();
        peers.sort();
        peers.dedup();
        peers.truncate(PEER_CACHE_MAX);
        if peers.is_empty() || peers == self.saved_peers {
            return;
        }
        let text = peers
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        match self.store.set_meta(PEER_CACHE_KEY, text.as_bytes()) {
            Ok(()) => self.saved_peers = peers,
            Err(e) => tracing::warn!("keeping the bootstrap cache: {e}"),
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_with_thousands_of_candidates_yields_at_most_eight_distinct_ones() {
        let host = pb::candidate::Type::Host;
        let mut many = Vec::new();
        for i in 0..10_000u32 {
            // Repeats of a few addresses, then thousands of distinct ones.
            let port = if i < 5_000 {
                4000 + (i % 3) as u16
            } else {
                10_000 + (i % 50_000) as u16
            };
            many.push(candidate(SocketAddr::from(([127, 0, 0, 1], port)), host));
        }
        let r = reach_of(&many);
        assert_eq!(r.direct.len(), p2psip_proto::limits::MAX_CANDIDATES);
        let distinct: std::collections::HashSet<_> = r.direct.iter().collect();
        assert_eq!(distinct.len(), r.direct.len(), "no repeats");
        assert_eq!(
            r.direct[..3],
            [
                SocketAddr::from(([127, 0, 0, 1], 4000)),
                SocketAddr::from(([127, 0, 0, 1], 4001)),
                SocketAddr::from(([127, 0, 0, 1], 4002)),
            ],
            "the first usable ones, in order"
        );
    }
}
