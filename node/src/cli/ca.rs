//! `p2psip ca`: the offline overlay CA (keys, certificates, revocation, the configuration document).

use super::{LogArgs, PasswordArgs};
use crate::identity;
use anyhow::{bail, Context};
use clap::Subcommand;
use p2psip_proto::security::Identity;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Subcommand)]
pub(crate) enum CaCmd {
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

pub(crate) fn run(c: CaCmd) -> anyhow::Result<()> {
    use crate::ca;
    match c {
        CaCmd::Init { dir, overlay, days } => {
            let cert = ca::ca_init(&dir, &overlay, days)?;
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
                (None, Some(h)) => ca::parse_public_key(&h)
                    .ok_or_else(|| anyhow::anyhow!("--public-key: 64 hex digits"))?,
                (None, None) => bail!("--identity or --public-key is required"),
            };
            let node_id = node_id.map(|h| crate::ops::parse_node_id(&h)).transpose()?;
            let issued = ca::ca_issue(&dir, &user, &key, node_id, days, backdate_days)?;
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
            let signed = crate::overlay_config::sign(&dir, &text)
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
            let f = crate::ca::enrollment::add_user(&dir, &user, &pw)?;
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
                users.extend(crate::sip::auth::Users::load(f)?.names(&domain));
            }
            users.sort();
            users.dedup();
            for done in crate::sip::identities::issue(&dir, &domain, &users, &out, days, renew)? {
                match done {
                    crate::sip::identities::SipUserIssued::Issued { aor, issued } => {
                        println!(
                            "{aor} issued node_id {:#} serial {} not_after {}",
                            issued.node_id, issued.serial, issued.not_after
                        )
                    }
                    crate::sip::identities::SipUserIssued::Kept { aor } => {
                        println!("{aor} kept (has a certificate; --renew replaces it)")
                    }
                }
            }
            println!("sip.user_certificates = {:?}", out.display().to_string());
        }
        CaCmd::Serve { .. } => bail!("handled in main"),
        CaCmd::Revoke { dir, serial } => {
            let list = ca::ca_revoke(&dir, &serial)?;
            println!(
                "revoked {serial}: {} (nodes read it as security.revoked)",
                list.display()
            );
        }
    }
    Ok(())
}
