//! What a run measured: `report.json`, a CSV time series, and SVG plots.

use crate::harness::Sim;
use crate::scenario::Scenario;
use plotters::prelude::*;
use serde::Serialize;
use std::path::Path;
use std::time::Duration;

/// One time-series row.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub live_peers: usize,
    /// Lookups issued in the interval.
    pub lookups: u64,
    /// Lookups that finished in the interval, and how many of those succeeded.
    pub completed: u64,
    pub ok: u64,
    pub correct: u64,
    #[serde(skip)]
    pub latencies_ms: Vec<f64>,
    pub median_latency_ms: f64,
    pub maintenance_bytes_per_node_s: f64,
    pub data_bytes_per_node_s: f64,
    pub events: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Calls {
    pub attempted: u64,
    /// The callee's registration was fetched.
    pub found: u64,
    /// ... and a direct connection (Attach) to the node it names was set up.
    pub connected: u64,
    #[serde(skip)]
    pub setup_ms: Vec<f64>,
    pub setup_median_ms: f64,
    pub setup_p99_ms: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub lookups: u64,
    pub lookups_ok: u64,
    /// Answered by the peer truly responsible at the time of the answer.
    pub lookups_correct: u64,
    pub lookup_success_rate: f64,
    pub lookup_correct_rate: f64,
    pub lookup_latency_ms: Percentiles,
    /// Stretch: each answered lookup's latency over the round trip between the originator
    /// and the peer that answered (the network model's direct RTT).
    pub lookup_stretch: Percentiles,
    pub mean_hops: f64,
    /// Lookups by hop count (index = hops).
    pub hop_histogram: Vec<u64>,
    pub maintenance_bytes_per_node_s: f64,
    pub data_bytes_per_node_s: f64,
    pub registrations: u64,
    pub registrations_ok: u64,
    pub data_checked: u64,
    /// Registrations no live peer holds any more.
    pub data_lost: u64,
    /// Registrations still held somewhere but not found by the check's fetch.
    pub data_not_found: u64,
    pub stored_data_loss_rate: f64,
    pub lost_examples: Vec<String>,
    pub calls: Calls,
    pub arrivals: u64,
    pub crashes: u64,
    pub leaves: u64,
    pub final_peers: usize,
    /// Peers that drop what they should forward, and the messages they dropped.
    pub adversaries: usize,
    pub dropped_by_adversaries: u64,
    /// Peers that forge (docs/security.md), and the messages they made up.
    pub forgers: usize,
    pub forgeries: u64,
    /// The overlay core's counters summed over the peers alive at the end.
    pub core_counters: CoreCounters,
    pub events_processed: u64,
    pub wall_time_s: f64,
    pub events_per_second: f64,
    pub peak_memory_bytes: u64,
    pub memory_bytes_per_node: f64,
    pub samples: Vec<Sample>,
    #[serde(skip)]
    latencies_ms: Vec<f64>,
    #[serde(skip)]
    stretches: Vec<f64>,
}

/// What the peers' cores counted (see `p2psip_algorithms::Stats`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CoreCounters {
    pub forwarded: u64,
    pub retransmissions: u64,
    pub rerouted: u64,
    pub timeouts: u64,
    pub loops: u64,
    pub ttl_exceeded: u64,
    pub not_ready: u64,
    pub stray_answers: u64,
    pub errors_sent: u64,
    /// Requests refused because they were not signed by the originator they name.
    pub bad_signatures: u64,
    /// Answers dropped because they were not signed by the responder they name, or
    /// named another responder than the node the request was sent to.
    pub forged_answers: u64,
}

fn percentiles(v: &mut [f64]) -> Percentiles {
    if v.is_empty() {
        return Percentiles::default();
    }
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    Percentiles {
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        max: v[v.len() - 1],
    }
}

/// Peak resident memory of this process (VmHWM), bytes; 0 where /proc is missing.
/// Resets the peak resident set size (Linux `clear_refs` 5), so that a run measured after
/// another in the same process (`compare`) reports its own peak. Best effort.
pub fn reset_peak_memory() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

pub fn peak_memory() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

impl Report {
    pub fn new(sc: &Scenario) -> Report {
        Report {
            scenario: sc.clone(),
            ..Report::default()
        }
    }

    pub fn lookup(&mut self, ok: bool, correct: bool, latency: Duration, hops: u32) {
        self.lookups += 1;
        if ok {
            self.lookups_ok += 1;
            self.latencies_ms.push(latency.as_secs_f64() * 1000.0);
            let h = hops as usize;
            if self.hop_histogram.len() <= h {
                self.hop_histogram.resize(h + 1, 0);
            }
            self.hop_histogram[h] += 1;
        }
        if correct {
            self.lookups_correct += 1;
        }
    }

    /// One answered lookup's stretch (latency over the direct round trip).
    pub fn stretch(&mut self, latency: Duration, direct_rtt: Duration) {
        if direct_rtt > Duration::ZERO {
            self.stretches
                .push(latency.as_secs_f64() / direct_rtt.as_secs_f64());
        }
    }

    pub fn push_sample(&mut self, mut s: Sample) {
        s.median_latency_ms = percentiles(&mut s.latencies_ms).p50;
        s.latencies_ms = Vec::new();
        self.samples.push(s);
    }

    pub fn finish(&mut self, sim: &Sim, wall: Duration, nodes: usize) {
        self.dropped_by_adversaries = sim.dropped_by_adversaries();
        self.forgeries = sim.forgeries();
        self.lookup_success_rate = ratio(self.lookups_ok, self.lookups);
        self.lookup_correct_rate = ratio(self.lookups_correct, self.lookups);
        let mut l = std::mem::take(&mut self.latencies_ms);
        self.lookup_latency_ms = percentiles(&mut l);
        self.latencies_ms = l;
        let mut st = std::mem::take(&mut self.stretches);
        self.lookup_stretch = percentiles(&mut st);
        self.stretches = st;
        let (n, sum) = self
            .hop_histogram
            .iter()
            .enumerate()
            .fold((0u64, 0u64), |(n, s), (h, c)| (n + c, s + h as u64 * c));
        self.mean_hops = ratio(sum, n);
        let k = self.samples.len().max(1) as f64;
        self.maintenance_bytes_per_node_s = self
            .samples
            .iter()
            .map(|s| s.maintenance_bytes_per_node_s)
            .sum::<f64>()
            / k;
        self.data_bytes_per_node_s = self
            .samples
            .iter()
            .map(|s| s.data_bytes_per_node_s)
            .sum::<f64>()
            / k;
        self.stored_data_loss_rate = ratio(self.data_lost, self.data_checked);
        let p = percentiles(&mut self.calls.setup_ms);
        self.calls.setup_median_ms = p.p50;
        self.calls.setup_p99_ms = p.p99;
        self.final_peers = sim.joined_set().len();
        let mut c = CoreCounters::default();
        for i in 0..sim.len() {
            if let Some(st) = sim.node(i).map(|n| n.stats()) {
                c.forwarded += st.forwarded;
                c.retransmissions += st.retransmissions;
                c.rerouted += st.rerouted;
                c.timeouts += st.timeouts;
                c.loops += st.loops;
                c.ttl_exceeded += st.ttl_exceeded;
                c.not_ready += st.not_ready;
                c.stray_answers += st.stray_answers;
                c.bad_signatures += st.bad_signatures;
                c.forged_answers += st.forged_answers;
                c.errors_sent += st.errors_sent;
            }
        }
        self.core_counters = c;
        self.events_processed = sim.events_processed();
        self.wall_time_s = wall.as_secs_f64();
        self.events_per_second = self.events_processed as f64 / self.wall_time_s.max(1e-9);
        self.peak_memory_bytes = peak_memory();
        self.memory_bytes_per_node = self.peak_memory_bytes as f64 / nodes.max(1) as f64;
    }

    /// One line for people.
    pub fn summary(&self) -> String {
        format!(
            "{} peers, {:.0} s simulated: lookups {}/{} ok ({:.2}%), {:.2}% correct, latency p50 {:.0} ms p99 {:.0} ms, stretch p50 {:.2} p99 {:.2}, mean hops {:.2}; maintenance {:.0} B/node/s; data loss {}/{}; calls {}/{} connected; {} events in {:.1} s ({:.0}/s), peak memory {:.0} MiB ({:.0} B/node)",
            self.scenario.nodes,
            self.samples.last().map_or(0.0, |s| s.t_s),
            self.lookups_ok,
            self.lookups,
            100.0 * self.lookup_success_rate,
            100.0 * self.lookup_correct_rate,
            self.lookup_latency_ms.p50,
            self.lookup_latency_ms.p99,
            self.lookup_stretch.p50,
            self.lookup_stretch.p99,
            self.mean_hops,
            self.maintenance_bytes_per_node_s,
            self.data_lost,
            self.data_checked,
            self.calls.connected,
            self.calls.attempted,
            self.events_processed,
            self.wall_time_s,
            self.events_per_second,
            self.peak_memory_bytes as f64 / (1 << 20) as f64,
            self.memory_bytes_per_node
        )
    }

    /// Writes report.json, timeseries.csv and the plots into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let json = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        write(dir, "report.json", &json)?;
        let mut csv = String::from(
            "t_s,live_peers,lookups,completed,ok,correct,median_latency_ms,maintenance_bytes_per_node_s,data_bytes_per_node_s,events\n",
        );
        for s in &self.samples {
            csv.push_str(&format!(
                "{:.0},{},{},{},{},{},{:.2},{:.2},{:.2},{}\n",
                s.t_s,
                s.live_peers,
                s.lookups,
                s.completed,
                s.ok,
                s.correct,
                s.median_latency_ms,
                s.maintenance_bytes_per_node_s,
                s.data_bytes_per_node_s,
                s.events
            ));
        }
        write(dir, "timeseries.csv", &csv)?;
        let name = &self.scenario.name;
        plot_cdf(
            &dir.join("latency_cdf.svg"),
            &[(name.as_str(), &self.latencies_ms[..])],
        )?;
        plot_hops(&dir.join("hops.svg"), &self.hop_histogram)?;
        let success: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter(|s| s.completed > 0)
            .map(|s| (s.t_s / 60.0, 100.0 * s.ok as f64 / s.completed as f64))
            .collect();
        plot_series(
            &dir.join("success.svg"),
            "lookup success over time",
            "success %",
            &[(name.as_str(), success)],
        )?;
        let bw: Vec<(f64, f64)> = self
            .samples
            .iter()
            .map(|s| (s.t_s / 60.0, s.maintenance_bytes_per_node_s))
            .collect();
        plot_series(
            &dir.join("maintenance.svg"),
            "maintenance bandwidth",
            "bytes per node per second",
            &[(name.as_str(), bw)],
        )?;
        Ok(())
    }

    /// Latencies of successful lookups (ms), for overlay plots.
    pub fn latencies(&self) -> &[f64] {
        &self.latencies_ms
    }

    /// Each answered lookup's stretch (see `lookup_stretch`).
    pub fn stretches(&self) -> &[f64] {
        &self.stretches
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

fn write(dir: &Path, name: &str, text: &str) -> Result<(), String> {
    std::fs::write(dir.join(name), text).map_err(|e| format!("{name}: {e}"))
}

fn err<E: std::fmt::Display>(e: E) -> String {
    format!("plot: {e}")
}

const COLORS: [RGBColor; 6] = [BLUE, RED, GREEN, MAGENTA, BLACK, RGBColor(255, 140, 0)];

/// A latency CDF, one line per series.
/// At most about 500 points of the empirical CDF of `v`, values raised to `floor`.
fn cdf_points(v: &[f64], floor: f64) -> Vec<(f64, f64)> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len().max(1) as f64;
    let step = (s.len() / 500).max(1);
    s.iter()
        .enumerate()
        .step_by(step)
        .map(|(i, x)| (x.max(floor), (i + 1) as f64 / n))
        .collect()
}

/// Draws each named line in its colour, with a legend at `labels_at` (every line plot of
/// the reports: CDFs, linear or log, and time series).
fn draw_lines<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    lines: Vec<(&str, Vec<(f64, f64)>)>,
    labels_at: SeriesLabelPosition,
) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (k, (name, pts)) in lines.into_iter().enumerate() {
        let c = COLORS[k % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(err)?
            .label(name.to_string())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
    }
    chart
        .configure_series_labels()
        .position(labels_at)
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()
        .map_err(err)?;
    Ok(())
}

pub fn plot_cdf(path: &Path, series: &[(&str, &[f64])]) -> Result<(), String> {
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter())
        .cloned()
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption("lookup latency CDF", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max * 1.02, 0.0..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms)")
        .y_desc("fraction of lookups")
        .draw()
        .map_err(err)?;
    let lines = series
        .iter()
        .map(|(name, v)| (*name, cdf_points(v, f64::MIN)))
        .collect();
    draw_lines(&mut chart, lines, SeriesLabelPosition::MiddleRight)?;
    root.present().map_err(err)
}

/// CDFs of several series on a logarithmic x axis (values below `1e-3` of the largest are
/// drawn at that floor).
pub fn plot_cdf_log(
    path: &Path,
    caption: &str,
    x_desc: &str,
    series: &[(&str, &[f64])],
) -> Result<(), String> {
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter())
        .cloned()
        .fold(1.0, f64::max);
    let min = series
        .iter()
        .flat_map(|(_, v)| v.iter())
        .cloned()
        .filter(|x| *x > 0.0)
        .fold(max, f64::min)
        .max(max * 1e-3);
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((min * 0.9..max * 1.1).log_scale(), 0.0..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("fraction of lookups")
        .draw()
        .map_err(err)?;
    let lines = series
        .iter()
        .map(|(name, v)| (*name, cdf_points(v, min)))
        .collect();
    draw_lines(&mut chart, lines, SeriesLabelPosition::LowerRight)?;
    root.present().map_err(err)
}

fn plot_hops(path: &Path, hist: &[u64]) -> Result<(), String> {
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let max = hist.iter().copied().max().unwrap_or(1).max(1);
    let n = hist.len().max(1) as u32;
    let mut chart = ChartBuilder::on(&root)
        .caption("hops per lookup", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0u32..n).into_segmented(), 0u64..max + max / 10 + 1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("hops")
        .y_desc("lookups")
        .draw()
        .map_err(err)?;
    chart
        .draw_series(
            Histogram::vertical(&chart)
                .style(BLUE.filled())
                .margin(3)
                .data(hist.iter().enumerate().map(|(h, c)| (h as u32, *c))),
        )
        .map_err(err)?;
    root.present().map_err(err)
}

/// Time series, one line per named series (x in minutes).
pub fn plot_series(
    path: &Path,
    title: &str,
    y: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> Result<(), String> {
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let xmax = series
        .iter()
        .flat_map(|(_, v)| v.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let ymax = series
        .iter()
        .flat_map(|(_, v)| v.iter().map(|p| p.1))
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..xmax, 0.0..ymax * 1.1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("simulated minutes")
        .y_desc(y)
        .draw()
        .map_err(err)?;
    let lines = series
        .iter()
        .map(|(name, pts)| (*name, pts.clone()))
        .collect();
    draw_lines(&mut chart, lines, SeriesLabelPosition::MiddleRight)?;
    root.present().map_err(err)
}
