//! The scenario runner at small scale: reproducible reports, lookups without churn, no data
//! loss under moderate churn, and the report files.
#![allow(clippy::unwrap_used)]

use p2psip_simulator::{Runner, Scenario};

fn small(nodes: usize, minutes: u32, churn: &str) -> Scenario {
    let mut s: Scenario = toml::from_str(&format!(
        "name = \"t\"\nnodes = {nodes}\nduration = \"{minutes}m\"\nseed = 5\n\
         [churn]\nmodel = \"{churn}\"\nmedian_session = \"30m\"\ncrash_fraction = 0.5\n\
         [workload]\nlookups_per_node_per_hour = 30\nusers = 150\nrefresh = \"5m\"\ncalls_per_hour = 900\n"
    ))
    .unwrap();
    s.sample_interval = "30s".into();
    s
}

#[test]
fn same_seed_same_report() {
    let a = Runner::new(&small(200, 5, "exponential"))
        .unwrap()
        .run(&mut |_, _| {});
    let b = Runner::new(&small(200, 5, "exponential"))
        .unwrap()
        .run(&mut |_, _| {});
    assert!(a.lookups > 100);
    assert_eq!(
        (
            a.lookups,
            a.lookups_ok,
            a.lookups_correct,
            a.events_processed,
            a.crashes,
            a.arrivals
        ),
        (
            b.lookups,
            b.lookups_ok,
            b.lookups_correct,
            b.events_processed,
            b.crashes,
            b.arrivals
        )
    );
    assert_eq!(a.hop_histogram, b.hop_histogram);
    assert_eq!(a.lookup_latency_ms.p99, b.lookup_latency_ms.p99);
    let mut other = small(200, 5, "exponential");
    other.seed = 6;
    let c = Runner::new(&other).unwrap().run(&mut |_, _| {});
    assert_ne!(a.events_processed, c.events_processed);
}

#[test]
fn without_churn_every_lookup_succeeds_in_few_hops() {
    let r = Runner::new(&small(2000, 10, "none"))
        .unwrap()
        .run(&mut |_, _| {});
    assert!(r.lookups > 5000, "{}", r.lookups);
    assert_eq!(r.lookups_ok, r.lookups, "{}", r.summary());
    assert_eq!(r.lookups_correct, r.lookups, "{}", r.summary());
    let log2n = (2000f64).log2();
    assert!(
        r.mean_hops < 0.6 * log2n,
        "mean hops {} vs log2 N {log2n}",
        r.mean_hops
    );
    assert!(
        r.hop_histogram.len() as f64 <= log2n + 2.0,
        "{:?}",
        r.hop_histogram
    );
    assert_eq!(r.calls.connected, r.calls.attempted, "{}", r.summary());
}

#[test]
fn moderate_churn_loses_no_data() {
    // 500 peers, median session 30 min (about 20% of them leave or crash in 10 min, half
    // of those crashes), each replaced by a newcomer.
    let r = Runner::new(&small(500, 10, "exponential"))
        .unwrap()
        .run(&mut |_, _| {});
    assert!(r.crashes + r.leaves > 50, "{}", r.summary());
    assert!(r.data_checked >= 140, "{}", r.summary());
    assert_eq!(r.data_lost, 0, "lost: {:?}", r.lost_examples);
    assert_eq!(r.data_not_found, 0, "not found: {:?}", r.lost_examples);
    assert!(r.lookup_success_rate > 0.99, "{}", r.summary());
}

#[test]
fn report_files_are_written_and_well_formed() {
    let r = Runner::new(&small(100, 3, "exponential"))
        .unwrap()
        .run(&mut |_, _| {});
    let dir = std::env::temp_dir().join(format!("p2psip-sim-report-{}", std::process::id()));
    r.write(&dir).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    for key in [
        "lookup_success_rate",
        "lookup_latency_ms",
        "hop_histogram",
        "maintenance_bytes_per_node_s",
        "stored_data_loss_rate",
        "events_processed",
        "wall_time_s",
        "peak_memory_bytes",
    ] {
        assert!(json.get(key).is_some(), "report.json lacks {key}");
    }
    let csv = std::fs::read_to_string(dir.join("timeseries.csv")).unwrap();
    let mut lines = csv.lines();
    let cols = lines.next().unwrap().split(',').count();
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 6, "3 minutes at 30 s");
    assert!(rows.iter().all(|l| l.split(',').count() == cols));
    for svg in [
        "latency_cdf.svg",
        "hops.svg",
        "success.svg",
        "maintenance.svg",
    ] {
        let text = std::fs::read_to_string(dir.join(svg)).unwrap();
        assert!(
            text.starts_with("<svg") && text.trim_end().ends_with("</svg>"),
            "{svg}"
        );
        assert!(
            text.contains("<polyline") || text.contains("<rect"),
            "{svg} draws nothing"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Peers that drop what they should forward: lookups fail through them, and the core's
/// retransmissions through other first hops win a good part back (docs/security.md).
#[test]
fn retransmissions_through_other_first_hops_route_around_dropping_peers() {
    let run = |droppers: f64, mitigation: bool| {
        let mut s = small(400, 10, "none");
        s.workload.users = 0;
        s.workload.calls_per_hour = 0.0;
        s.adversary.droppers = droppers;
        s.core.retry_other_first_hop = mitigation;
        Runner::new(&s).unwrap().run(&mut |_, _| {})
    };
    let honest = run(0.0, true);
    let plain = run(0.2, false);
    let mitigated = run(0.2, true);
    assert_eq!(plain.adversaries, 80);
    assert!(honest.lookup_success_rate > 0.999, "{}", honest.summary());
    assert!(plain.dropped_by_adversaries > 0);
    assert!(
        plain.lookup_success_rate < 0.9,
        "droppers hurt: {}",
        plain.summary()
    );
    assert!(
        mitigated.lookup_success_rate > plain.lookup_success_rate + 0.1,
        "mitigated {:.3} vs plain {:.3}",
        mitigated.lookup_success_rate,
        plain.lookup_success_rate
    );
}

/// 10% of 400 Chord peers forge within their own keys (answers in other nodes' names,
/// Leaves and Updates in their neighbours' names, Updates listing made-up successors):
/// the forgeries reach their targets and are refused, and lookups still reach the right
/// peer (docs/security.md, "forgers").
#[test]
fn forgers_are_refused_and_lookups_still_reach_the_right_peer() {
    let mut s = small(400, 10, "none");
    s.workload.users = 0;
    s.workload.calls_per_hour = 0.0;
    s.adversary.forgers = 0.1;
    let r = Runner::new(&s).unwrap().run(&mut |_, _| {});
    eprintln!(
        "{}; {} forgeries, {} requests refused, {} answers dropped",
        r.summary(),
        r.forgeries,
        r.core_counters.bad_signatures,
        r.core_counters.forged_answers
    );
    assert_eq!(r.forgers, 40);
    assert!(r.forgeries > 1000, "{} forgeries", r.forgeries);
    assert!(r.core_counters.forged_answers > 0, "{:?}", r.core_counters);
    assert!(r.core_counters.bad_signatures > 0, "{:?}", r.core_counters);
    assert!(
        r.lookup_correct_rate >= 0.99,
        "answered by the right peer: {}",
        r.summary()
    );
}
