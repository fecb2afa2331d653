//! The `p2psip` daemon and CLI. The node issue builds it; until then it says so.

fn main() {
    eprintln!(
        "p2psip {}: the node daemon is not built yet; run the local overlay demo with \
         `cargo run --release -p p2psip-simulator --bin p2psip-sim -- demo`",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
