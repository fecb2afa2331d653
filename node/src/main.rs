//! `p2psip`: the node daemon and its command-line tools (`p2psip_node::cli`).

fn main() -> anyhow::Result<()> {
    p2psip_node::cli::main()
}
