//! Compiles `proto/*.proto` with the pure-Rust `protox` compiler (no `protoc` install needed)
//! and generates the prost types into OUT_DIR.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/common.proto",
        "proto/security.proto",
        "proto/data.proto",
        "proto/messages.proto",
        "proto/topology.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
