//! `p2psip-sim`: runs the overlay core of p2psip under virtual time.

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use p2psip_algorithms::core::CoreConfig;
use p2psip_algorithms::storage::KIND_SIP_REGISTRATION;
use p2psip_algorithms::time::parse_duration;
use p2psip_algorithms::{signed_value, AlgorithmParams, Event, Id, ValueModel, ALGORITHMS};
use p2psip_proto::pb;
use p2psip_proto::security::Identity;
use p2psip_proto::Body;
use p2psip_simulator::report::{plot_cdf, Report};
use p2psip_simulator::{NetConfig, Runner, Scenario, Sim};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "p2psip-sim",
    version,
    args_conflicts_with_subcommands = true,
    about = "Runs p2psip overlays under virtual time, driving the same algorithm code as the node",
    long_about = "Runs p2psip overlays under virtual time. The simulated peers run the very same \
                  overlay core and algorithms as the p2psip daemon; only the network and the \
                  clock are modelled. Every run is reproducible from its seed.\n\n\
                  Without a subcommand it runs one scenario (a TOML file from \
                  simulator/scenarios/, and/or flags) and writes report.json, timeseries.csv \
                  and SVG plots into --out."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args, Clone, Default)]
struct RunArgs {
    /// Scenario file (TOML); flags override its fields.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// DHT algorithm.
    #[arg(long)]
    algorithm: Option<String>,
    /// Peers.
    #[arg(long)]
    nodes: Option<usize>,
    /// Simulated time, e.g. 1h.
    #[arg(long)]
    duration: Option<String>,
    /// Median session time; turns on exponential churn unless --churn-model says otherwise.
    #[arg(long)]
    churn_median: Option<String>,
    /// Churn model: none, exponential, pareto, weibull.
    #[arg(long)]
    churn_model: Option<String>,
    /// Latency model: king, uniform, constant.
    #[arg(long)]
    latency: Option<String>,
    /// Seed of every random choice.
    #[arg(long)]
    seed: Option<u64>,
    /// Output directory (created).
    #[arg(long, default_value = "out/sim")]
    out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
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
    /// Runs the same scenario with each algorithm and writes one table (compare.md) and
    /// overlaid plots.
    Compare {
        /// Algorithms, comma-separated (default: every known one).
        #[arg(long, value_delimiter = ',')]
        algorithms: Vec<String>,
        /// Also run each algorithm with the latency options off (direct responses, Chord's
        /// proximity selection, Kademlia's checks of silent entries): rows and curves
        /// "ALGO (options off)".
        #[arg(long)]
        options_off: bool,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Runs the scenario with a fraction of peers that drop what they should forward,
    /// with and without the core's mitigation (retransmissions through other first hops),
    /// and writes one table (adversary.md) and the latency CDFs (docs/security.md).
    Adversary {
        /// Fractions of dropping peers, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "0,0.1,0.2")]
        fractions: Vec<f64>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Puts a share of the nodes behind modelled NAT routers (the scenario's [nat] table:
    /// cone and symmetric), lets the core's reachability decisions run (which nodes route,
    /// which become clients, the candidates they give) and opens application connections
    /// between random nodes: direct, punched or relayed. Writes nat.md and nat.json
    /// (docs/nat.md).
    Nat {
        #[command(flatten)]
        run: RunArgs,
    },
    /// Runs the scenario with a fraction of peers that forge within what their own keys
    /// allow (answers in others' names, Leaves and Updates in their neighbours' names,
    /// Updates listing made-up successors) and writes one table (forgers.md,
    /// docs/security.md).
    Forgers {
        /// Fractions of forging peers, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "0,0.1,0.2")]
        fractions: Vec<f64>,
        #[command(flatten)]
        run: RunArgs,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Some(Cmd::Demo {
            nodes,
            users,
            algorithm,
            seed,
        }) => demo(nodes, users, &algorithm, seed),
        Some(Cmd::Compare {
            algorithms,
            options_off,
            run,
        }) => compare(&algorithms, options_off, &run),
        Some(Cmd::Adversary { fractions, run }) => adversary(&fractions, &run),
        Some(Cmd::Forgers { fractions, run }) => forgers(&fractions, &run),
        Some(Cmd::Nat { run }) => nat(&run),
        None => {
            let sc = scenario(&cli.run)?;
            let report = run_one(&sc, cli.run.quiet)?;
            report.write(&cli.run.out).map_err(anyhow::Error::msg)?;
            println!("{}", report.summary());
            println!(
                "wrote {}/{{report.json,timeseries.csv,*.svg}}",
                cli.run.out.display()
            );
            Ok(())
        }
    }
}

/// The scenario from the file and flags.
fn scenario(a: &RunArgs) -> anyhow::Result<Scenario> {
    let mut sc = match &a.scenario {
        Some(p) => Scenario::load(p).map_err(anyhow::Error::msg)?,
        None => Scenario::default(),
    };
    if let Some(v) = &a.algorithm {
        sc.algorithm = v.clone();
    }
    if let Some(v) = a.nodes {
        sc.nodes = v;
    }
    if let Some(v) = &a.duration {
        sc.duration = v.clone();
    }
    if let Some(v) = &a.churn_median {
        sc.churn.median_session = v.clone();
        if sc.churn.model == "none" {
            sc.churn.model = "exponential".into();
        }
    }
    if let Some(v) = &a.churn_model {
        sc.churn.model = v.clone();
    }
    if let Some(v) = &a.latency {
        sc.network.latency = v.clone();
    }
    if let Some(v) = a.seed {
        sc.seed = v;
    }
    if a.scenario.is_none() {
        sc.name = format!("{}-{}", sc.algorithm, sc.nodes);
    }
    sc.resolve().map_err(anyhow::Error::msg)?;
    Ok(sc)
}

fn run_one(sc: &Scenario, quiet: bool) -> anyhow::Result<Report> {
    let runner = Runner::new(sc).map_err(anyhow::Error::msg)?;
    let total = parse_duration(&sc.duration)
        .map_err(anyhow::Error::msg)?
        .as_secs();
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} simulated s ({eta} left) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{} peers, {}", sc.nodes, sc.algorithm));
    // Without a terminal (CI logs, nohup) the bar is not drawn: a line every 10% instead.
    let lines = !quiet && !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let started = std::time::Instant::now();
    let mut next_line = 0.1;
    let mut progress = |done: f64, all: f64| {
        bar.set_position(done as u64);
        if lines && all > 0.0 && done / all >= next_line {
            eprintln!(
                "{} {} peers: {:.0}% of {} simulated s after {:.0} s",
                sc.algorithm,
                sc.nodes,
                100.0 * done / all,
                total,
                started.elapsed().as_secs_f64()
            );
            next_line += 0.1;
        }
    };
    let report = runner.run(&mut progress);
    bar.finish_and_clear();
    Ok(report)
}

fn nat(run: &RunArgs) -> anyhow::Result<()> {
    let sc = scenario(run)?;
    if sc.nat.behind <= 0.0 || sc.nat.connections == 0 {
        bail!("the scenario needs a [nat] table with behind > 0 and connections > 0 (see simulator/scenarios/nat-2k.toml)");
    }
    let started = std::time::Instant::now();
    let r = p2psip_simulator::nat::run(&sc).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&run.out).with_context(|| format!("creating {}", run.out.display()))?;
    let md = format!(
        "Scenario {} ({} nodes, {:.0}% behind NATs, {:.0}% of those symmetric, seed {}), {:.1} s:\n\n{}\n\n{}",
        sc.name,
        sc.nodes,
        sc.nat.behind * 100.0,
        sc.nat.symmetric * 100.0,
        sc.seed,
        started.elapsed().as_secs_f64(),
        r.summary(),
        r.table()
    );
    std::fs::write(run.out.join("nat.md"), &md)?;
    std::fs::write(run.out.join("nat.json"), serde_json::to_string_pretty(&r)?)?;
    println!("{md}");
    println!("wrote {}/{{nat.md,nat.json}}", run.out.display());
    Ok(())
}

fn adversary(fractions: &[f64], run: &RunArgs) -> anyhow::Result<()> {
    let base = scenario(run)?;
    let mut rows = Vec::new();
    for &f in fractions {
        for mitigation in [false, true] {
            let mut sc = base.clone();
            sc.adversary.droppers = f;
            sc.core.retry_other_first_hop = mitigation;
            let tag = format!(
                "{:.0}pct-{}",
                f * 100.0,
                if mitigation {
                    "retry-other-hop"
                } else {
                    "plain"
                }
            );
            sc.name = format!("{}-{}-{tag}", sc.algorithm, sc.nodes);
            sc.resolve().map_err(anyhow::Error::msg)?;
            let r = run_one(&sc, run.quiet)?;
            r.write(&run.out.join(&tag)).map_err(anyhow::Error::msg)?;
            println!("{tag}: {}", r.summary());
            rows.push((f, mitigation, tag, r));
        }
    }
    let mut md = String::from(
        "| dropping peers | retransmissions | lookup success | correct | median latency (ms) | p99 latency (ms) | mean hops | retransmissions | messages dropped |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (f, mitigation, _, r) in &rows {
        md.push_str(&format!(
            "| {:.0}% ({}) | {} | {:.2}% | {:.2}% | {:.0} | {:.0} | {:.2} | {} | {} |\n",
            f * 100.0,
            r.adversaries,
            if *mitigation {
                "through other first hops"
            } else {
                "same route"
            },
            100.0 * r.lookup_success_rate,
            100.0 * r.lookup_correct_rate,
            r.lookup_latency_ms.p50,
            r.lookup_latency_ms.p99,
            r.mean_hops,
            r.core_counters.retransmissions,
            r.dropped_by_adversaries,
        ));
    }
    std::fs::create_dir_all(&run.out)?;
    std::fs::write(run.out.join("adversary.md"), &md)?;
    let series: Vec<(&str, &[f64])> = rows
        .iter()
        .map(|(_, _, tag, r)| (tag.as_str(), r.latencies()))
        .collect();
    plot_cdf(&run.out.join("latency_cdf.svg"), &series).map_err(anyhow::Error::msg)?;
    print!("{md}");
    println!("wrote {}", run.out.join("adversary.md").display());
    Ok(())
}

fn forgers(fractions: &[f64], run: &RunArgs) -> anyhow::Result<()> {
    let base = scenario(run)?;
    let mut md = String::from(
        "| forging peers | lookup success | answered by the right peer | median latency (ms) | p99 latency (ms) | forgeries sent | requests refused (bad signature) | answers dropped (forged) |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for &f in fractions {
        let mut sc = base.clone();
        sc.adversary.droppers = 0.0;
        sc.adversary.forgers = f;
        let tag = format!("{:.0}pct-forgers", f * 100.0);
        sc.name = format!("{}-{}-{tag}", sc.algorithm, sc.nodes);
        sc.resolve().map_err(anyhow::Error::msg)?;
        let r = run_one(&sc, run.quiet)?;
        r.write(&run.out.join(&tag)).map_err(anyhow::Error::msg)?;
        println!("{tag}: {}", r.summary());
        md.push_str(&format!(
            "| {:.0}% ({}) | {:.2}% | {:.2}% | {:.0} | {:.0} | {} | {} | {} |\n",
            f * 100.0,
            r.forgers,
            100.0 * r.lookup_success_rate,
            100.0 * r.lookup_correct_rate,
            r.lookup_latency_ms.p50,
            r.lookup_latency_ms.p99,
            r.forgeries,
            r.core_counters.bad_signatures,
            r.core_counters.forged_answers,
        ));
    }
    std::fs::create_dir_all(&run.out)?;
    std::fs::write(run.out.join("forgers.md"), &md)?;
    print!("{md}");
    println!("wrote {}", run.out.join("forgers.md").display());
    Ok(())
}

fn compare(algorithms: &[String], options_off: bool, run: &RunArgs) -> anyhow::Result<()> {
    let base = scenario(run)?;
    let algos: Vec<String> = if algorithms.is_empty() {
        ALGORITHMS.iter().map(|s| s.to_string()).collect()
    } else {
        algorithms.to_vec()
    };
    let mut reports = Vec::new();
    for a in &algos {
        for off in [false, true] {
            if off && !options_off {
                continue;
            }
            let mut sc = base.clone();
            sc.algorithm = a.clone();
            sc.name = format!("{a}-{}", sc.nodes);
            let (label, dir) = if off {
                sc.core.direct_response = false;
                sc.chord.proximity = false;
                sc.kademlia.check_after = String::new();
                sc.kademlia.proximity = false;
                (format!("{a} (options off)"), format!("{a}-options-off"))
            } else {
                (a.clone(), a.clone())
            };
            // The previous algorithm's overlay is gone; measure this one's own peak.
            p2psip_simulator::report::reset_peak_memory();
            let r = run_one(&sc, run.quiet)?;
            r.write(&run.out.join(&dir)).map_err(anyhow::Error::msg)?;
            println!("{label}: {}", r.summary());
            reports.push((label, r));
        }
    }
    let mut md = String::from(
        "| algorithm | peers | lookup success | correct | median latency (ms) | p99 latency (ms) | stretch p50 | stretch p99 | mean hops | maintenance (B/node/s) | memory per node (B) | data loss |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (a, r) in &reports {
        md.push_str(&format!(
            "| {a} | {} | {:.2}% | {:.2}% | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} | {}/{} |\n",
            r.scenario.nodes,
            100.0 * r.lookup_success_rate,
            100.0 * r.lookup_correct_rate,
            r.lookup_latency_ms.p50,
            r.lookup_latency_ms.p99,
            r.lookup_stretch.p50,
            r.lookup_stretch.p99,
            r.mean_hops,
            r.maintenance_bytes_per_node_s,
            r.memory_bytes_per_node,
            r.data_lost,
            r.data_checked
        ));
    }
    std::fs::create_dir_all(&run.out)?;
    std::fs::write(run.out.join("compare.md"), &md)?;
    let series: Vec<(&str, &[f64])> = reports
        .iter()
        .map(|(a, r)| (a.as_str(), r.latencies()))
        .collect();
    plot_cdf(&run.out.join("latency_cdf.svg"), &series).map_err(anyhow::Error::msg)?;
    p2psip_simulator::report::plot_cdf_log(
        &run.out.join("latency_cdf_log.svg"),
        "lookup latency CDF (log scale)",
        "latency (ms)",
        &series,
    )
    .map_err(anyhow::Error::msg)?;
    let stretch: Vec<(&str, &[f64])> = reports
        .iter()
        .map(|(a, r)| (a.as_str(), r.stretches()))
        .collect();
    p2psip_simulator::report::plot_cdf_log(
        &run.out.join("stretch_cdf.svg"),
        "stretch: lookup latency / direct RTT to the responder (log scale)",
        "stretch",
        &stretch,
    )
    .map_err(anyhow::Error::msg)?;
    print!("{md}");
    println!("wrote {}", run.out.join("compare.md").display());
    Ok(())
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
