//! The `p2psip` command line: one module per command; `main` parses the arguments and
//! runs the command on a tokio runtime.

mod ca;
mod client;
mod devnet;
mod diag;
mod doctor;
mod node;
mod services;

use self::ca::CaCmd;
use self::client::ClientArgs;
use self::devnet::DevnetArgs;
use self::node::NodeArgs;
use crate::identity;
use crate::ops::parse_duration;
use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use p2psip_proto::security::Identity;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "p2psip",
    version,
    about = "A peer-to-peer overlay that locates SIP users and resources without central servers",
    long_about = "p2psip runs peers of a DHT overlay (Chord by default) that speak a compact \
                  binary protocol over QUIC, and clients that store and look up data through \
                  an admitting peer. `p2psip devnet` starts a local overlay to try it."
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// Run a peer of the overlay until SIGTERM / Ctrl-C (then it leaves gracefully).
    Node(NodeArgs),
    /// Talk to the overlay as a client of one admitting peer (never routes for others).
    Client(ClientArgs),
    /// Start a local overlay of N peers on loopback, store and fetch sample SIP
    /// registrations across them, and keep running until Ctrl-C or --duration.
    Devnet(DevnetArgs),
    /// Create a new identity (Ed25519 key) file and print its Node-ID.
    Keygen {
        /// Where to write the key (64 hex digits); an existing file is never overwritten.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Print the Node-ID of an identity file (the self-signed one: enrolled nodes get theirs
    /// from the CA) and, with --public-key, its public key for `p2psip ca issue`.
    Id {
        /// The key file.
        identity: PathBuf,
        /// Print the Ed25519 public key (64 hex digits) instead.
        #[arg(long)]
        public_key: bool,
    },
    /// The overlay certificate authority of an enrolled overlay: make it, issue node
    /// certificates (user name + a Node-ID the CA picks at random), revoke them, serve
    /// enrollment over HTTPS.
    #[command(subcommand)]
    Ca(CaCmd),
    /// SIP front-end tools.
    #[command(subcommand)]
    Sip(SipCmd),
    /// Get a certificate for an identity from an overlay's enrollment endpoint (`p2psip ca
    /// serve`), as a user with a password. Prints the Node-ID the CA chose.
    Enroll {
        /// The endpoint, https://host:port.
        #[arg(long)]
        url: String,
        /// The overlay CA's certificate: the endpoint must prove it belongs to that CA.
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        user: String,
        #[command(flatten)]
        password: PasswordArgs,
        /// The identity key file to certify (created if missing).
        #[arg(long)]
        identity: PathBuf,
        /// Where to write the certificate (PEM); never overwritten.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// A reachability report for this host against given peers: whether UDP (QUIC)
    /// reaches them, the address each sees this host at, and from those whether a NAT is
    /// in the way and whether it maps each destination anew (symmetric). Exit status 0:
    /// reachable directly (public, or a NAT that keeps one mapping); 2: symmetric NAT
    /// (others reach this host only through a relay); 3: no peer reached; 4: symmetric
    /// NAT and no peer relays. Each reached peer is also tried as a relay: a stream to
    /// this host through it must come back.
    Doctor(doctor::DoctorArgs),
    /// Health check for containers: exits 0 when the node's metrics endpoint answers and
    /// reports the node joined, 1 otherwise (with the reason on stderr).
    Health {
        /// The node's metrics endpoint, host:port.
        #[arg(long, env = "P2PSIP_HEALTH_METRICS", default_value = "127.0.0.1:9470")]
        metrics: String,
        /// Give up after this long.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        timeout: Duration,
    },
}

#[derive(Subcommand)]
pub(crate) enum SipCmd {
    /// Add a SIP user (or replace its password) in a users file ([sip] users_file):
    /// htdigest lines `user:realm:HA1` for MD5 and SHA-256, the file created mode 0600.
    /// The realm is the front-end's SIP domain ([sip] domain).
    AddUser {
        /// The users file.
        file: PathBuf,
        /// The user part of the AOR (alice for sip:alice@DOMAIN).
        user: String,
        /// The SIP domain the front-ends serve.
        #[arg(long, default_value = "p2psip")]
        realm: String,
        #[command(flatten)]
        password: PasswordArgs,
    },
}

/// Where a password comes from.
#[derive(Args)]
pub(crate) struct PasswordArgs {
    /// A file holding the password (first line); or set P2PSIP_PASSWORD.
    #[arg(long, required_unless_present = "password_env")]
    pub(crate) password_file: Option<PathBuf>,
    #[arg(long, env = "P2PSIP_PASSWORD", hide_env_values = true, hide = true)]
    pub(crate) password_env: Option<String>,
}

impl PasswordArgs {
    fn get(self) -> anyhow::Result<String> {
        match (self.password_file, self.password_env) {
            (Some(f), _) => Ok(std::fs::read_to_string(&f)
                .with_context(|| format!("reading {}", f.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_string()),
            (None, Some(p)) => Ok(p),
            (None, None) => bail!("--password-file or P2PSIP_PASSWORD is required"),
        }
    }
}

#[derive(Args, Clone)]
pub(crate) struct LogArgs {
    /// Log format: human or json.
    #[arg(long, env = "P2PSIP_LOG_FORMAT")]
    pub(crate) log_format: Option<String>,
    /// Log filter, e.g. info, debug, "info,p2psip_node=debug".
    #[arg(long, env = "P2PSIP_LOG_LEVEL")]
    pub(crate) log_level: Option<String>,
}

/// Standard error for the logs, where a failed write (a full disk under a log file) drops
/// the line and counts it (`p2psip_log_write_failures_total`) instead of failing: the
/// subscriber would report it with `eprintln!`, which panics when standard error fails.
pub(crate) struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if std::io::stderr().write_all(buf).is_err() {
            crate::metrics::log_write_failed();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

pub(crate) fn init_logs(format: &str, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: log files and journald get plain text.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(|| LossyStderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

/// An error and its causes on one line, each cause only when the message before it does
/// not already say it (typed errors carry their cause's text; anyhow contexts do not).
pub fn report(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let m = cause.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
    }
    out
}

pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = match &cli.cmd {
        Cmd::Node(a) if a.threads == 1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Cmd::Node(a) if a.threads > 1 => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(a.threads)
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
    .context("starting the async runtime")?;
    match cli.cmd {
        Cmd::Node(a) => rt.block_on(node::run(a)),
        Cmd::Client(a) => {
            init_logs(
                a.log.log_format.as_deref().unwrap_or("human"),
                a.log.log_level.as_deref().unwrap_or("warn"),
            );
            let code = rt.block_on(client::run(a))?;
            std::process::exit(code);
        }
        Cmd::Devnet(a) => rt.block_on(devnet::run(a)),
        Cmd::Doctor(a) => {
            init_logs("human", "warn");
            let code = rt.block_on(doctor::run(a))?;
            std::process::exit(code);
        }
        Cmd::Keygen { out } => {
            let seed = identity::generate_seed();
            identity::write_seed(&out, &seed)?;
            println!("{:#}", Identity::from_seed(seed, "").node_id);
            Ok(())
        }
        Cmd::Health { metrics, timeout } => {
            let code = match rt.block_on(crate::ops::health(&metrics, timeout)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("unhealthy: {e}");
                    1
                }
            };
            std::process::exit(code);
        }
        Cmd::Id {
            identity: path,
            public_key,
        } => {
            let seed = identity::read_seed(&path)?;
            let id = Identity::from_seed(seed, "");
            if public_key {
                println!("{}", hex::encode(id.key.verifying_key().as_bytes()));
            } else {
                println!("{:#}", id.node_id);
            }
            Ok(())
        }
        Cmd::Ca(CaCmd::Serve {
            dir,
            listen,
            name,
            days,
            log,
        }) => {
            init_logs(
                log.log_format.as_deref().unwrap_or("human"),
                log.log_level.as_deref().unwrap_or("info"),
            );
            rt.block_on(async move {
                tokio::select! {
                    r = crate::ca::enrollment::serve(dir, listen, &name, days, None) => r,
                    _ = tokio::signal::ctrl_c() => Ok(()),
                }
            })?;
            Ok(())
        }
        Cmd::Ca(c) => ca::run(c),
        Cmd::Sip(SipCmd::AddUser {
            file,
            user,
            realm,
            password,
        }) => {
            let pw = password.get()?;
            crate::sip::auth::add_user(&file, &user, &realm, &pw)?;
            println!("SIP user {user}@{realm} in {}", file.display());
            Ok(())
        }
        Cmd::Enroll {
            url,
            ca,
            user,
            password,
            identity: key_path,
            out,
        } => {
            if out.exists() {
                bail!("{} exists; refusing to overwrite it", out.display());
            }
            let password = password.get()?;
            let id = identity::load_or_create(&key_path, &user, true)?;
            let key = *id.key.verifying_key().as_bytes();
            let e = rt.block_on(crate::ca::enrollment::enroll(
                &url, &ca, &user, &password, &key,
            ))?;
            std::fs::write(&out, &e.certificate)
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "node_id {}\nserial {}\nuser {user}\ncertificate {}",
                e.node_id,
                e.serial,
                out.display()
            );
            Ok(())
        }
    }
}

/// Runs one core operation on a node and waits for its outcome, at most `limit`.
pub(crate) async fn op(
    h: &crate::runtime::NodeHandle,
    limit: Duration,
    f: impl FnOnce(
            &mut p2psip_algorithms::OverlayNode,
            p2psip_algorithms::Time,
        ) -> p2psip_algorithms::OpId
        + Send
        + 'static,
) -> anyhow::Result<p2psip_algorithms::Event> {
    Ok(tokio::time::timeout(limit, h.op(f))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {limit:?}"))??)
}

/// The configuration of a client runtime for `a`, writing as `user`, with a key of its
/// own (no certificate; message signatures as --unsigned-messages says).
pub(crate) fn client_config(a: &ClientArgs, user: &str) -> crate::config::Config {
    crate::config::Config {
        overlay: a.overlay.clone(),
        user: user.into(),
        security: crate::config::SecuritySection {
            sign_messages: !a.unsigned_messages,
            ..Default::default()
        },
        ..crate::config::Config::default()
    }
}

/// [`client_config`] for a client whose key is --identity's: with its certificate.
pub(crate) fn identity_client_config(a: &ClientArgs, user: &str) -> crate::config::Config {
    let mut cfg = client_config(a, user);
    cfg.security.ca = a.ca.clone();
    cfg.security.certificate = a.certificate.clone();
    cfg
}

/// A client of the admitting peer `peer` with --identity's key (a fresh one without it),
/// joined within --timeout.
pub(crate) async fn joined_client(
    a: &ClientArgs,
    peer: std::net::SocketAddr,
    user: &str,
) -> anyhow::Result<crate::runtime::NodeHandle> {
    let seed = match &a.identity {
        Some(p) => identity::read_seed(p)?,
        None => identity::generate_seed(),
    };
    let cfg = identity_client_config(a, user);
    let h =
        crate::runtime::spawn(cfg, crate::runtime::Role::Client { admitting: peer }, seed).await?;
    if let Err(e) = h.wait_joined(a.timeout).await {
        bail!("could not reach peer {peer}: {e}");
    }
    Ok(h)
}
