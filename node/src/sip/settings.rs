//! The front-end's settings, from the `[sip]` table.

use super::*;

/// Settings of the front-end (the `[sip]` table of the node's configuration).
#[derive(Debug, Clone)]
pub struct SipSettings {
    /// UDP and TCP address the front-end listens on.
    pub listen: SocketAddr,
    /// The address put in our Via and Record-Route headers (how UAs and other nodes reach
    /// us); the listen address when it is specified.
    pub advertise: SocketAddr,
    /// Domain of AORs whose request URI names a host by IP address (a UA that sends to a
    /// node's address): `sip:alice@10.0.0.5` is `sip:alice@<domain>`.
    pub domain: String,
    pub max_expires: u32,
    pub min_expires: u32,
    /// Digest authentication of REGISTER (None: anyone may register any AOR).
    pub auth: Option<Arc<Authenticator>>,
    /// Also challenge initial INVITE, MESSAGE and SUBSCRIBE from users of the domain (407).
    pub auth_requests: bool,
    /// TCP connections at once, in all and per IP address (0: no limit).
    pub tcp_max: usize,
    pub tcp_max_per_ip: usize,
    /// A TCP connection idle this long without a registration over it is closed.
    pub tcp_idle: Duration,
    /// Requests a second from one IP address (0: no limit), and handled at once.
    pub requests_per_s: u32,
    pub max_in_flight: usize,
    /// Proxies in front: no per-address rate or failure limit for them.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// RFC 5626 Flow-Timer sent to phones registering outbound flows straight to us:
    /// how often they send keep-alives, seconds (0: not sent, phones use their defaults).
    pub flow_timer: u32,
    /// Keys and CA certificates of the users (`<user>.key`, `<user>.pem`), signing their
    /// registrations in an enrolled overlay (None: keys derived from the node's key).
    pub user_certificates: Option<std::path::PathBuf>,
}

impl SipSettings {
    /// From the `[sip]` table; an unspecified listen IP is advertised as the node's own
    /// advertised IP.
    pub fn from_config(
        c: &crate::config::SipSection,
        node_advertised: Option<SocketAddr>,
    ) -> Result<Self, SipError> {
        let listen: SocketAddr = c
            .listen
            .parse()
            .map_err(|e| SipError::Setting(format!("sip.listen {:?}: {e}", c.listen)))?;
        let mut advertise = listen;
        if listen.ip().is_unspecified() {
            let ip = node_advertised.map(|a| a.ip()).ok_or_else(|| {
                SipError::Setting(
                    "sip.listen is unspecified and the node has no address to advertise".into(),
                )
            })?;
            advertise.set_ip(ip);
        }
        let domain = c.domain.to_ascii_lowercase();
        let trusted_proxies = c
            .trusted_proxies
            .iter()
            .map(|a| {
                a.parse::<std::net::IpAddr>().map_err(|e| {
                    SipError::Setting(format!(
                        "sip.trusted_proxies: {a:?} is not an IP address: {e}"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let auth = if c.auth {
            let Some(file) = &c.users_file else {
                setting!(
                    "sip.auth is on (the default) and sip.users_file is not set: write one with \
                     `p2psip sip add-user FILE USER --realm {domain}`, or set sip.auth = false \
                     (then anyone who reaches the front-end can register any AOR)"
                );
            };
            let users = auth::Users::load(std::path::Path::new(file))?;
            Some(Arc::new(
                Authenticator::new(
                    &domain,
                    users,
                    auth::parse_algorithms(&c.digest_algorithms)?,
                )
                .with_trusted_proxies(trusted_proxies.clone()),
            ))
        } else {
            None
        };
        Ok(SipSettings {
            listen,
            advertise,
            domain,
            max_expires: c.max_expires_s,
            min_expires: c.min_expires_s,
            auth_requests: c.auth_requests,
            auth,
            tcp_max: c.tcp_max_connections,
            tcp_max_per_ip: c.tcp_max_connections_per_ip,
            tcp_idle: Duration::from_secs(c.tcp_idle_timeout_s.max(1)),
            requests_per_s: c.requests_per_s_per_source,
            max_in_flight: c.max_requests_in_flight.max(1),
            trusted_proxies,
            flow_timer: c.flow_timer_s,
            user_certificates: c.user_certificates.as_ref().map(std::path::PathBuf::from),
        })
    }
}
