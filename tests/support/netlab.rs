//! Hosts made of Linux network namespaces: each host is a namespace with its own address on
//! one bridge (itself in a namespace of its own, so nothing touches the machine's network),
//! joined by a veth pair whose switch end can be set down to cut the host off.
//!
//! Needs root and iproute2's `ip`; [`Lab::start`] returns why not otherwise, for the test to
//! print and skip. Namespace names carry the test process's id and a random tag, so concurrent
//! runs never collide. Everything is removed when the [`Lab`] drops (the processes first, then
//! the namespaces, which takes their veths with them), also when the test panics; namespaces a
//! killed run left behind are removed by the next run (their process id is gone).

use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::ha_support::Proc;

/// Every lab's namespace names start with this.
const PREFIX: &str = "cohlab";
/// The lab's subnet; namespaces isolate it from everything else.
const SUBNET: &str = "10.240.0";

/// One host: a namespace with one address.
pub(crate) struct Host {
    pub(crate) name: String,
    pub(crate) ns: String,
    pub(crate) ip: String,
    /// The veth end in the switch namespace.
    port: String,
}

/// A set of hosts on one bridge, and the processes running on them.
pub(crate) struct Lab {
    tag: String,
    switch: String,
    hosts: Vec<Host>,
    procs: Vec<Proc>,
}

impl Lab {
    /// Creates one host per `(name, last address byte)`, or says why it cannot.
    pub(crate) fn start(hosts: &[(&str, u8)]) -> Result<Lab, String> {
        if !is_root() {
            return Err("not root: network namespaces need CAP_SYS_ADMIN (CI runs as root)".into());
        }
        if Command::new("ip")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Err("iproute2's `ip` is not installed (scripts/test.sh installs it)".into());
        }
        remove_stale();
        let tag = format!(
            "{PREFIX}-{}-{:04x}",
            std::process::id(),
            rand::random::<u16>()
        );
        let switch = format!("{tag}-sw");
        let mut lab = Lab {
            tag: tag.clone(),
            switch: switch.clone(),
            hosts: Vec::new(),
            procs: Vec::new(),
        };
        // From here on, a failure drops `lab`, which removes what was made.
        ip(&["netns", "add", &switch])?;
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        for (i, (name, last)) in hosts.iter().enumerate() {
            let ns = format!("{tag}-{name}");
            let port = format!("p{i}");
            let addr = format!("{SUBNET}.{last}");
            ip(&["netns", "add", &ns])?;
            lab.hosts.push(Host {
                name: (*name).to_owned(),
                ns: ns.clone(),
                ip: addr.clone(),
                port: port.clone(),
            });
            ip(&[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &switch,
            ])?;
            ip(&["-n", &switch, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &switch, "link", "set", &port, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name} in the lab"))
    }

    /// The address of host `name`.
    pub(crate) fn ip(&self, name: &str) -> String {
        self.host(name).ip.clone()
    }

    /// `program args` on host `name`, with `env`.
    pub(crate) fn command(
        &self,
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(String, String)],
    ) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host(name).ns])
            .arg(program)
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts `program args` on host `name` (it lives as long as the lab); returns its index
    /// for [`proc`](Self::proc).
    pub(crate) fn spawn(
        &mut self,
        name: &str,
        label: &str,
        program: &Path,
        args: &[&str],
        env: &[(String, String)],
    ) -> usize {
        let cmd = self.command(name, program, args, env);
        // `ip netns exec` execs the program: the child's pid is the program's.
        self.procs.push(Proc::spawn(label, cmd));
        self.procs.len() - 1
    }

    pub(crate) fn proc(&self, index: usize) -> &Proc {
        &self.procs[index]
    }

    /// Runs `program args` on host `name` to completion.
    pub(crate) fn run(
        &self,
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(String, String)],
    ) -> Output {
        self.command(name, program, args, env)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} on {name}: {e}", program.display()))
    }

    /// Cuts host `name` off the network: its port on the bridge goes down.
    pub(crate) fn cut(&self, name: &str) {
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &self.host(name).port,
            "down",
        ])
        .unwrap();
    }

    /// Puts host `name` back on the network.
    pub(crate) fn heal(&self, name: &str) {
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &self.host(name).port,
            "up",
        ])
        .unwrap();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The processes first (SIGKILL, reaped), so that nothing holds a namespace.
        self.procs.clear();
        for host in &self.hosts {
            let _ = ip(&["netns", "del", &host.ns]);
        }
        let _ = ip(&["netns", "del", &self.switch]);
        eprintln!("network lab {} removed", self.tag);
    }
}

/// Runs `ip args`; the error says what failed and what `ip` printed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// Removes the namespaces of labs whose test process is gone (killed before it could clean).
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing network namespace {name}, left by a run that was killed");
            let _ = ip(&["netns", "del", name]);
        }
    }
}
