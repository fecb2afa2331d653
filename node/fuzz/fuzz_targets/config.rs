//! Fuzzes the configuration document: TOML into `Config`, then validation and the
//! derived core and algorithm settings. Bad input must give an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use p2psip_node::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = toml::from_str::<Config>(text) else {
        return;
    };
    if cfg.validate().is_ok() {
        let _ = cfg.core();
        let _ = cfg.algorithm_params();
    }
});
