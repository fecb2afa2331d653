//! `p2psip`: the node daemon and its command-line tools (`p2psip_node::cli`).

use std::process::ExitCode;

fn main() -> ExitCode {
    match p2psip_node::cli::main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", p2psip_node::cli::report(&e));
            ExitCode::from(1)
        }
    }
}
