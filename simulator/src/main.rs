//! `p2psip-sim`: runs the overlay core of p2psip under virtual time.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use p2psip_algorithms::core::CoreConfig;
use p2psip_algorithms::storage::KIND_SIP_REGISTRATION;
use p2psip_algorithms::{signed_value, AlgorithmParams, Event, Id, ValueModel, ALGORITHMS};
use p2psip_proto::pb;
use p2psip_proto::security::Identity;
use p2psip_proto::Body;
use p2psip_simulator::{NetConfig, Sim};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "p2psip-sim",
    version,
    about = "Runs p2psip overlays under virtual time, driving the same algorithm code as the node",
    long_about = "Runs p2psip overlays under virtual time. The simulated peers run the very same \
                  overlay core and algorithms as the p2psip daemon; only the network and the \
                  clock are modelled. Every run is reproducible from its seed."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A small local overlay doing real work: peers join, SIP users register through one
    /// peer and are looked up through others, a peer crashes, lookups still succeed.
    Demo {
        /// Number of peers.
        #[arg(long, default_value_t = 8)]
        nodes: usize,
        /// Number of SIP users registering.
        #[arg(long, default_value_t = 20)]
        users: usize,
        /// DHT algorithm.
        #[arg(long, default_value = "chord")]
        algorithm: String,
        /// Seed of every random choice in the run.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Demo {
            nodes,
            users,
            algorithm,
            seed,
        } => demo(nodes, users, &algorithm, seed),
    }
}

fn aor(i: usize) -> String {
    format!("sip:user{i}@example.com")
}

fn demo(nodes: usize, users: usize, algorithm: &str, seed: u64) -> anyhow::Result<()> {
    if nodes < 2 {
        bail!("--nodes must be at least 2 (got {nodes})");
    }
    let algo = AlgorithmParams::default_for(algorithm)
        .with_context(|| format!("--algorithm: choose one of {}", ALGORITHMS.join(", ")))?;
    let replicas = algo.replicas();
    let mut sim = Sim::new(seed, CoreConfig::default(), algo, NetConfig::default());
    println!("p2psip demo: {nodes} peers running {algorithm} (seed {seed}), virtual time");
    for i in 0..nodes {
        sim.add_node();
        let boot: Vec<_> = if i == 0 { vec![] } else { vec![sim.id(0)] };
        sim.start(i, &boot);
        sim.run_for(Duration::from_secs(1));
    }
    sim.run_for(Duration::from_secs(60));
    let ring = sim.live_ring();
    let (wrong, _) = sim.ring_errors(&ring);
    println!(
        "  {} of {nodes} peers joined; ring {} after {:.0?} of virtual time",
        ring.len(),
        if wrong == 0 {
            "consistent"
        } else {
            "still converging"
        },
        sim.elapsed()
    );

    // Registrations: user i registers through peer (i % nodes).
    let mut registered = 0;
    for u in 0..users {
        let name = aor(u);
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&(u as u64).to_be_bytes());
        let who = Identity::from_seed(key, name.clone());
        let res = Id::hash_of(name.as_bytes());
        let contact = format!("sip:user{u}@192.0.2.{}:5060", 10 + u % 200);
        let v = signed_value(
            &who,
            res,
            KIND_SIP_REGISTRATION,
            sim.now(),
            3600,
            ValueModel::Dictionary(who.node_id.to_bytes().to_vec(), contact.into_bytes()),
        );
        let via = u % nodes;
        match sim.op(via, |n, t| {
            n.store(t, res, KIND_SIP_REGISTRATION, vec![v], 0)
        }) {
            Some(Event::Completed { outcome: Ok(_), .. }) => registered += 1,
            Some(Event::Completed {
                outcome: Err(e), ..
            }) => println!("  register {name}: {e}"),
            _ => println!("  register {name}: no answer"),
        }
    }
    println!(
        "  {registered} of {users} SIP users registered (each stored with {replicas} replicas)"
    );

    let lookups = |sim: &mut Sim, label: &str| {
        let (mut found, mut hops, mut lat) = (0, 0u32, Duration::ZERO);
        for u in 0..users {
            // Look up through some peer other than the one the user registered with.
            let Some(via) = (0..nodes)
                .map(|k| (u * 7 + 3 + k) % nodes)
                .find(|v| sim.is_up(*v))
            else {
                continue;
            };
            let res = Id::hash_of(aor(u).as_bytes());
            if let Some(Event::Completed {
                outcome: Ok(Body::FetchAns(a)),
                hops: h,
                latency,
                ..
            }) = sim.op(via, |n, t| n.fetch_kind(t, res, KIND_SIP_REGISTRATION))
            {
                let contact = a
                    .kind_responses
                    .first()
                    .and_then(|k| k.values.first())
                    .and_then(|d| match d.value.as_ref()?.model.as_ref()? {
                        pb::stored_data_value::Model::Dictionary(e) => {
                            Some(String::from_utf8_lossy(&e.value.as_ref()?.value).into_owned())
                        }
                        _ => None,
                    });
                if let Some(c) = contact {
                    found += 1;
                    hops += h;
                    lat += latency;
                    if u < 3 {
                        println!(
                            "    {} -> {c} (via peer {via}, {h} hops, {latency:.1?})",
                            aor(u)
                        );
                    }
                }
            }
        }
        println!(
            "  {label}: {found} of {users} users found, mean {:.2} hops, mean latency {:.1?}",
            hops as f64 / found.max(1) as f64,
            lat / found.max(1) as u32
        );
        found
    };
    lookups(&mut sim, "lookups");

    let victim = nodes / 2;
    println!(
        "  crashing peer {victim} ({}) without warning",
        sim.id(victim)
    );
    sim.crash(victim);
    sim.run_for(Duration::from_secs(30));
    let found = lookups(&mut sim, "lookups after the crash");

    let mut total = p2psip_algorithms::Stats::default();
    for i in 0..nodes {
        if let Some(n) = sim.node(i) {
            let s = n.stats();
            total.messages_sent += s.messages_sent;
            total.bytes_sent += s.bytes_sent;
            total.forwarded += s.forwarded;
            total.replication_stores += s.replication_stores;
        }
    }
    println!(
        "  traffic: {} messages ({} bytes), {} forwarded, {} replication stores; {} events in {:.0?} virtual",
        total.messages_sent,
        total.bytes_sent,
        total.forwarded,
        total.replication_stores,
        sim.events_processed(),
        sim.elapsed()
    );
    if found < users {
        bail!(
            "{} registrations were not found after the crash",
            users - found
        );
    }
    println!("done: every registration survived the crash");
    Ok(())
}
