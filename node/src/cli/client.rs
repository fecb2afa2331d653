//! `p2psip client`: one operation (or a batch) through an admitting peer.

use super::{op, LogArgs};
use crate::identity;
use crate::ops::{build_value, kind_of, name_seed, parse_duration, values_json, values_of};
use crate::runtime::{self, Role};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use p2psip_algorithms::{Event, Id};
use p2psip_proto::security::Identity;
use p2psip_proto::Body;
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Args)]
pub(crate) struct ClientArgs {
    /// The admitting peer, host:port.
    #[arg(long, env = "P2PSIP_PEER")]
    pub(crate) peer: String,
    /// Overlay name (must match the peer's).
    #[arg(long, env = "P2PSIP_OVERLAY", default_value = "p2psip.example")]
    pub(crate) overlay: String,
    /// Identity key file of the writer; default: a key derived from the resource name, so
    /// the same name always signs with the same key.
    #[arg(long, env = "P2PSIP_IDENTITY")]
    pub(crate) identity: Option<PathBuf>,
    /// In an enrolled overlay: the overlay CA's certificate ...
    #[arg(long, env = "P2PSIP_CA", requires = "certificate")]
    pub(crate) ca: Option<PathBuf>,
    /// ... and the certificate the CA issued for --identity (values are then signed as the
    /// certificate's user).
    #[arg(
        long,
        env = "P2PSIP_CERTIFICATE",
        requires = "ca",
        requires = "identity"
    )]
    pub(crate) certificate: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    /// Give up after this long (e.g. 10s).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
    /// Send and accept messages without signatures: only for an overlay whose peers run
    /// with `security.sign_messages = false` (every member must agree; with signatures on,
    /// the peers refuse what this client sends).
    #[arg(long, env = "P2PSIP_UNSIGNED_MESSAGES")]
    pub(crate) unsigned_messages: bool,
    #[command(subcommand)]
    pub(crate) op: ClientOp,
    #[command(flatten)]
    pub(crate) log: LogArgs,
}

#[derive(Subcommand)]
pub(crate) enum ClientOp {
    /// Store VALUE under NAME (resource = hash(NAME); signed as user NAME).
    Store {
        name: String,
        value: String,
        /// Kind: user-value, sip-registration, user-array, node-value, or a number.
        #[arg(long, default_value = "user-value")]
        kind: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        lifetime: u32,
    },
    /// Fetch the values under NAME (exit status 4 when there are none).
    Fetch {
        name: String,
        #[arg(long, default_value = "user-value")]
        kind: String,
    },
    /// Metadata of the values under NAME.
    Stat {
        name: String,
        #[arg(long, default_value = "user-value")]
        kind: String,
    },
    /// The closest resource at or after hash(NAME) that holds the kind.
    Find {
        name: String,
        #[arg(long, default_value = "user-value")]
        kind: String,
    },
    /// Ping the peer responsible for hash(NAME) (default: a random id).
    Ping { name: Option<String> },
    /// Open an application connection to NODE's echo application (a node started with
    /// --echo) through AppAttach — direct, punched through NATs, or relayed — send
    /// MESSAGE on ROUNDS streams and check what comes back. Prints the path taken and the
    /// times; exit status 2 when it fails.
    AppEcho {
        /// The Node-ID (32 hex digits) of the node serving echo.
        node: String,
        #[arg(long, default_value = "hello through the overlay")]
        message: String,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Hand a signed overlay configuration document (`p2psip ca sign-config`) to the
    /// admitting peer, which checks it and, if newer than its own, spreads it to the
    /// overlay (ConfigUpdate). Peers log and count a document they refuse.
    ConfigPush {
        /// The signed document.
        file: PathBuf,
    },
    /// Store COUNT values, PREFIX0 .. PREFIX<COUNT-1>, each signed by its own name's key
    /// (a smoke test of a fleet). Exit status 5 unless every store succeeds.
    StoreMany {
        #[arg(long, default_value_t = 100)]
        count: usize,
        #[arg(long, default_value = "smoke-")]
        prefix: String,
    },
    /// Fetch the values StoreMany wrote and check each one. Exit status 5 unless every
    /// value is found intact.
    CheckMany {
        #[arg(long, default_value_t = 100)]
        count: usize,
        #[arg(long, default_value = "smoke-")]
        prefix: String,
    },
    /// Benchmark through the peer (bench/opendht): wait until stored values come back,
    /// then put COUNT values and get them one at a time (latency), then put and get with
    /// WINDOW requests in flight for DURATION (throughput). Prints one JSON object.
    Bench {
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Bytes per value (a SIP registration is about 200).
        #[arg(long, default_value_t = 200)]
        value_size: usize,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 64)]
        window: usize,
        /// Values stored and fetched per readiness round.
        #[arg(long, default_value_t = 20)]
        probes: usize,
        /// Give up waiting for the overlay to be ready after this.
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        ready_timeout: Duration,
        /// At the end, fetch the first 100 values again through this other peer (host:port).
        #[arg(long)]
        check_peer: Option<String>,
    },
    /// The provider of service NAME (turn, voicemail, conference, pstn-gateway, or any)
    /// registered in the overlay (ReDiR): the one whose Node-ID is the closest after
    /// --key (default: this client's own Node-ID, so that callers spread over the
    /// providers), with its address and seconds of lifetime left, then the others seen on
    /// the way. Exit status 4 when none is registered.
    Services {
        name: String,
        /// The key (32 hex digits) to find the closest provider after.
        #[arg(long)]
        key: Option<String>,
    },
    #[command(flatten)]
    Diag(super::diag::DiagOp),
}

/// StoreMany / CheckMany: one client connection, `count` operations one after another.
pub(crate) async fn many(
    a: &ClientArgs,
    peer: std::net::SocketAddr,
    count: usize,
    prefix: &str,
    store: bool,
) -> anyhow::Result<i32> {
    let cfg = super::client_config(a, &format!("{prefix}client"));
    let h = runtime::spawn(
        cfg,
        Role::Client { admitting: peer },
        identity::generate_seed(),
    )
    .await?;
    if let Err(e) = h.wait_joined(a.timeout).await {
        bail!("could not reach peer {peer}: {e}");
    }
    let started = Instant::now();
    let k = p2psip_algorithms::storage::KIND_USER_VALUE;
    let (mut ok, mut missing, mut wrong, mut failed) = (0usize, 0usize, 0usize, Vec::new());
    for i in 0..count {
        let name = format!("{prefix}{i}");
        let want = format!("value-of-{name}");
        let res = Id::hash_of(name.as_bytes());
        let outcome = if store {
            let writer = Identity::from_seed(name_seed(&name), name.clone());
            let (res, v) = build_value(&writer, &name, k, want.as_bytes(), runtime::now(), 3600);
            h.client()
                .run(a.timeout, move |n, t| n.store(t, res, k, vec![v], 0))
                .await
        } else {
            h.client()
                .run(a.timeout, move |n, t| n.fetch_kind(t, res, k))
                .await
        };
        match outcome {
            Ok(Body::FetchAns(f)) => {
                let values = values_of(&f);
                if values.is_empty() {
                    missing += 1;
                    failed.push(name);
                } else if values.iter().any(|v| v == want.as_bytes()) {
                    ok += 1;
                } else {
                    wrong += 1;
                    failed.push(name);
                }
            }
            Ok(_) => ok += 1,
            Err(e) => failed.push(format!("{name} ({e})")),
        }
    }
    h.shutdown().await;
    let secs = started.elapsed().as_secs_f64();
    let what = if store { "stored" } else { "found intact" };
    if a.json {
        println!(
            "{}",
            json!({"ok": ok, "count": count, "missing": missing, "wrong": wrong, "failed": failed, "seconds": secs})
        );
    } else {
        println!("{what} {ok}/{count} in {secs:.2} s ({missing} missing, {wrong} wrong)");
        for f in failed.iter().take(10) {
            println!("  not ok: {f}");
        }
    }
    Ok(if ok == count { 0 } else { 5 })
}

/// Runs one client operation; returns the process exit status.
pub(crate) async fn run(a: ClientArgs) -> anyhow::Result<i32> {
    // Check the arguments before any network work.
    if let ClientOp::Store { kind, .. }
    | ClientOp::Fetch { kind, .. }
    | ClientOp::Stat { kind, .. }
    | ClientOp::Find { kind, .. } = &a.op
    {
        kind_of(kind)?;
    }
    let peer = runtime::resolve(&a.peer).await?;
    if let ClientOp::Bench {
        count,
        value_size,
        duration,
        window,
        probes,
        ready_timeout,
        check_peer,
    } = &a.op
    {
        let check_peer = match check_peer {
            Some(p) => Some(runtime::resolve(p).await?),
            None => None,
        };
        let cfg = super::client_config(&a, "bench");
        let spec = crate::bench::BenchSpec {
            count: *count,
            value_size: *value_size,
            duration: *duration,
            window: *window,
            probes: *probes,
            ready_timeout: *ready_timeout,
            op_timeout: a.timeout,
            check_peer,
        };
        let out = crate::bench::run(cfg, peer, spec).await?;
        println!("{out}");
        return Ok(0);
    }
    if let ClientOp::AppEcho {
        node,
        message,
        rounds,
    } = &a.op
    {
        return app_echo(&a, peer, node, message, *rounds).await;
    }
    if let ClientOp::Diag(d) = &a.op {
        return super::diag::run(&a, peer, d).await;
    }
    if let ClientOp::Services { name, key } = &a.op {
        return super::services::run(&a, peer, name, key.as_deref()).await;
    }
    if let ClientOp::StoreMany { count, prefix } | ClientOp::CheckMany { count, prefix } = &a.op {
        return many(
            &a,
            peer,
            *count,
            prefix,
            matches!(a.op, ClientOp::StoreMany { .. }),
        )
        .await;
    }
    let name = match &a.op {
        ClientOp::Store { name, .. }
        | ClientOp::Fetch { name, .. }
        | ClientOp::Stat { name, .. }
        | ClientOp::Find { name, .. } => name.clone(),
        ClientOp::Ping { name } => name.clone().unwrap_or_default(),
        ClientOp::StoreMany { .. }
        | ClientOp::CheckMany { .. }
        | ClientOp::Bench { .. }
        | ClientOp::ConfigPush { .. }
        | ClientOp::Diag(_)
        | ClientOp::Services { .. }
        | ClientOp::AppEcho { .. } => String::new(),
    };
    let seed = match &a.identity {
        Some(p) => identity::read_seed(p)?,
        None => name_seed(&name),
    };
    let cfg = super::identity_client_config(&a, &name);
    let writer = identity::credentials(&cfg, seed)?.identity;
    let started = Instant::now();
    let h = runtime::spawn(cfg, Role::Client { admitting: peer }, seed).await?;
    if let Err(e) = h.wait_joined(a.timeout).await {
        bail!("could not reach peer {peer}: {e}");
    }
    let (event, what) = match a.op {
        ClientOp::Store {
            kind,
            value,
            lifetime,
            ..
        } => {
            let k = kind_of(&kind)?;
            let (res, v) = build_value(
                &writer,
                &name,
                k,
                value.as_bytes(),
                runtime::now(),
                lifetime,
            );
            (
                op(&h, a.timeout, move |n, t| n.store(t, res, k, vec![v], 0)).await?,
                "store",
            )
        }
        ClientOp::Fetch { kind, .. } => {
            let k = kind_of(&kind)?;
            let res = Id::hash_of(name.as_bytes());
            (
                op(&h, a.timeout, move |n, t| n.fetch_kind(t, res, k)).await?,
                "fetch",
            )
        }
        ClientOp::Stat { kind, .. } => {
            let k = kind_of(&kind)?;
            let res = Id::hash_of(name.as_bytes());
            (
                op(&h, a.timeout, move |n, t| n.stat(t, res, k)).await?,
                "stat",
            )
        }
        ClientOp::Find { kind, .. } => {
            let k = kind_of(&kind)?;
            let res = Id::hash_of(name.as_bytes());
            (
                op(&h, a.timeout, move |n, t| n.find(t, res, vec![k])).await?,
                "find",
            )
        }
        ClientOp::StoreMany { .. }
        | ClientOp::CheckMany { .. }
        | ClientOp::Bench { .. }
        | ClientOp::Diag(_)
        | ClientOp::Services { .. }
        | ClientOp::AppEcho { .. } => bail!("handled above"),
        ClientOp::ConfigPush { file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let sequence = crate::overlay_config::sequence_of(&bytes)
                .with_context(|| format!("{}", file.display()))?;
            let to = h.admitting_peer().await?;
            let update = crate::overlay_config::update_req(sequence, bytes);
            (
                op(&h, a.timeout, move |n, t| n.config_update(t, to, update)).await?,
                "config-push",
            )
        }
        ClientOp::Ping { name } => {
            let target = match name {
                Some(n) => Id::hash_of(n.as_bytes()),
                None => Id(rand::random()),
            };
            (
                op(&h, a.timeout, move |n, t| n.lookup(t, target)).await?,
                "ping",
            )
        }
    };
    h.shutdown().await;
    let Event::Completed {
        outcome,
        hops,
        latency,
        ..
    } = event
    else {
        bail!("unexpected answer");
    };
    let body = match outcome {
        Ok(b) => b,
        Err(e) => {
            if a.json {
                println!(
                    "{}",
                    json!({"ok": false, "error": e.code.as_str_name(), "info": e.info})
                );
            } else {
                eprintln!("{what} failed: {e}");
            }
            return Ok(2);
        }
    };
    let ms = latency.as_secs_f64() * 1000.0;
    let total_ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut code = 0;
    match body {
        Body::StoreAns(s) => {
            let k = s.kind_responses.first();
            let generation = k.map_or(0, |k| k.generation_counter);
            let replicas = k.map_or(0, |k| k.replicas.len());
            if a.json {
                println!(
                    "{}",
                    json!({"ok": true, "generation": generation, "replicas": replicas, "hops": hops, "ms": ms})
                );
            } else {
                println!("stored {name} (generation {generation}, {replicas} replicas, {hops} hops, {ms:.1} ms; {total_ms:.0} ms with connection set-up)");
            }
        }
        Body::FetchAns(f) => {
            let values = values_of(&f);
            if values.is_empty() {
                code = 4;
            }
            if a.json {
                println!(
                    "{}",
                    json!({"ok": true, "values": values_json(&values), "hops": hops, "ms": ms})
                );
            } else if values.is_empty() {
                println!("no value under {name}");
            } else {
                for v in &values {
                    println!("{}", String::from_utf8_lossy(v));
                }
            }
        }
        Body::StatAns(s) => {
            let metas: Vec<_> = s
                .kind_responses
                .iter()
                .flat_map(|k| k.values.iter())
                .map(|m| json!({"length": m.value_length, "sha256": hex::encode(&m.hash), "storage_time_ms": m.storage_time, "lifetime_s": m.lifetime}))
                .collect();
            if metas.is_empty() {
                code = 4;
            }
            if a.json {
                println!("{}", json!({"ok": true, "values": metas}));
            } else {
                for m in metas {
                    println!("{m}");
                }
            }
        }
        Body::FindAns(f) => {
            let closest = f
                .results
                .first()
                .and_then(|r| Id::from_slice(&r.closest))
                .map(|i| format!("{i:#}"));
            if a.json {
                println!("{}", json!({"ok": true, "closest": closest}));
            } else {
                println!("{}", closest.unwrap_or_else(|| "none".into()));
            }
        }
        Body::ConfigUpdateAns(_) => {
            if a.json {
                println!("{}", json!({"ok": true}));
            } else {
                println!("configuration document handed to the admitting peer (its log and p2psip_overlay_config_sequence tell whether it took it)");
            }
        }
        Body::PingAns(_) => {
            if a.json {
                println!("{}", json!({"ok": true, "hops": hops, "ms": ms}));
            } else {
                println!("pong ({hops} hops, {ms:.1} ms)");
            }
        }
        other => println!("{other:?}"),
    }
    Ok(code)
}

/// `p2psip client app-echo`: an application connection to a node's echo service.
pub(crate) async fn app_echo(
    a: &ClientArgs,
    peer: SocketAddr,
    node: &str,
    message: &str,
    rounds: usize,
) -> anyhow::Result<i32> {
    let to = crate::ops::parse_node_id(node)?;
    let h = super::joined_client(a, peer, "echo").await?;
    // Our reflexive address goes in the AppAttach, so that a NATed callee punches towards
    // it: wait (briefly) for the admitting peer to report it.
    let until = Instant::now() + Duration::from_secs(2);
    while h.status().await?.reflexive.is_none() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let res = tokio::time::timeout(
        a.timeout,
        crate::echo::call(&h.client(), to, message.as_bytes(), rounds),
    )
    .await
    .map_err(|_| format!("no echo within {:?}", a.timeout))
    .and_then(|r| r.map_err(|e| e.to_string()));
    let st = h.status().await.ok();
    h.shutdown().await;
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    match res {
        Ok(r) => {
            let rtts: Vec<f64> = r.rounds.iter().map(|d| ms(*d)).collect();
            if a.json {
                println!(
                    "{}",
                    json!({"ok": true, "path": r.path.as_str(), "connect_ms": ms(r.connect),
                           "rtt_ms": rtts, "reflexive": st.as_ref().and_then(|s| s.reflexive).map(|x| x.to_string()),
                           "behind_nat": st.as_ref().and_then(|s| s.behind_nat)})
                );
            } else {
                println!(
                    "echo from {to} ({} path): connection {:.1} ms, round trips {rtts:?} ms",
                    r.path.as_str(),
                    ms(r.connect)
                );
            }
            Ok(0)
        }
        Err(e) => {
            if a.json {
                println!("{}", json!({"ok": false, "error": e}));
            } else {
                eprintln!("app-echo failed: {e}");
            }
            Ok(2)
        }
    }
}
