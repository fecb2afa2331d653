//! `p2psip`: the node daemon and its command-line tools.

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use p2psip_algorithms::{Event, Id};
use p2psip_node::cli_ops::{
    build_value, kind_of, name_seed, parse_duration, values_json, values_of,
};
use p2psip_node::config::Config;
use p2psip_node::runtime::{self, NodeHandle, Role};
use p2psip_node::{identity, metrics, sip};
use p2psip_proto::security::Identity;
use p2psip_proto::Body;
use serde_json::json;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "p2psip",
    version,
    about = "A peer-to-peer overlay that locates SIP users and resources without central servers",
    long_about = "p2psip runs peers of a DHT overlay (Chord by default) that speak a compact \
                  binary protocol over QUIC, and clients that store and look up data through \
                  an admitting peer. `p2psip devnet` starts a local overlay to try it."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
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
enum SipCmd {
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
struct PasswordArgs {
    /// A file holding the password (first line); or set P2PSIP_PASSWORD.
    #[arg(long, required_unless_present = "password_env")]
    password_file: Option<PathBuf>,
    #[arg(long, env = "P2PSIP_PASSWORD", hide_env_values = true, hide = true)]
    password_env: Option<String>,
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

#[derive(Subcommand)]
enum CaCmd {
    /// Create a CA in DIR: ca.key (secret, mode 0600) and ca.pem (give ca.pem to every node
    /// as security.ca). Refuses to overwrite an existing CA.
    Init {
        /// Directory of the CA's files.
        #[arg(long)]
        dir: PathBuf,
        /// The overlay the CA enrolls nodes for.
        #[arg(long)]
        overlay: String,
        /// Validity of the CA certificate, in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a node certificate: binds USER and a random Node-ID to a node's public key.
    /// Prints the Node-ID and the serial number (for revocation).
    Issue {
        /// Directory of the CA's files.
        #[arg(long)]
        dir: PathBuf,
        /// The user name the certificate binds.
        #[arg(long)]
        user: String,
        /// The node's identity key file (its public key is read from it) ...
        #[arg(
            long,
            conflicts_with = "public_key",
            required_unless_present = "public_key"
        )]
        identity: Option<PathBuf>,
        /// ... or its public key, 64 hex digits (`p2psip id --public-key KEYFILE`).
        #[arg(long)]
        public_key: Option<String>,
        /// Where to write the certificate (PEM); never overwritten.
        #[arg(long, short)]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Assign this Node-ID (32 hex digits) instead of a random one.
        #[arg(long)]
        node_id: Option<String>,
        /// Start the validity this many days in the past (to make expired certificates for
        /// tests of expiry).
        #[arg(long, default_value_t = 0, hide = true)]
        backdate_days: u32,
    },
    /// Sign an overlay configuration document (TOML: overlay, sequence, and any of
    /// algorithm, bootstrap, ca, revoked, allow_self_signed, [limits], [[kinds]]; proto/SPEC.md
    /// 5.3) with the CA key.
    /// Nodes take it at start (security.overlay_config) or from `p2psip client config-push`.
    SignConfig {
        /// Directory of the CA's files.
        #[arg(long)]
        dir: PathBuf,
        /// The document to sign.
        #[arg(long)]
        config: PathBuf,
        /// Where to write the signed document; never overwritten.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Allow a user to enroll through `ca serve` with a password (kept salted and hashed
    /// in DIR/users.txt; an existing user's password is replaced).
    AddUser {
        /// Directory of the CA's files.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        user: String,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Serve enrollment over HTTPS: POST /enroll with a user, its password and a public
    /// key returns a certificate (see docs/security.md). Runs until Ctrl-C.
    Serve {
        /// Directory of the CA's files.
        #[arg(long)]
        dir: PathBuf,
        /// TCP address to listen on.
        #[arg(long, default_value = "0.0.0.0:8443")]
        listen: SocketAddr,
        /// The name (DNS name or IP address) clients reach the endpoint by: its TLS
        /// certificate, issued by the CA at start, is for that name.
        #[arg(long)]
        name: String,
        /// Validity of the certificates it issues, in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Issue certificates for a SIP front-end's users, for enrolled overlays: for each user
    /// of DOMAIN in the users file, OUT/<user>.key (made if absent, mode 0600) and
    /// OUT/<user>.pem binding sip:<user>@DOMAIN to it. Give OUT to that front-end as
    /// sip.user_certificates (one directory per front-end). Prints a line per user.
    IssueSipUsers {
        /// Directory of the CA's files.
        #[arg(long)]
        dir: PathBuf,
        /// The front-end's users file (sip.users_file): its users of DOMAIN get certificates.
        #[arg(long, required_unless_present = "user")]
        users_file: Option<PathBuf>,
        /// A user (repeatable), instead of or besides the users file.
        #[arg(long)]
        user: Vec<String>,
        /// The SIP domain (sip.domain, the users file's realm).
        #[arg(long, default_value = "p2psip")]
        domain: String,
        /// The directory to write (created mode 0700).
        #[arg(long, short)]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Replace certificates already there (renewal); the keys are kept.
        #[arg(long)]
        renew: bool,
    },
    /// Revoke a certificate by serial number: adds it to DIR/revoked.txt, the file nodes
    /// read at start as security.revoked (running nodes learn revocations from a signed
    /// overlay document's `revoked` list: `ca sign-config`, `client config-push`).
    Revoke {
        /// Directory of the CA's files.
        #[arg(long)]
        dir: PathBuf,
        /// The serial number `issue` printed (hex).
        #[arg(long)]
        serial: String,
    },
}

#[derive(Args, Clone)]
struct LogArgs {
    /// Log format: human or json.
    #[arg(long, env = "P2PSIP_LOG_FORMAT")]
    log_format: Option<String>,
    /// Log filter, e.g. info, debug, "info,p2psip_node=debug".
    #[arg(long, env = "P2PSIP_LOG_LEVEL")]
    log_level: Option<String>,
}

#[derive(Args)]
struct NodeArgs {
    /// Configuration file (TOML; see deploy/p2psip.toml for every field).
    #[arg(long, short, env = "P2PSIP_CONFIG")]
    config: Option<PathBuf>,
    /// Overlay name.
    #[arg(long, env = "P2PSIP_OVERLAY")]
    overlay: Option<String>,
    /// DHT algorithm: chord, kademlia or onehop.
    #[arg(long, env = "P2PSIP_ALGORITHM")]
    algorithm: Option<String>,
    /// UDP address to listen on, e.g. 0.0.0.0:4700.
    #[arg(long, env = "P2PSIP_LISTEN")]
    listen: Option<String>,
    /// Peers to join through, comma-separated host:port. None: start a new overlay.
    #[arg(long, env = "P2PSIP_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Option<Vec<String>>,
    /// Identity key file (created if missing). Default: <data-dir>/node.key, or ephemeral.
    #[arg(long, env = "P2PSIP_IDENTITY")]
    identity: Option<PathBuf>,
    /// Directory for stored data and the bootstrap cache.
    #[arg(long, env = "P2PSIP_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address of the Prometheus /metrics endpoint, e.g. 0.0.0.0:9470 (port 0: one the
    /// kernel picks, printed as "metrics on http://ADDR/metrics" after the listening line).
    #[arg(long, env = "P2PSIP_METRICS")]
    metrics: Option<String>,
    /// Turns the SIP front-end (registrar and proxy) on at this UDP/TCP address, e.g.
    /// 0.0.0.0:5060 (the [sip] table of the configuration holds its other settings).
    #[arg(long, env = "P2PSIP_SIP")]
    sip: Option<String>,
    /// Serves the echo application (7) that `p2psip client app-echo` calls (nat.echo).
    #[arg(long)]
    echo: bool,
    /// The overlay CA's certificate (security.ca): only enrolled nodes are admitted.
    #[arg(long, env = "P2PSIP_CA", requires = "certificate")]
    ca: Option<PathBuf>,
    /// This node's certificate from the overlay CA (security.certificate).
    #[arg(long, env = "P2PSIP_CERTIFICATE", requires = "ca")]
    certificate: Option<PathBuf>,
    /// The overlay configuration document signed by the CA (security.overlay_config).
    #[arg(long, env = "P2PSIP_OVERLAY_CONFIG", requires = "ca")]
    overlay_config: Option<PathBuf>,
    /// Reachability: "auto" (route only if peers see this node's own address; behind a
    /// NAT run as a client), "peer" or "client" (nat.mode).
    #[arg(long, env = "P2PSIP_NAT_MODE")]
    nat_mode: Option<String>,
    /// When a store is on disk: always, batch (default) or none (storage.sync).
    #[arg(long, env = "P2PSIP_STORAGE_SYNC")]
    storage_sync: Option<String>,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Args)]
struct ClientArgs {
    /// The admitting peer, host:port.
    #[arg(long, env = "P2PSIP_PEER")]
    peer: String,
    /// Overlay name (must match the peer's).
    #[arg(long, env = "P2PSIP_OVERLAY", default_value = "p2psip.example")]
    overlay: String,
    /// Identity key file of the writer; default: a key derived from the resource name, so
    /// the same name always signs with the same key.
    #[arg(long, env = "P2PSIP_IDENTITY")]
    identity: Option<PathBuf>,
    /// In an enrolled overlay: the overlay CA's certificate ...
    #[arg(long, env = "P2PSIP_CA", requires = "certificate")]
    ca: Option<PathBuf>,
    /// ... and the certificate the CA issued for --identity (values are then signed as the
    /// certificate's user).
    #[arg(
        long,
        env = "P2PSIP_CERTIFICATE",
        requires = "ca",
        requires = "identity"
    )]
    certificate: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Give up after this long (e.g. 10s).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    op: ClientOp,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Subcommand)]
enum ClientOp {
    /// Store VALUE under NAME (resource = hash(NAME); signed as user NAME).
    Store {
        name: String,
        value: String,
        /// Kind: user-value, sip-registration, user-array, node-value, or a number.
        #[arg(long, default_value = "user-value")]
        kind: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        lifetime: u32,
    },
    /// Fetch the values under NAME (exit status 4 when there are none).
    Fetch {
        name: String,
        #[arg(long, default_value = "user-value")]
        kind: String,
    },
    /// Metadata of the values under NAME.
    Stat {
        name: String,
        #[arg(long, default_value = "user-value")]
        kind: String,
    },
    /// The closest resource at or after hash(NAME) that holds the kind.
    Find {
        name: String,
        #[arg(long, default_value = "user-value")]
        kind: String,
    },
    /// Ping the peer responsible for hash(NAME) (default: a random id).
    Ping { name: Option<String> },
    /// Open an application connection to NODE's echo application (a node started with
    /// --echo) through AppAttach — direct, punched through NATs, or relayed — send
    /// MESSAGE on ROUNDS streams and check what comes back. Prints the path taken and the
    /// times; exit status 2 when it fails.
    AppEcho {
        /// The Node-ID (32 hex digits) of the node serving echo.
        node: String,
        #[arg(long, default_value = "hello through the overlay")]
        message: String,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Hand a signed overlay configuration document (`p2psip ca sign-config`) to the
    /// admitting peer, which checks it and, if newer than its own, spreads it to the
    /// overlay (ConfigUpdate). Peers log and count a document they refuse.
    ConfigPush {
        /// The signed document.
        file: PathBuf,
    },
    /// Store COUNT values, PREFIX0 .. PREFIX<COUNT-1>, each signed by its own name's key
    /// (a smoke test of a fleet). Exit status 5 unless every store succeeds.
    StoreMany {
        #[arg(long, default_value_t = 100)]
        count: usize,
        #[arg(long, default_value = "smoke-")]
        prefix: String,
    },
    /// Fetch the values StoreMany wrote and check each one. Exit status 5 unless every
    /// value is found intact.
    CheckMany {
        #[arg(long, default_value_t = 100)]
        count: usize,
        #[arg(long, default_value = "smoke-")]
        prefix: String,
    },
    /// Benchmark through the peer (bench/opendht): wait until stored values come back,
    /// then put COUNT values and get them one at a time (latency), then put and get with
    /// WINDOW requests in flight for DURATION (throughput). Prints one JSON object.
    Bench {
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Bytes per value (a SIP registration is about 200).
        #[arg(long, default_value_t = 200)]
        value_size: usize,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 64)]
        window: usize,
        /// Values stored and fetched per readiness round.
        #[arg(long, default_value_t = 20)]
        probes: usize,
        /// Give up waiting for the overlay to be ready after this.
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        ready_timeout: Duration,
        /// At the end, fetch the first 100 values again through this other peer (host:port).
        #[arg(long)]
        check_peer: Option<String>,
    },
}

#[derive(Args)]
struct DevnetArgs {
    /// Number of peers.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Number of sample SIP users to register.
    #[arg(long, default_value_t = 20)]
    users: usize,
    /// DHT algorithm: chord, kademlia or onehop.
    #[arg(long, default_value = "chord")]
    algorithm: String,
    /// Stop after this long (e.g. 30s); default: run until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Prometheus endpoint for all peers (each series has a node label); port 0: one the
    /// kernel picks, printed in the "metrics:" line.
    #[arg(long, default_value = "127.0.0.1:9470")]
    metrics: String,
    /// First UDP port; peers take consecutive ports (0: any free ports).
    #[arg(long, default_value_t = 0)]
    base_port: u16,
    /// Turns on a SIP front-end (registrar and proxy) on every peer, on 127.0.0.1 from
    /// this UDP/TCP port up (5060: peers get 5060, 5061, ...; 0: any free ports). SIP
    /// phones or SIPp register and call through any of them.
    #[arg(long)]
    sip: Option<u16>,
    /// SIP users file (htdigest lines, `p2psip sip add-user`) the front-ends authenticate
    /// REGISTER against (realm p2psip); without it devnet makes users user0..user9 of
    /// the domain p2psip with random passwords and prints them.
    #[arg(long, requires = "sip")]
    sip_users: Option<PathBuf>,
    #[command(flatten)]
    log: LogArgs,
}

/// Sends an INVITE for `user` at devnet's domain to front-end `fe` (from a caller of
/// another domain, so unchallenged) and returns the first final answer's status line.
async fn devnet_call(fe: SocketAddr, user: &str) -> anyhow::Result<String> {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let me = s.local_addr()?;
    let invite = format!(
        "INVITE sip:{user}@{DEVNET_DOMAIN} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bKdevnet{}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:devnet@devnet.example>;tag=d\r\n\
         To: <sip:{user}@{DEVNET_DOMAIN}>\r\nCall-ID: devnet-{}@127.0.0.1\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:devnet@{me}>\r\nContent-Length: 0\r\n\r\n",
        me.port(),
        me.port()
    );
    let mut buf = vec![0u8; 65_535];
    for _ in 0..4 {
        s.send_to(invite.as_bytes(), fe).await?;
        let until = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Ok((n, _))) = tokio::time::timeout_at(until, s.recv_from(&mut buf)).await {
            let line = String::from_utf8_lossy(&buf[..n])
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            if line.starts_with("SIP/2.0 ") && !line.starts_with("SIP/2.0 1") {
                return Ok(line.trim_start_matches("SIP/2.0 ").to_string());
            }
        }
    }
    bail!("no final answer")
}

/// Standard error for the logs, where a failed write (a full disk under a log file) drops
/// the line and counts it (`p2psip_log_write_failures_total`) instead of failing: the
/// subscriber would report it with `eprintln!`, which panics when standard error fails.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if std::io::stderr().write_all(buf).is_err() {
            p2psip_node::metrics::log_write_failed();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

fn init_logs(format: &str, level: &str) {
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

/// The SIP domain (and digest realm) of devnet's front-ends: the default one, which the
/// SIPp scenarios under node/tests/sip use.
const DEVNET_DOMAIN: &str = "p2psip";

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.cmd {
        Cmd::Node(a) => rt.block_on(node(a)),
        Cmd::Client(a) => {
            init_logs(
                a.log.log_format.as_deref().unwrap_or("human"),
                a.log.log_level.as_deref().unwrap_or("warn"),
            );
            let code = rt.block_on(client(a))?;
            std::process::exit(code);
        }
        Cmd::Devnet(a) => rt.block_on(devnet(a)),
        Cmd::Keygen { out } => {
            let seed = identity::generate_seed();
            identity::write_seed(&out, &seed)?;
            println!("{:#}", Identity::from_seed(seed, "").node_id);
            Ok(())
        }
        Cmd::Health { metrics, timeout } => {
            let code = match rt.block_on(p2psip_node::cli_ops::health(&metrics, timeout)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("unhealthy: {e:#}");
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
                    r = p2psip_node::enroll_http::serve(dir, listen, &name, days, None) => r,
                    _ = tokio::signal::ctrl_c() => Ok(()),
                }
            })
        }
        Cmd::Ca(c) => ca(c),
        Cmd::Sip(SipCmd::AddUser {
            file,
            user,
            realm,
            password,
        }) => {
            let pw = password.get()?;
            p2psip_node::sip::auth::add_user(&file, &user, &realm, &pw)?;
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
            let e = rt.block_on(p2psip_node::enroll_http::enroll(
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

fn ca(c: CaCmd) -> anyhow::Result<()> {
    use p2psip_node::enroll;
    match c {
        CaCmd::Init { dir, overlay, days } => {
            let cert = enroll::ca_init(&dir, &overlay, days)?;
            println!("CA for overlay {overlay:?}: {}", cert.display());
        }
        CaCmd::Issue {
            dir,
            user,
            identity: key_file,
            public_key,
            out,
            days,
            node_id,
            backdate_days,
        } => {
            if out.exists() {
                bail!("{} exists; refusing to overwrite it", out.display());
            }
            let key: [u8; 32] = match (key_file, public_key) {
                (Some(p), _) => *Identity::from_seed(identity::read_seed(&p)?, "")
                    .key
                    .verifying_key()
                    .as_bytes(),
                (None, Some(h)) => enroll::parse_public_key(&h)
                    .ok_or_else(|| anyhow::anyhow!("--public-key: 64 hex digits"))?,
                (None, None) => bail!("--identity or --public-key is required"),
            };
            let node_id = node_id
                .map(|h| p2psip_node::cli_ops::parse_node_id(&h))
                .transpose()?;
            let issued = enroll::ca_issue(&dir, &user, &key, node_id, days, backdate_days)?;
            std::fs::write(&out, &issued.pem)
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "node_id {:#}\nserial {}\nuser {user}\nnot_after {}\ncertificate {}",
                issued.node_id,
                issued.serial,
                issued.not_after,
                out.display()
            );
        }
        CaCmd::SignConfig { dir, config, out } => {
            if out.exists() {
                bail!("{} exists; refusing to overwrite it", out.display());
            }
            let text = std::fs::read_to_string(&config)
                .with_context(|| format!("reading {}", config.display()))?;
            let signed = p2psip_node::overlay_config::sign(&dir, &text)
                .with_context(|| format!("{}", config.display()))?;
            std::fs::write(&out, signed).with_context(|| format!("writing {}", out.display()))?;
            println!("signed {} -> {}", config.display(), out.display());
        }
        CaCmd::AddUser {
            dir,
            user,
            password,
        } => {
            let pw = password.get()?;
            let f = p2psip_node::enroll_http::add_user(&dir, &user, &pw)?;
            println!("user {user} may enroll ({})", f.display());
        }
        CaCmd::IssueSipUsers {
            dir,
            users_file,
            user,
            domain,
            out,
            days,
            renew,
        } => {
            let mut users = user;
            if let Some(f) = &users_file {
                users.extend(p2psip_node::sip::auth::Users::load(f)?.names(&domain));
            }
            users.sort();
            users.dedup();
            for done in
                p2psip_node::sip::identities::issue(&dir, &domain, &users, &out, days, renew)?
            {
                match done {
                    p2psip_node::sip::identities::SipUserIssued::Issued { aor, issued } => {
                        println!(
                            "{aor} issued node_id {:#} serial {} not_after {}",
                            issued.node_id, issued.serial, issued.not_after
                        )
                    }
                    p2psip_node::sip::identities::SipUserIssued::Kept { aor } => {
                        println!("{aor} kept (has a certificate; --renew replaces it)")
                    }
                }
            }
            println!("sip.user_certificates = {:?}", out.display().to_string());
        }
        CaCmd::Serve { .. } => bail!("handled in main"),
        CaCmd::Revoke { dir, serial } => {
            let list = enroll::ca_revoke(&dir, &serial)?;
            println!(
                "revoked {serial}: {} (nodes read it as security.revoked)",
                list.display()
            );
        }
    }
    Ok(())
}

async fn node(a: NodeArgs) -> anyhow::Result<()> {
    let mut cfg = match &a.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(v) = a.overlay {
        cfg.overlay = v;
    }
    if let Some(v) = a.algorithm {
        cfg.algorithm = v;
    }
    if let Some(v) = a.listen {
        cfg.listen = v;
    }
    if let Some(v) = a.bootstrap {
        cfg.bootstrap = v.into_iter().filter(|s| !s.is_empty()).collect();
    }
    if let Some(v) = a.identity {
        cfg.identity = Some(v);
    }
    if let Some(v) = a.data_dir {
        cfg.data_dir = Some(v);
    }
    if let Some(v) = a.metrics {
        cfg.metrics = v;
    }
    if let Some(v) = a.sip {
        cfg.sip.enabled = true;
        cfg.sip.listen = v;
    }
    if a.echo {
        cfg.nat.echo = true;
    }
    if let Some(v) = a.ca {
        cfg.security.ca = Some(v);
    }
    if let Some(v) = a.certificate {
        cfg.security.certificate = Some(v);
    }
    if let Some(v) = a.overlay_config {
        cfg.security.overlay_config = Some(v);
    }
    if let Some(v) = a.nat_mode {
        cfg.nat.mode = v;
    }
    if let Some(v) = a.storage_sync {
        cfg.storage.sync = v;
    }
    if let Some(v) = a.log.log_format {
        cfg.log.format = v;
    }
    if let Some(v) = a.log.log_level {
        cfg.log.level = v;
    }
    cfg.validate()?;
    init_logs(&cfg.log.format, &cfg.log.level);
    let key_path = cfg
        .identity
        .clone()
        .or_else(|| cfg.data_dir.as_ref().map(|d| d.join("node.key")));
    let seed = match &key_path {
        Some(p) => {
            identity::load_or_create(p, &cfg.user, true)?;
            identity::read_seed(p)?
        }
        None => {
            tracing::warn!("no identity file or data dir: using an ephemeral identity");
            identity::generate_seed()
        }
    };
    let metrics_at = if cfg.metrics.is_empty() {
        None
    } else {
        let addr: SocketAddr = runtime::resolve(&cfg.metrics).await?;
        let addr = metrics::install(addr).await?;
        tracing::info!("metrics on http://{addr}/metrics");
        Some(addr)
    };
    let h = runtime::spawn(cfg.clone(), Role::Peer, seed).await?;
    println!(
        "p2psip node {:#} listening on {} (overlay {:?}, algorithm {})",
        h.id, h.addr, cfg.overlay, cfg.algorithm
    );
    if let Some(addr) = metrics_at {
        println!("metrics on http://{addr}/metrics");
    }
    if cfg.nat.echo {
        p2psip_node::echo::serve(&h.client()).await;
    }
    let _sip = if cfg.sip.enabled {
        let s = sip::SipSettings::from_config(&cfg.sip, h.advertised)?;
        let fe = sip::start(h.client(), s).await?;
        println!("SIP front-end on udp/tcp {}", fe.addr);
        Some(fe)
    } else {
        None
    };
    std::io::stdout().flush().ok();
    wait_for_signal(&h).await;
    h.shutdown().await;
    Ok(())
}

async fn wait_for_signal(h: &NodeHandle) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return,
        };
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    if h.is_finished() { break; }
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// StoreMany / CheckMany: one client connection, `count` operations one after another.
async fn many(
    a: &ClientArgs,
    peer: std::net::SocketAddr,
    count: usize,
    prefix: &str,
    store: bool,
) -> anyhow::Result<i32> {
    let cfg = Config {
        overlay: a.overlay.clone(),
        user: format!("{prefix}client"),
        ..Config::default()
    };
    let h = runtime::spawn(
        cfg,
        Role::Client { admitting: peer },
        identity::generate_seed(),
    )
    .await?;
    if let Err(e) = h.wait_joined(a.timeout).await {
        bail!("could not reach peer {peer}: {e}");
    }
    let started = Instant::now();
    let k = p2psip_algorithms::storage::KIND_USER_VALUE;
    let (mut ok, mut missing, mut wrong, mut failed) = (0usize, 0usize, 0usize, Vec::new());
    for i in 0..count {
        let name = format!("{prefix}{i}");
        let want = format!("value-of-{name}");
        let res = Id::hash_of(name.as_bytes());
        let outcome = if store {
            let writer = Identity::from_seed(name_seed(&name), name.clone());
            let (res, v) = build_value(&writer, &name, k, want.as_bytes(), runtime::now(), 3600);
            op(&h, a.timeout, move |n, t| n.store(t, res, k, vec![v], 0)).await
        } else {
            op(&h, a.timeout, move |n, t| n.fetch_kind(t, res, k)).await
        };
        match outcome {
            Ok(Event::Completed {
                outcome: Ok(body), ..
            }) => match body {
                Body::FetchAns(f) => {
                    let values = values_of(&f);
                    if values.is_empty() {
                        missing += 1;
                        failed.push(name);
                    } else if values.iter().any(|v| v == want.as_bytes()) {
                        ok += 1;
                    } else {
                        wrong += 1;
                        failed.push(name);
                    }
                }
                _ => ok += 1,
            },
            Ok(Event::Completed {
                outcome: Err(e), ..
            }) => {
                failed.push(format!("{name} ({e})"));
            }
            Ok(_) => failed.push(format!("{name} (unexpected event)")),
            Err(e) => failed.push(format!("{name} ({e})")),
        }
    }
    h.shutdown().await;
    let secs = started.elapsed().as_secs_f64();
    let what = if store { "stored" } else { "found intact" };
    if a.json {
        println!(
            "{}",
            json!({"ok": ok, "count": count, "missing": missing, "wrong": wrong, "failed": failed, "seconds": secs})
        );
    } else {
        println!("{what} {ok}/{count} in {secs:.2} s ({missing} missing, {wrong} wrong)");
        for f in failed.iter().take(10) {
            println!("  not ok: {f}");
        }
    }
    Ok(if ok == count { 0 } else { 5 })
}

/// Runs one client operation; returns the process exit status.
async fn client(a: ClientArgs) -> anyhow::Result<i32> {
    // Check the arguments before any network work.
    if let ClientOp::Store { kind, .. }
    | ClientOp::Fetch { kind, .. }
    | ClientOp::Stat { kind, .. }
    | ClientOp::Find { kind, .. } = &a.op
    {
        kind_of(kind)?;
    }
    let peer = runtime::resolve(&a.peer).await?;
    if let ClientOp::Bench {
        count,
        value_size,
        duration,
        window,
        probes,
        ready_timeout,
        check_peer,
    } = &a.op
    {
        let check_peer = match check_peer {
            Some(p) => Some(runtime::resolve(p).await?),
            None => None,
        };
        let cfg = Config {
            overlay: a.overlay.clone(),
            user: "bench".into(),
            ..Config::default()
        };
        let spec = p2psip_node::bench::BenchSpec {
            count: *count,
            value_size: *value_size,
            duration: *duration,
            window: *window,
            probes: *probes,
            ready_timeout: *ready_timeout,
            op_timeout: a.timeout,
            check_peer,
        };
        let out = p2psip_node::bench::run(cfg, peer, spec).await?;
        println!("{out}");
        return Ok(0);
    }
    if let ClientOp::AppEcho {
        node,
        message,
        rounds,
    } = &a.op
    {
        return app_echo(&a, peer, node, message, *rounds).await;
    }
    if let ClientOp::StoreMany { count, prefix } | ClientOp::CheckMany { count, prefix } = &a.op {
        return many(
            &a,
            peer,
            *count,
            prefix,
            matches!(a.op, ClientOp::StoreMany { .. }),
        )
        .await;
    }
    let name = match &a.op {
        ClientOp::Store { name, .. }
        | ClientOp::Fetch { name, .. }
        | ClientOp::Stat { name, .. }
        | ClientOp::Find { name, .. } => name.clone(),
        ClientOp::Ping { name } => name.clone().unwrap_or_default(),
        ClientOp::StoreMany { .. }
        | ClientOp::CheckMany { .. }
        | ClientOp::Bench { .. }
        | ClientOp::ConfigPush { .. }
        | ClientOp::AppEcho { .. } => String::new(),
    };
    let seed = match &a.identity {
        Some(p) => identity::read_seed(p)?,
        None => name_seed(&name),
    };
    let cfg = Config {
        overlay: a.overlay.clone(),
        user: name.clone(),
        security: client_security(&a),
        ..Config::default()
    };
    let writer = identity::credentials(&cfg, seed)?.identity;
    let started = Instant::now();
    let h = runtime::spawn(cfg, Role::Client { admitting: peer }, seed).await?;
    if let Err(e) = h.wait_joined(a.timeout).await {
        bail!("could not reach peer {peer}: {e}");
    }
    let (event, what) = match a.op {
        ClientOp::Store {
            kind,
            value,
            lifetime,
            ..
        } => {
            let k = kind_of(&kind)?;
            let (res, v) = build_value(
                &writer,
                &name,
                k,
                value.as_bytes(),
                runtime::now(),
                lifetime,
            );
            (
                op(&h, a.timeout, move |n, t| n.store(t, res, k, vec![v], 0)).await?,
                "store",
            )
        }
        ClientOp::Fetch { kind, .. } => {
            let k = kind_of(&kind)?;
            let res = Id::hash_of(name.as_bytes());
            (
                op(&h, a.timeout, move |n, t| n.fetch_kind(t, res, k)).await?,
                "fetch",
            )
        }
        ClientOp::Stat { kind, .. } => {
            let k = kind_of(&kind)?;
            let res = Id::hash_of(name.as_bytes());
            (
                op(&h, a.timeout, move |n, t| n.stat(t, res, k)).await?,
                "stat",
            )
        }
        ClientOp::Find { kind, .. } => {
            let k = kind_of(&kind)?;
            let res = Id::hash_of(name.as_bytes());
            (
                op(&h, a.timeout, move |n, t| n.find(t, res, vec![k])).await?,
                "find",
            )
        }
        ClientOp::StoreMany { .. }
        | ClientOp::CheckMany { .. }
        | ClientOp::Bench { .. }
        | ClientOp::AppEcho { .. } => bail!("handled above"),
        ClientOp::ConfigPush { file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let sequence = p2psip_node::overlay_config::sequence_of(&bytes)
                .with_context(|| format!("{}", file.display()))?;
            let to = h
                .status()
                .await?
                .routing
                .successors
                .first()
                .copied()
                .ok_or_else(|| anyhow::anyhow!("no admitting peer"))?;
            let update = p2psip_node::overlay_config::update_req(sequence, bytes);
            (
                op(&h, a.timeout, move |n, t| n.config_update(t, to, update)).await?,
                "config-push",
            )
        }
        ClientOp::Ping { name } => {
            let target = match name {
                Some(n) => Id::hash_of(n.as_bytes()),
                None => Id(rand::random()),
            };
            (
                op(&h, a.timeout, move |n, t| n.lookup(t, target)).await?,
                "ping",
            )
        }
    };
    h.shutdown().await;
    let Event::Completed {
        outcome,
        hops,
        latency,
        ..
    } = event
    else {
        bail!("unexpected answer");
    };
    let body = match outcome {
        Ok(b) => b,
        Err(e) => {
            if a.json {
                println!(
                    "{}",
                    json!({"ok": false, "error": e.code.as_str_name(), "info": e.info})
                );
            } else {
                eprintln!("{what} failed: {e}");
            }
            return Ok(2);
        }
    };
    let ms = latency.as_secs_f64() * 1000.0;
    let total_ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut code = 0;
    match body {
        Body::StoreAns(s) => {
            let k = s.kind_responses.first();
            let generation = k.map_or(0, |k| k.generation_counter);
            let replicas = k.map_or(0, |k| k.replicas.len());
            if a.json {
                println!(
                    "{}",
                    json!({"ok": true, "generation": generation, "replicas": replicas, "hops": hops, "ms": ms})
                );
            } else {
                println!("stored {name} (generation {generation}, {replicas} replicas, {hops} hops, {ms:.1} ms; {total_ms:.0} ms with connection set-up)");
            }
        }
        Body::FetchAns(f) => {
            let values = values_of(&f);
            if values.is_empty() {
                code = 4;
            }
            if a.json {
                println!(
                    "{}",
                    json!({"ok": true, "values": values_json(&values), "hops": hops, "ms": ms})
                );
            } else if values.is_empty() {
                println!("no value under {name}");
            } else {
                for v in &values {
                    println!("{}", String::from_utf8_lossy(v));
                }
            }
        }
        Body::StatAns(s) => {
            let metas: Vec<_> = s
                .kind_responses
                .iter()
                .flat_map(|k| k.values.iter())
                .map(|m| json!({"length": m.value_length, "sha256": hex::encode(&m.hash), "storage_time_ms": m.storage_time, "lifetime_s": m.lifetime}))
                .collect();
            if metas.is_empty() {
                code = 4;
            }
            if a.json {
                println!("{}", json!({"ok": true, "values": metas}));
            } else {
                for m in metas {
                    println!("{m}");
                }
            }
        }
        Body::FindAns(f) => {
            let closest = f
                .results
                .first()
                .and_then(|r| Id::from_slice(&r.closest))
                .map(|i| format!("{i:#}"));
            if a.json {
                println!("{}", json!({"ok": true, "closest": closest}));
            } else {
                println!("{}", closest.unwrap_or_else(|| "none".into()));
            }
        }
        Body::ConfigUpdateAns(_) => {
            if a.json {
                println!("{}", json!({"ok": true}));
            } else {
                println!("configuration document handed to the admitting peer (its log and p2psip_overlay_config_sequence tell whether it took it)");
            }
        }
        Body::PingAns(_) => {
            if a.json {
                println!("{}", json!({"ok": true, "hops": hops, "ms": ms}));
            } else {
                println!("pong ({hops} hops, {ms:.1} ms)");
            }
        }
        other => println!("{other:?}"),
    }
    Ok(code)
}

/// `p2psip client app-echo`: an application connection to a node's echo service.
async fn app_echo(
    a: &ClientArgs,
    peer: SocketAddr,
    node: &str,
    message: &str,
    rounds: usize,
) -> anyhow::Result<i32> {
    let to = p2psip_node::cli_ops::parse_node_id(node)?;
    let cfg = Config {
        overlay: a.overlay.clone(),
        user: "echo".into(),
        security: client_security(a),
        ..Config::default()
    };
    let seed = match &a.identity {
        Some(p) => identity::read_seed(p)?,
        None => identity::generate_seed(),
    };
    let h = runtime::spawn(cfg, Role::Client { admitting: peer }, seed).await?;
    if let Err(e) = h.wait_joined(a.timeout).await {
        bail!("could not reach peer {peer}: {e}");
    }
    // Our reflexive address goes in the AppAttach, so that a NATed callee punches towards
    // it: wait (briefly) for the admitting peer to report it.
    let until = Instant::now() + Duration::from_secs(2);
    while h.status().await?.reflexive.is_none() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let res = tokio::time::timeout(
        a.timeout,
        p2psip_node::echo::call(&h.client(), to, message.as_bytes(), rounds),
    )
    .await
    .unwrap_or_else(|_| Err(anyhow::anyhow!("no echo within {:?}", a.timeout)));
    let st = h.status().await.ok();
    h.shutdown().await;
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    match res {
        Ok(r) => {
            let rtts: Vec<f64> = r.rounds.iter().map(|d| ms(*d)).collect();
            if a.json {
                println!(
                    "{}",
                    json!({"ok": true, "path": r.path.as_str(), "connect_ms": ms(r.connect),
                           "rtt_ms": rtts, "reflexive": st.as_ref().and_then(|s| s.reflexive).map(|x| x.to_string()),
                           "behind_nat": st.as_ref().and_then(|s| s.behind_nat)})
                );
            } else {
                println!(
                    "echo from {to} ({} path): connection {:.1} ms, round trips {rtts:?} ms",
                    r.path.as_str(),
                    ms(r.connect)
                );
            }
            Ok(0)
        }
        Err(e) => {
            if a.json {
                println!("{}", json!({"ok": false, "error": format!("{e:#}")}));
            } else {
                eprintln!("app-echo failed: {e:#}");
            }
            Ok(2)
        }
    }
}

async fn op(
    h: &NodeHandle,
    limit: Duration,
    f: impl FnOnce(
            &mut p2psip_algorithms::OverlayNode,
            p2psip_algorithms::Time,
        ) -> p2psip_algorithms::OpId
        + Send
        + 'static,
) -> anyhow::Result<Event> {
    tokio::time::timeout(limit, h.op(f))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {limit:?}"))?
}

/// The `[security]` of a client from its flags.
fn client_security(a: &ClientArgs) -> p2psip_node::config::SecuritySection {
    p2psip_node::config::SecuritySection {
        ca: a.ca.clone(),
        certificate: a.certificate.clone(),
        ..Default::default()
    }
}

async fn devnet(a: DevnetArgs) -> anyhow::Result<()> {
    init_logs(
        a.log.log_format.as_deref().unwrap_or("human"),
        a.log.log_level.as_deref().unwrap_or("warn"),
    );
    if a.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let metrics_addr: SocketAddr = a.metrics.parse().context("--metrics")?;
    let metrics_addr = metrics::install(metrics_addr).await?;
    let base = Config {
        algorithm: a.algorithm.clone(),
        overlay: "devnet.p2psip".into(),
        ..Config::default()
    };
    base.validate()?;
    println!(
        "p2psip devnet: starting {} peers ({}) on 127.0.0.1",
        a.nodes, a.algorithm
    );
    let t0 = Instant::now();
    let mut nodes: Vec<NodeHandle> = Vec::new();
    for i in 0..a.nodes {
        let port = if a.base_port == 0 {
            0
        } else {
            a.base_port.saturating_add(i as u16)
        };
        let cfg = Config {
            listen: format!("127.0.0.1:{port}"),
            bootstrap: nodes
                .first()
                .map(|n| vec![n.addr.to_string()])
                .unwrap_or_default(),
            ..base.clone()
        };
        let h = runtime::spawn(cfg, Role::Peer, identity::generate_seed()).await?;
        h.wait_joined(Duration::from_secs(20)).await?;
        nodes.push(h);
    }
    // Wait for a consistent ring: each peer's first successor is the next id.
    let mut ids: Vec<Id> = nodes.iter().map(|n| n.id).collect();
    ids.sort();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut ok = true;
        for n in &nodes {
            let st = n.status().await?;
            let k = ids.iter().position(|x| *x == n.id).unwrap_or(0);
            let want = ids[(k + 1) % ids.len()];
            if ids.len() > 1 && st.routing.successors.first() != Some(&want) {
                ok = false;
            }
        }
        if ok || Instant::now() > deadline {
            println!(
                "  {} peers joined, ring {} after {:.1?}",
                nodes.len(),
                if ok { "consistent" } else { "still converging" },
                t0.elapsed()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut front_ends = Vec::new();
    let sip_auth = match (&a.sip, &a.sip_users) {
        (None, _) => None,
        (Some(_), Some(f)) => Some(p2psip_node::sip::auth::Users::load(f)?),
        (Some(_), None) => {
            let mut users = p2psip_node::sip::auth::Users::default();
            println!("  SIP users (digest realm {DEVNET_DOMAIN}):");
            for u in 0..10 {
                let pw = hex::encode(rand::random::<[u8; 6]>());
                users.insert_password(&format!("user{u}"), DEVNET_DOMAIN, &pw);
                println!("    user{u}@{DEVNET_DOMAIN}  password {pw}");
            }
            Some(users)
        }
    }
    .map(|users| {
        std::sync::Arc::new(p2psip_node::sip::auth::Authenticator::new(
            DEVNET_DOMAIN,
            users,
            // What baresip 1.0 and SIPp answer (config.rs, sip.digest_algorithms).
            vec![p2psip_node::sip::auth::Algorithm::Md5],
        ))
    });
    if let Some(sip_base) = a.sip {
        for (i, n) in nodes.iter().enumerate() {
            let port = if sip_base == 0 {
                0
            } else {
                sip_base.saturating_add(i as u16)
            };
            let mut s = p2psip_node::sip::SipSettings::from_config(
                &p2psip_node::config::SipSection {
                    enabled: true,
                    listen: format!("127.0.0.1:{port}"),
                    domain: DEVNET_DOMAIN.into(),
                    auth: false,
                    // Every SIPp and phone here is 127.0.0.1: no per-address rate.
                    requests_per_s_per_source: 0,
                    ..Default::default()
                },
                n.advertised,
            )?;
            s.auth = sip_auth.clone();
            let fe = p2psip_node::sip::start(n.client(), s).await?;
            println!("  SIP front-end of peer {} on udp/tcp {}", n.id, fe.addr);
            front_ends.push(fe);
        }
    }
    for n in &nodes {
        let st = n.status().await?;
        println!(
            "    peer {} at {}  successor {}  predecessor {}",
            n.id,
            n.addr,
            st.routing
                .successors
                .first()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            st.routing
                .predecessors
                .first()
                .map(|s| s.to_string())
                .unwrap_or_default()
        );
    }
    // Sample SIP users: registered at the front-ends when there are some (real bindings,
    // a stand-in phone answering them), else stored directly as SIP-REGISTRATION values;
    // each looked up through another peer.
    let kind = kind_of("sip-registration")?;
    let mut stored = 0;
    let mut store_ms = Vec::new();
    let sample_phone = if front_ends.is_empty() {
        None
    } else {
        Some(p2psip_node::sip::sample::spawn().await?)
    };
    for u in 0..a.users {
        let user = format!("sample{u}");
        let aor = format!("sip:{user}@{DEVNET_DOMAIN}");
        let started = Instant::now();
        let ok = match &sample_phone {
            Some((phone, _)) => {
                let contact = format!("sip:{user}@{phone}");
                match front_ends[u % front_ends.len()]
                    .register_device(&user, &contact, 3600)
                    .await
                {
                    Ok(()) => true,
                    Err(e) => {
                        println!("  register {aor}: {e:#}");
                        false
                    }
                }
            }
            None => {
                let via = &nodes[u % nodes.len()];
                let value = p2psip_proto::pb::SipRegistration {
                    target: Some(p2psip_proto::pb::sip_registration::Target::Destination(
                        p2psip_proto::pb::SipDestination {
                            node: via.id.to_bytes().to_vec(),
                            contact: format!("sip:{user}@127.0.0.1:{}", 5060 + u),
                            expires_at: (runtime::now().0 / 1000).saturating_add(3_600_000),
                            ..Default::default()
                        },
                    )),
                };
                let who = p2psip_node::sip::identities::derived(&identity::generate_seed(), &aor);
                let (res, v) = build_value(
                    &who,
                    &aor,
                    kind,
                    &prost::Message::encode_to_vec(&value),
                    runtime::now(),
                    3600,
                );
                match via
                    .op(move |n, t| n.store(t, res, kind, vec![v], 0))
                    .await?
                {
                    Event::Completed { outcome: Ok(_), .. } => true,
                    Event::Completed {
                        outcome: Err(e), ..
                    } => {
                        println!("  register {aor}: {e}");
                        false
                    }
                    _ => false,
                }
            }
        };
        if ok {
            stored += 1;
            store_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let mut found = 0;
    let mut fetch_ms = Vec::new();
    let mut hops_sum = 0;
    for u in 0..a.users {
        let aor = format!("sip:sample{u}@{DEVNET_DOMAIN}");
        let res = Id::hash_of(aor.as_bytes());
        let via = &nodes[(u + 1 + nodes.len() / 2) % nodes.len()];
        if let Event::Completed {
            outcome: Ok(Body::FetchAns(f)),
            latency,
            hops,
            ..
        } = via.op(move |n, t| n.fetch_kind(t, res, kind)).await?
        {
            let contact = values_of(&f).iter().find_map(|v| {
                match prost::Message::decode(v.as_slice()) {
                    Ok(p2psip_proto::pb::SipRegistration {
                        target: Some(p2psip_proto::pb::sip_registration::Target::Destination(d)),
                    }) => Some(d.contact),
                    _ => None,
                }
            });
            if let Some(contact) = contact {
                found += 1;
                hops_sum += hops;
                fetch_ms.push(latency.as_secs_f64() * 1000.0);
                if u < 3 {
                    println!(
                        "    {aor} -> {contact} (via peer {}, {hops} hops, {:.2} ms)",
                        via.id,
                        latency.as_secs_f64() * 1000.0
                    );
                }
            }
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    println!(
        "  registered {stored}/{} SIP users (median store {:.2} ms); found {found}/{} through other peers (median fetch {:.2} ms, mean {:.2} hops)",
        a.users,
        med(&mut store_ms),
        a.users,
        med(&mut fetch_ms),
        hops_sum as f64 / found.max(1) as f64
    );
    if a.users > 0 && front_ends.len() > 1 {
        // A call to a sample user through a front-end that does not hold its binding.
        let fe = front_ends[front_ends.len() - 1].addr;
        match devnet_call(fe, "sample0").await {
            Ok(answer) => println!("  call sip:sample0@{DEVNET_DOMAIN} through {fe}: {answer} (the sample phone's answer)"),
            Err(e) => println!("  call sip:sample0@{DEVNET_DOMAIN} through {fe}: {e:#}"),
        }
    }
    println!("  metrics: http://{metrics_addr}/metrics");
    println!("  try: cargo run --release -p p2psip-node --bin p2psip -- client --peer {} --overlay devnet.p2psip fetch sip:sample0@{DEVNET_DOMAIN} --kind sip-registration", nodes[0].addr);
    if let Some(fe) = front_ends.first() {
        println!(
            "  phones: account <sip:user0@{DEVNET_DOMAIN}>;outbound=\"sip:{}\";auth_pass=PASSWORD (baresip); call sip:sample0@{DEVNET_DOMAIN} (answers 486 Busy Here)",
            fe.addr
        );
    }
    match a.duration {
        Some(d) => {
            println!("  running for {d:?}");
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        None => {
            println!("  running until Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    println!("  stopping: every peer leaves gracefully");
    for n in nodes {
        n.shutdown().await;
    }
    if found < a.users || stored < a.users {
        bail!(
            "devnet: {} registrations stored, {} found of {}",
            stored,
            found,
            a.users
        );
    }
    Ok(())
}
