//! Starting a node: identity, trust, storage, the QUIC transport, the advertised address,
//! then the driver task.

use super::*;

/// Starts a node. `seed` is its identity key.
pub async fn spawn(cfg: Config, role: Role, seed: [u8; 32]) -> Result<NodeHandle, StartError> {
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
            .map_err(|error| StartError::Listen {
                listen: cfg.listen.clone(),
                error,
            })?,
        Role::Client { admitting } => {
            let any: IpAddr = if admitting.is_ipv4() {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            };
            SocketAddr::new(any, 0)
        }
    };
    let (ev_tx, ev_rx) = mpsc::channel(cfg.limits.event_queue.max(1));
    let transport = Transport::bind(&cfg, listen, &creds, ev_tx)?;
    let addr = transport.local_addr().map_err(StartError::LocalAddr)?;
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
    if let Some(ops) = &docs.operators {
        core_cfg.diagnostics_open = false;
        core_cfg.operators = ops.clone();
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
    let mut reach = Reachability::new(nat_mode, None, matches!(role, Role::Peer));
    let routes = reach.routes();
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
    reach.set_host(me);
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
                form_at = Some(now() + Duration::from_secs(cfg.form_after_s));
                tracing::info!(
                    "this node is the first bootstrap peer: joining through the others if one answers within {} s",
                    cfg.form_after_s
                );
            }
        } else if !cfg.bootstrap.is_empty() && boot.is_empty() {
            return Err(StartError::NoBootstrap);
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
        daemon: matches!(role, Role::Peer),
        reach,
        client_core: Some(client_core),
        admission: Admission::default(),
        apps: Vec::new(),
        boot: Bootstrap::new(boot, form_at),
        started: false,
        links: Links::default(),
        waiters: HashMap::new(),
        shutdown: None,
        began: Instant::now(),
        fatal: None,
        docs,
        proc_read: None,
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

/// The address this node tells others to reach it at.
pub(super) fn advertised(
    cfg: &Config,
    bound: SocketAddr,
    boot: &[SocketAddr],
) -> Option<SocketAddr> {
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
