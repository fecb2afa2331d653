//! Prints the hex test vectors of SPEC.md section 9, in the form the spec lists them.
//! `cargo run -p p2psip-proto --example vectors`

fn main() {
    for (name, msg) in p2psip_proto::test_vectors::all() {
        match msg.encode() {
            Ok(bytes) => {
                println!("```hex vector:{name}");
                for chunk in bytes.chunks(32) {
                    let line: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
                    println!("{}", line.join(""));
                }
                println!("```");
            }
            Err(e) => eprintln!("vector {name} does not encode: {e}"),
        }
    }
}
