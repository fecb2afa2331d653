//! Debian's linphonec (linphone-cli) as a test phone: its own HOME (its database lives
//! there), a linphonerc with one account, menu commands written to its stdin.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

/// Whether linphonec can run here; in CI its absence fails the test (`.ci/run` installs
/// linphone-cli), elsewhere the caller skips.
pub fn available() -> bool {
    if Command::new("linphonec").arg("-v").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "linphonec is not installed (.ci/run installs linphone-cli)"
    );
    eprintln!("linphonec not installed: test skipped");
    false
}

/// A running linphonec.
pub struct Linphone {
    child: Child,
    stdin: Option<ChildStdin>,
    out: PathBuf,
    log: PathBuf,
}

impl Linphone {
    /// linphonec in `dir/name` registered as `sip:USER@DOMAIN` with `password` through
    /// `proxy` (also its outbound proxy: `reg_route`, what linphone's "outbound proxy" box
    /// sets), answering calls by itself (`-a`), its defaults otherwise.
    pub fn start(
        dir: &Path,
        name: &str,
        user: &str,
        domain: &str,
        password: &str,
        proxy: SocketAddr,
    ) -> Linphone {
        let home = dir.join(name);
        std::fs::create_dir_all(home.join(".local/share/linphone")).unwrap();
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let rc = home.join("linphonerc");
        std::fs::write(
            &rc,
            format!(
                "[sip]\nsip_port={port}\nsip_tcp_port=0\n\
                 [proxy_0]\nreg_proxy=<sip:{proxy}>\nreg_route=<sip:{proxy};lr>\nreg_identity=sip:{user}@{domain}\n\
                 reg_expires=600\nreg_sendregister=1\n\
                 [auth_info_0]\nusername={user}\npasswd={password}\nrealm={domain}\ndomain={domain}\n"
            ),
        )
        .unwrap();
        let out = home.join("out.log");
        let log = home.join("linphone.log");
        let mut child = Command::new("linphonec")
            .arg("-c")
            .arg(&rc)
            .args(["-a", "-d", "6", "-l"])
            .arg(&log)
            .env("HOME", &home)
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        Linphone {
            child,
            stdin,
            out,
            log,
        }
    }

    /// Types a command (`call sip:bob@p2psip`, `terminate`, `quit`).
    pub fn command(&mut self, cmd: &str) {
        if let Some(s) = self.stdin.as_mut() {
            let _ = writeln!(s, "{cmd}");
            let _ = s.flush();
        }
    }

    /// What it printed (its menu's messages).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Its SIP log (every message it sent and received).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_output(&self, text: &str, limit: Duration) -> bool {
        super::eventually(limit, || self.output().contains(text).then_some(())).is_some()
    }

    pub fn wait_log(&self, text: &str, limit: Duration) -> bool {
        super::eventually(limit, || self.log().contains(text).then_some(())).is_some()
    }
}

impl Drop for Linphone {
    fn drop(&mut self) {
        self.command("quit");
        self.stdin = None;
        let done = super::eventually(Duration::from_secs(5), || {
            self.child.try_wait().ok().flatten()
        });
        if done.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
