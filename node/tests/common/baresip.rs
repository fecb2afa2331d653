//! Debian's baresip as a test phone: a configuration directory per phone (its default
//! modules, uuid included; audio through aubridge, no sound device), run for a while,
//! its output kept for the assertions.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Whether baresip can run here; in CI its absence fails the test (`.ci/run` installs
/// baresip-core), elsewhere the caller skips.
pub fn available() -> bool {
    if Command::new("baresip").arg("-h").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "baresip is not installed (.ci/run installs baresip-core)"
    );
    eprintln!("baresip not installed: test skipped");
    false
}

/// A port for a phone's `sip_listen`: baresip binds UDP and TCP there and TLS one above,
/// so all three must be free.
fn free_phone_port() -> u16 {
    for _ in 0..100 {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = u.local_addr().unwrap().port();
        if p < u16::MAX
            && TcpListener::bind(("127.0.0.1", p)).is_ok()
            && TcpListener::bind(("127.0.0.1", p + 1)).is_ok()
        {
            return p;
        }
    }
    panic!("no free port pair for a phone");
}

/// A phone: its configuration directory and its output file.
pub struct Phone {
    pub dir: PathBuf,
    pub out: PathBuf,
    child: Option<Child>,
    /// The network namespace it runs in (None: this host's).
    netns: Option<String>,
}

impl Phone {
    /// A phone in `dir/name` with the account line `account` (baresip's `accounts` file:
    /// `<sip:alice@DOMAIN>;outbound="sip:FRONT-END";auth_pass=...`), on 127.0.0.1.
    pub fn new(dir: &Path, name: &str, account: &str) -> Phone {
        Phone::configured(
            dir,
            name,
            account,
            &format!("127.0.0.1:{}", free_phone_port()),
        )
    }

    /// A phone like [`Phone::new`] run inside network namespace `netns` (a test's own),
    /// listening on `ip` there.
    pub fn in_netns(dir: &Path, name: &str, account: &str, netns: &str, ip: &str) -> Phone {
        let mut p = Phone::configured(dir, name, account, &format!("{ip}:5060"));
        p.netns = Some(netns.to_string());
        p
    }

    fn configured(dir: &Path, name: &str, account: &str, listen: &str) -> Phone {
        let conf = dir.join(name);
        std::fs::create_dir_all(&conf).unwrap();
        let ip = listen.rsplit_once(':').map_or(listen, |(ip, _)| ip);
        std::fs::write(conf.join("accounts"), format!("{account}\n")).unwrap();
        std::fs::write(
            conf.join("config"),
            format!(
                "sip_listen {listen}\nnet_interface {ip}\n\
                 audio_player aubridge,nil\naudio_source aubridge,nil\n\
                 module_path /usr/lib/baresip/modules\nmodule g711.so\nmodule uuid.so\n\
                 module account.so\nmodule aubridge.so\nmodule_app menu.so\n"
            ),
        )
        .unwrap();
        Phone {
            out: conf.join("out.log"),
            dir: conf,
            child: None,
            netns: None,
        }
    }

    /// Starts baresip for `secs` seconds (it unregisters and hangs up on the way out),
    /// typing `commands` (menu commands such as `/dial sip:alice@p2psip`) at start.
    pub fn start(&mut self, secs: u32, commands: &[&str]) {
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "baresip"]);
                c
            }
            None => Command::new("baresip"),
        };
        c.arg("-f").arg(&self.dir).args(["-t", &secs.to_string()]);
        for cmd in commands {
            c.args(["-e", cmd]);
        }
        let log = std::fs::File::create(&self.out).unwrap();
        self.child = Some(
            c.stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Waits until its output contains `text`, at most `limit`.
    pub fn wait_for(&self, text: &str, limit: Duration) -> bool {
        super::eventually(limit, || self.output().contains(text).then_some(())).is_some()
    }

    /// Waits for it to quit (at most `limit`, then kills it); returns its output.
    pub fn finish(&mut self, limit: Duration) -> String {
        if let Some(mut c) = self.child.take() {
            let done = super::eventually(limit, || c.try_wait().ok().flatten());
            if done.is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.output()
    }

    /// Runs it for `secs` seconds and returns its output.
    pub fn run(&mut self, secs: u32, commands: &[&str]) -> String {
        self.start(secs, commands);
        self.finish(Duration::from_secs(u64::from(secs) + 10))
    }
}

impl Drop for Phone {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
