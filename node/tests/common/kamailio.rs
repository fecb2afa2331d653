//! Debian's Kamailio as the SIP proxy in front of front-ends: a dispatcher over them with
//! OPTIONS health checks, Path on REGISTER (RFC 3327), record-routing; its control socket
//! for `kamcmd`. Killed on drop.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Whether kamailio can run here; in CI its absence fails the test (`.ci/run` installs
/// kamailio), elsewhere the caller skips.
pub fn available() -> bool {
    if Command::new("kamailio").arg("-v").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "kamailio is not installed (.ci/run installs kamailio)"
    );
    eprintln!("kamailio not installed: test skipped");
    false
}

pub struct Kamailio {
    child: Child,
    pub addr: SocketAddr,
    ctl: PathBuf,
    pub log: PathBuf,
}

const MODULES: &str = "/usr/lib/x86_64-linux-gnu/kamailio/modules/";

impl Kamailio {
    /// Kamailio on 127.0.0.1 in `dir`, dispatching to `front_ends` (by Call-ID hash: a
    /// front-end checks the nonces it issued) after OPTIONS pings every second.
    pub fn start(dir: &Path, front_ends: &[SocketAddr]) -> Kamailio {
        std::fs::create_dir_all(dir).unwrap();
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let list = dir.join("dispatcher.list");
        let lines: Vec<String> = front_ends.iter().map(|f| format!("1 sip:{f}")).collect();
        std::fs::write(&list, lines.join("\n") + "\n").unwrap();
        let ctl = dir.join("kamailio.ctl");
        let cfg = dir.join("kamailio.cfg");
        std::fs::write(
            &cfg,
            format!(
                r#"#!KAMAILIO
debug=2
log_stderror=yes
children=2
listen=udp:{addr}
mpath="{MODULES}"
loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "path.so"
loadmodule "ctl.so"
loadmodule "dispatcher.so"
modparam("ctl", "binrpc", "unix:{ctl}")
modparam("dispatcher", "list_file", "{list}")
modparam("dispatcher", "ds_ping_interval", 1)
modparam("dispatcher", "ds_probing_mode", 1)
modparam("dispatcher", "ds_ping_from", "sip:dispatcher@kamailio.test")
modparam("dispatcher", "ds_probing_threshold", 1)
modparam("dispatcher", "ds_inactive_threshold", 1)
request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    if (loose_route()) {{
        xlog("L_INFO", "kamailio: routed $rm to $ru\n");
        if (!has_totag()) {{ record_route(); }}
        t_relay();
        exit;
    }}
    if (has_totag()) {{
        if (is_method("ACK") && t_check_trans()) {{ t_relay(); }}
        exit;
    }}
    # From a front-end, to a phone (its Path named us, and loose_route() consumed that
    # Route): on to the Request-URI.
    if (ds_is_from_list("1")) {{
        xlog("L_INFO", "kamailio: routed $rm to $ru\n");
        record_route();
        t_relay();
        exit;
    }}
    if (is_method("REGISTER")) {{ add_path(); }} else {{ record_route(); }}
    if (!ds_select_dst("1", "0")) {{ sl_send_reply("503", "No front-end up"); exit; }}
    xlog("L_INFO", "kamailio: dispatched $rm for $ru to $du (Route: $hdr(Route), Path: $hdr(Path))\n");
    t_relay();
}}
"#,
                ctl = ctl.display(),
                list = list.display()
            ),
        )
        .unwrap();
        let log = dir.join("kamailio.log");
        let child = Command::new("kamailio")
            .arg("-f")
            .arg(&cfg)
            .args(["-DD", "-E"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Kamailio {
            child,
            addr,
            ctl,
            log,
        }
    }

    /// `kamcmd dispatcher.list`: each destination with its flags (AP: active and probed;
    /// IP / TP: inactive or being retried).
    pub fn destinations(&self) -> Vec<(String, String)> {
        let out = Command::new("kamcmd")
            .arg("-s")
            .arg(format!("unix:{}", self.ctl.display()))
            .arg("dispatcher.list")
            .output();
        let Ok(out) = out else { return Vec::new() };
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut uri = None;
        let mut v = Vec::new();
        for l in text.lines().map(str::trim) {
            if let Some(u) = l.strip_prefix("URI: ") {
                uri = Some(u.to_string());
            } else if let (Some(f), Some(u)) = (l.strip_prefix("FLAGS: "), uri.take()) {
                v.push((u, f.to_string()));
            }
        }
        v
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until every destination is active (AP), at most `limit`.
    pub fn all_up(&self, n: usize, limit: Duration) -> bool {
        super::eventually(limit, || {
            let d = self.destinations();
            (d.len() == n && d.iter().all(|(_, f)| f.starts_with('A'))).then_some(())
        })
        .is_some()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        // kamailio -DD runs its children in its process group; SIGTERM to the main
        // process stops them all.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let done = super::eventually(Duration::from_secs(5), || {
            self.child.try_wait().ok().flatten()
        });
        if done.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
