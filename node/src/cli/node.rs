//! `p2psip node`: runs a peer (or client) of an overlay until a signal.

use super::{init_logs, LogArgs};
use crate::config::Config;
use crate::runtime::{self, NodeHandle, Role};
use crate::{identity, metrics, sip};
use clap::Args;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct NodeArgs {
    /// Configuration file (TOML; see deploy/p2psip.toml for every field).
    #[arg(long, short, env = "P2PSIP_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Overlay name.
    #[arg(long, env = "P2PSIP_OVERLAY")]
    pub(crate) overlay: Option<String>,
    /// Threads the node runs on. 1 (the default): one thread, the least memory and idle
    /// CPU, and what a fleet of peers on one machine wants (the overlay's decisions run in
    /// one state machine anyway); 0: one per core, for a lone peer carrying a heavy load.
    #[arg(long, env = "P2PSIP_THREADS", default_value_t = 1)]
    pub(crate) threads: usize,
    /// DHT algorithm: chord, kademlia or onehop.
    #[arg(long, env = "P2PSIP_ALGORITHM")]
    pub(crate) algorithm: Option<String>,
    /// UDP address to listen on, e.g. 0.0.0.0:4700.
    #[arg(long, env = "P2PSIP_LISTEN")]
    pub(crate) listen: Option<String>,
    /// Peers to join through, comma-separated host:port. None: start a new overlay.
    #[arg(long, env = "P2PSIP_BOOTSTRAP", value_delimiter = ',')]
    pub(crate) bootstrap: Option<Vec<String>>,
    /// Identity key file (created if missing). Default: <data-dir>/node.key, or ephemeral.
    #[arg(long, env = "P2PSIP_IDENTITY")]
    pub(crate) identity: Option<PathBuf>,
    /// Directory for stored data and the bootstrap cache.
    #[arg(long, env = "P2PSIP_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Address of the Prometheus /metrics endpoint, e.g. 0.0.0.0:9470 (port 0: one the
    /// kernel picks, printed as "metrics on http://ADDR/metrics" after the listening line).
    #[arg(long, env = "P2PSIP_METRICS")]
    pub(crate) metrics: Option<String>,
    /// Turns the SIP front-end (registrar and proxy) on at this UDP/TCP address, e.g.
    /// 0.0.0.0:5060 (the [sip] table of the configuration holds its other settings).
    #[arg(long, env = "P2PSIP_SIP")]
    pub(crate) sip: Option<String>,
    /// Serves the echo application (7) that `p2psip client app-echo` calls (nat.echo).
    #[arg(long)]
    pub(crate) echo: bool,
    /// The overlay CA's certificate (security.ca): only enrolled nodes are admitted.
    #[arg(long, env = "P2PSIP_CA", requires = "certificate")]
    pub(crate) ca: Option<PathBuf>,
    /// This node's certificate from the overlay CA (security.certificate).
    #[arg(long, env = "P2PSIP_CERTIFICATE", requires = "ca")]
    pub(crate) certificate: Option<PathBuf>,
    /// The overlay configuration document signed by the CA (security.overlay_config).
    #[arg(long, env = "P2PSIP_OVERLAY_CONFIG", requires = "ca")]
    pub(crate) overlay_config: Option<PathBuf>,
    /// Reachability: "auto" (route only if peers see this node's own address; behind a
    /// NAT run as a client), "peer" or "client" (nat.mode).
    #[arg(long, env = "P2PSIP_NAT_MODE")]
    pub(crate) nat_mode: Option<String>,
    /// When a store is on disk: always, batch (default) or none (storage.sync).
    #[arg(long, env = "P2PSIP_STORAGE_SYNC")]
    pub(crate) storage_sync: Option<String>,
    #[command(flatten)]
    pub(crate) log: LogArgs,
}

pub(crate) async fn run(a: NodeArgs) -> anyhow::Result<()> {
    let mut cfg = match &a.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(v) = a.overlay {
        cfg.overlay = v;
    }
    if let Some(v) = a.algorithm {
        cfg.algorithm = v;
    }
    if let Some(v) = a.listen {
        cfg.listen = v;
    }
    if let Some(v) = a.bootstrap {
        cfg.bootstrap = v.into_iter().filter(|s| !s.is_empty()).collect();
    }
    if let Some(v) = a.identity {
        cfg.identity = Some(v);
    }
    if let Some(v) = a.data_dir {
        cfg.data_dir = Some(v);
    }
    if let Some(v) = a.metrics {
        cfg.metrics = v;
    }
    if let Some(v) = a.sip {
        cfg.sip.enabled = true;
        cfg.sip.listen = v;
    }
    if a.echo {
        cfg.nat.echo = true;
    }
    if let Some(v) = a.ca {
        cfg.security.ca = Some(v);
    }
    if let Some(v) = a.certificate {
        cfg.security.certificate = Some(v);
    }
    if let Some(v) = a.overlay_config {
        cfg.security.overlay_config = Some(v);
    }
    if let Some(v) = a.nat_mode {
        cfg.nat.mode = v;
    }
    if let Some(v) = a.storage_sync {
        cfg.storage.sync = v;
    }
    if let Some(v) = a.log.log_format {
        cfg.log.format = v;
    }
    if let Some(v) = a.log.log_level {
        cfg.log.level = v;
    }
    cfg.validate()?;
    init_logs(&cfg.log.format, &cfg.log.level);
    let key_path = cfg
        .identity
        .clone()
        .or_else(|| cfg.data_dir.as_ref().map(|d| d.join("node.key")));
    let seed = match &key_path {
        Some(p) => {
            identity::load_or_create(p, &cfg.user, true)?;
            identity::read_seed(p)?
        }
        None => {
            tracing::warn!("no identity file or data dir: using an ephemeral identity");
            identity::generate_seed()
        }
    };
    let metrics_at = if cfg.metrics.is_empty() {
        None
    } else {
        let addr: SocketAddr = runtime::resolve(&cfg.metrics).await?;
        let addr = metrics::install(addr).await?;
        tracing::info!("metrics on http://{addr}/metrics");
        Some(addr)
    };
    let h = runtime::spawn(cfg.clone(), Role::Peer, seed).await?;
    println!(
        "p2psip node {:#} listening on {} (overlay {:?}, algorithm {})",
        h.id, h.addr, cfg.overlay, cfg.algorithm
    );
    if let Some(addr) = metrics_at {
        println!("metrics on http://{addr}/metrics");
    }
    if cfg.nat.echo {
        crate::echo::serve(&h.client()).await;
    }
    if !cfg.services.is_empty() {
        let identity = identity::credentials(&cfg, seed)?.identity;
        crate::services::spawn(
            h.client(),
            identity,
            cfg.services.clone(),
            crate::metrics::label(h.id),
        );
    }
    let _sip = if cfg.sip.enabled {
        let s = sip::SipSettings::from_config(&cfg.sip, h.advertised)?;
        let fe = sip::start(h.client(), s).await?;
        println!("SIP front-end on udp/tcp {}", fe.addr);
        Some(fe)
    } else {
        None
    };
    std::io::stdout().flush().ok();
    wait_for_signal(&h).await;
    h.shutdown().await;
    Ok(())
}

pub(crate) async fn wait_for_signal(h: &NodeHandle) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return,
        };
        // Event-driven: an idle peer is woken by none of the three (a 500 ms poll of the
        // node's state here was most of an idle peer's wake-ups).
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = h.finished() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
