//! Every transaction a node originates is logged inside a span of its own
//! (`transaction{tx=... method=... by=...}`): its request, retransmissions and end
//! (../shared/DESIGN.md: spans per transaction).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use p2psip_simulator::NetConfig;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_client_transaction_logs_its_request_retransmissions_and_answer_in_one_span() {
    let mut sim = overlay(71, 12, chord(), NetConfig::default());
    let (a, b) = (random_live(&mut sim), random_live(&mut sim));
    store_user_value(&mut sim, a, 3, 600);
    let out = Captured::default();
    let sink = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .without_time()
        .with_writer(move || sink.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        assert_eq!(fetch_user_value(&mut sim, b, 3).unwrap(), Some(value_of(3)));
        // A network that loses every message: a lookup retransmits, then fails.
        sim.net.loss = 1.0;
        let target = p2psip_algorithms::Id(7);
        let _ = sim.op(b, |n, t| n.lookup(t, target));
        sim.run_for(Duration::from_secs(30));
    });
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let fetch: Vec<&&str> = lines
        .iter()
        .filter(|l| {
            l.contains("transaction{")
                && l.contains("method=\"fetch\"")
                && l.contains("by=\"client\"")
        })
        .collect();
    assert!(
        fetch
            .iter()
            .any(|l| l.ends_with(" request") || l.contains(": request")),
        "no request line in a fetch span:\n{text}"
    );
    let answered: Vec<&&&str> = fetch.iter().filter(|l| l.contains("answered")).collect();
    assert_eq!(answered.len(), 1, "{text}");
    assert!(
        answered[0].contains("answer=\"fetch\"") && answered[0].contains("hops="),
        "{}",
        answered[0]
    );
    // Each line of one transaction carries the same tx id.
    let tx_of = |l: &str| {
        l.split("tx=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_owned)
    };
    let id = tx_of(answered[0]).unwrap();
    assert!(
        fetch
            .iter()
            .filter(|l| tx_of(l).as_deref() == Some(id.as_str()))
            .count()
            >= 2
    );
    let ping: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("method=\"ping\""))
        .collect();
    assert!(ping.iter().any(|l| l.contains("retransmitting")), "{text}");
    assert!(ping.iter().any(|l| l.contains("failed")), "{text}");
}
