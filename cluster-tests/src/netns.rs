//! A throwaway network namespace with nftables rules, for partition tests (needs root, `ip`
//! from iproute2 and `nft` from nftables).

use std::process::Command;

use crate::process;

/// A fresh network namespace (`ioswarm-test-<pid>-<n>`) with `lo` up; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace. Fails with a clear message when not root or when `ip`/`nft` are
    /// missing (`.ci/run` installs iproute2 and nftables and runs as root).
    pub fn create() -> Result<Netns, String> {
        let uid = process::run({
            let mut c = Command::new("id");
            c.arg("-u");
            c
        })?;
        if uid.trim() != "0" {
            return Err(format!(
                "partition tests need root (network namespaces and nftables); running as uid {}",
                uid.trim()
            ));
        }
        for (tool, flag, package) in [("ip", "-V", "iproute2"), ("nft", "--version", "nftables")] {
            let mut c = Command::new(tool);
            c.arg(flag);
            if c.output().is_err() {
                return Err(format!("partition tests need `{tool}`: apt-get install {package} (.ci/run does)"));
            }
        }
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("ioswarm-test-{}-{n}", std::process::id());
        process::run(ip(&["netns", "add", &name]))?;
        let ns = Netns { name };
        process::run(ip(&["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `nft ARGS…` inside the namespace.
    pub fn nft(&self, args: &[&str]) -> Result<String, String> {
        let mut c = ip(&["netns", "exec", &self.name, "nft"]);
        c.args(args);
        process::run(c)
    }

    /// Drops every UDP datagram from or to one of `ports` (on any address inside the
    /// namespace): the nodes listening there are cut off from the rest of the cluster. One
    /// table (`inet ioswarm_partition`), so [`Netns::heal`] removes all of it.
    pub fn isolate_udp_ports(&self, ports: &[u16]) -> Result<(), String> {
        let set = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
        self.nft(&["add", "table", "inet", "ioswarm_partition"])?;
        self.nft(&[
            "add",
            "chain",
            "inet",
            "ioswarm_partition",
            "input",
            "{ type filter hook input priority 0 ; policy accept ; }",
        ])?;
        self.nft(&[
            "add",
            "rule",
            "inet",
            "ioswarm_partition",
            "input",
            "udp",
            "sport",
            &format!("{{ {set} }}"),
            "drop",
        ])?;
        self.nft(&[
            "add",
            "rule",
            "inet",
            "ioswarm_partition",
            "input",
            "udp",
            "dport",
            &format!("{{ {set} }}"),
            "drop",
        ])?;
        Ok(())
    }

    /// Removes the partition rules.
    pub fn heal(&self) -> Result<(), String> {
        self.nft(&["delete", "table", "inet", "ioswarm_partition"]).map(|_| ())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = process::run(ip(&["netns", "del", &self.name])) {
            eprintln!("could not delete network namespace {}: {e}", self.name);
        }
    }
}

fn ip(args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(args);
    c
}
