//! Fuzzes certificate checking as peers and value signers present certificates
//! (proto/SPEC.md 5.2): X.509 parsing, the Node-ID URI, issuer and validity checks, in a
//! self-signed and in an enrolled overlay. Bad input must be refused, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use p2psip_node::security::trust::{node_id_of_cert, Trust};
use std::sync::OnceLock;

fn enrolled() -> &'static Trust {
    static T: OnceLock<Trust> = OnceLock::new();
    T.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("p2psip-fuzz-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pem = p2psip_node::ca::ca_init(&dir, "fuzz.test", 30).expect("CA");
        let der = p2psip_node::security::trust::read_cert(&pem).expect("CA cert");
        Trust::enrolled("fuzz.test", der, Default::default(), false).expect("trust")
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = node_id_of_cert(data);
    let _ = Trust::self_signed("fuzz.test").check(data);
    let _ = enrolled().check(data);
});
