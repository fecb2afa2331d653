//! # p2psip-node: the daemon
//!
//! Drives the sans-IO overlay core of `p2psip-algorithms` with tokio: QUIC transport
//! (quinn + rustls, mutual TLS 1.3, Node-ID bound to the certificate key), a dashmap
//! read cache over a redb database for storage, configuration, metrics and the command line (`cli`, a module per command).

pub mod bench;
pub mod ca;
pub mod cli;
pub mod config;
pub mod echo;
pub mod identity;
pub mod metrics;
pub mod ops;
pub mod overlay_config;
pub mod remote_log;
pub mod runtime;
pub mod security;
pub mod services;
pub mod sip;
pub mod storage;
pub mod tls;
pub mod transport;
