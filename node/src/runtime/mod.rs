//! The runtime: drives one sans-IO `OverlayNode` with tokio — real time, the QUIC
//! transport, timers — and serves in-process commands (the CLI client and devnet use them).

mod document;
mod driver;
mod export;
mod host;
mod inbox;
mod nat;
mod operations;
mod peer_cache;
mod start;

pub use self::operations::{store_answer, OpError};
use self::peer_cache::*;
pub use self::start::spawn;
pub use p2psip_algorithms::reach::{candidate, candidate_addr, reach_of};

use crate::config::Config;
use crate::identity;
use crate::metrics::{self, label};
use crate::storage::{DashStore, OnCorruption, SyncMode};
use crate::transport::{
    local_ip_towards, AppError, AppPath, AppStream, NetEvent, Reach, Transport,
};
use p2psip_algorithms::admission::{Admission, Located};
use p2psip_algorithms::bootstrap::{Bootstrap, Retry};
use p2psip_algorithms::client::ClientTopology;
use p2psip_algorithms::links::{attach_address, attach_via, Attached, Links, Setup};
use p2psip_algorithms::reach::{NatMode, Observed, Reachability, Start};
use p2psip_algorithms::storage::VerifyMode;
use p2psip_algorithms::{
    Event, LinkEvent, NodeId, OpId, OverlayNode, RoutingSnapshot, Stats, Time,
};
use p2psip_proto::pb;
use p2psip_proto::Body;
use std::collections::HashMap;
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
    trust: Arc<crate::security::trust::Trust>,
    task: tokio::task::JoinHandle<()>,
}

/// Wall-clock time as the core counts it.
pub fn now() -> Time {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    Time(d.as_micros().min(u64::MAX as u128) as u64)
}

/// An AppAttach that has not completed (answered, refused or given up by the node's
/// retransmissions) within this is abandoned.
const APP_ATTACH_LIMIT: Duration = Duration::from_secs(30);

/// A cloneable handle for applications on a node (the SIP front-end): operations only.
#[derive(Clone)]
pub struct NodeClient {
    pub id: NodeId,
    /// The node's QUIC endpoint as given to other nodes.
    pub advertised: Option<SocketAddr>,
    cmd: mpsc::Sender<Command>,
    transport: Arc<Transport>,
    trust: Arc<crate::security::trust::Trust>,
}

impl NodeClient {
    /// Which certificates the node accepts (its overlay's CA, if enrolled).
    pub fn trust(&self) -> &Arc<crate::security::trust::Trust> {
        &self.trust
    }

    /// Runs an operation on the node and waits for its completion.
    pub async fn op(
        &self,
        f: impl FnOnce(&mut OverlayNode, Time) -> OpId + Send + 'static,
    ) -> Result<Event, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Command::Op(Box::new(f), tx))
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Whether the node has stopped (its driver is gone).
    pub fn is_closed(&self) -> bool {
        self.cmd.is_closed()
    }

    /// What the node reports about itself (state, neighbours, counters).
    pub async fn status(&self) -> Result<Status, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Command::Status(tx))
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
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
    pub async fn attach_app(&self, node: NodeId, app: u32) -> Result<Reach, NodeError> {
        let failed = |source| NodeError::AppAttach { node, source };
        let body = self
            .run(APP_ATTACH_LIMIT, move |core, t| {
                core.app_attach(t, node, app)
            })
            .await
            .map_err(failed)?;
        match body {
            Body::AppAttachAns(a) => Ok(reach_of(&a.candidates)),
            b => Err(failed(OpError::Unexpected(b.method_name().to_string()))),
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
    ) -> Result<(quinn::SendStream, quinn::RecvStream, AppPath), AppError> {
        self.transport.open_app(node, reach, app).await
    }

    /// AppAttach, then a stream of application `app` to `node`.
    pub async fn connect_app(
        &self,
        node: NodeId,
        app: u32,
    ) -> Result<(quinn::SendStream, quinn::RecvStream, AppPath), NodeError> {
        let reach = self.attach_app(node, app).await?;
        Ok(self.open_app(node, &reach, app).await?)
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
    ) -> Result<Event, NodeError> {
        self.client().op(f).await
    }

    pub async fn status(&self) -> Result<Status, NodeError> {
        self.client().status().await
    }

    /// A client's admitting peer (its only routing-table entry).
    pub async fn admitting_peer(&self) -> Result<NodeId, NodeError> {
        self.status()
            .await?
            .routing
            .successors
            .first()
            .copied()
            .ok_or(NodeError::NoAdmittingPeer)
    }

    /// Waits until the node has joined, at most `limit`.
    pub async fn wait_joined(&self, limit: Duration) -> Result<(), NodeError> {
        let deadline = Instant::now() + limit;
        loop {
            let st = self.status().await?;
            if st.joined {
                return Ok(());
            }
            if let Some(why) = st.fatal {
                return Err(NodeError::Fatal(why));
            }
            if Instant::now() > deadline {
                return Err(NodeError::NotJoined {
                    node: self.id,
                    limit,
                });
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

    /// Completes when the node's task has ended (it dropped its command queue): a stop
    /// on a fatal error, or after a shutdown. Wakes nobody before.
    pub async fn finished(&self) {
        self.cmd.closed().await;
    }
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
pub async fn resolve(s: &str) -> Result<SocketAddr, ResolveError> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| ResolveError::NotHostPort(s.to_string()))?;
    let port: u16 = port.parse().map_err(|_| ResolveError::BadPort {
        input: s.to_string(),
        port: port.to_string(),
    })?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let resolver = hickory_resolver::Resolver::builder_tokio()
        .map_err(|e| ResolveError::Config(e.to_string()))?
        .build();
    let ips = resolver
        .lookup_ip(host)
        .await
        .map_err(|e| ResolveError::Lookup {
            host: host.to_string(),
            why: e.to_string(),
        })?;
    let ip = ips
        .iter()
        .find(|ip| ip.is_ipv4())
        .or_else(|| ips.iter().next())
        .ok_or_else(|| ResolveError::NoAddress(host.to_string()))?;
    Ok(SocketAddr::new(ip, port))
}

/// Why "host:port" gave no address.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{0:?} is not host:port")]
    NotHostPort(String),
    #[error("{input:?}: {port:?} is not a port")]
    BadPort { input: String, port: String },
    #[error("reading the resolver configuration: {0}")]
    Config(String),
    #[error("resolving {host:?}: {why}")]
    Lookup { host: String, why: String },
    #[error("{0:?} resolves to no address")]
    NoAddress(String),
}

/// Why a node's handle could not do what was asked (an overlay operation's own
/// refusals are [`OpError`]s).
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The node's driver is gone (stopped, or stopping).
    #[error("the node has stopped")]
    Stopped,
    /// A client without an admitting peer.
    #[error("no admitting peer")]
    NoAdmittingPeer,
    #[error("node {node} did not join within {limit:?}")]
    NotJoined { node: NodeId, limit: Duration },
    /// A client cannot work: its admitting peer refused it or is unreachable.
    #[error("{0}")]
    Fatal(String),
    #[error("AppAttach to {node}: {source}")]
    AppAttach {
        node: NodeId,
        #[source]
        source: OpError,
    },
    #[error(transparent)]
    App(#[from] AppError),
}

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error(transparent)]
    Storage(#[from] crate::storage::OpenError),
    #[error(transparent)]
    Document(#[from] crate::overlay_config::DocError),
    #[error("listen address {listen:?}: {error}")]
    Listen { listen: String, error: ResolveError },
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    #[error("the endpoint's own address: {0}")]
    LocalAddr(std::io::Error),
    #[error("no bootstrap address could be resolved")]
    NoBootstrap,
}

/// The key of the bootstrap cache in the database's `meta` table.
const PEER_CACHE_KEY: &str = "peers";
/// How often the bootstrap cache is written.
const PEER_CACHE_SAVE_EVERY: Duration = Duration::from_secs(10);
/// The housekeeping tick of a joined peer with nothing that needs it every second.
const IDLE_TICK: Duration = Duration::from_secs(5);
/// A node ticks every second for this long after it started, whatever else.
const BUSY_START: Duration = Duration::from_secs(30);

type ClientCoreFn = Box<dyn FnOnce() -> OverlayNode + Send>;

struct Runtime {
    label: String,
    core: OverlayNode,
    transport: std::sync::Arc<Transport>,
    store: DashStore,
    sync: SyncMode,
    /// The bootstrap cache as last written to the database.
    saved_peers: Vec<SocketAddr>,
    /// A long-running node (not a CLI client): behind a NAT it moves to the peer
    /// responsible for its Node-ID and recovers when its admitting peer goes.
    daemon: bool,
    /// Where this node can be reached and whether it routes for others (a peer) or not
    /// (a client): its host address, the reports of the peers it dialled, its NAT
    /// (proto/SPEC.md 2.8). The decisions are the core's; this driver applies them.
    reach: Reachability,
    /// A client's admitting peer and its move to the peer responsible for its Node-ID
    /// (the core's decisions; this driver starts the lookups and links).
    admission: Admission,
    /// Builds the client core a peer behind a NAT runs instead of its algorithm.
    client_core: Option<ClientCoreFn>,
    /// Applications served here (their AppAttach candidates follow the node's).
    apps: Vec<u32>,
    /// The bootstrap addresses, the peers they hold, when the first bootstrap peer forms
    /// the overlay, and the bootstrap cache (the core's decisions).
    boot: Bootstrap,
    started: bool,
    /// Addresses of nodes, messages held for nodes without a link, Attaches under way
    /// (the core's decisions; this driver connects and sends).
    links: Links,
    waiters: HashMap<OpId, oneshot::Sender<Event>>,
    shutdown: Option<(oneshot::Sender<()>, Instant)>,
    began: Instant,
    fatal: Option<String>,
    /// The overlay configuration document (proto/SPEC.md 5.3).
    docs: crate::overlay_config::DocState,
    /// Memory and machine uptime as last read (diagnostics).
    proc_read: Option<host::ProcRead>,
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
