//! Memory and CPU of the server process under test, read from `/proc/PID/status` and `/proc/PID/stat`.

use std::time::Instant;

use anyhow::{Context, anyhow};
use serde::Serialize;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Sample {
    /// Resident set size now (`VmRSS`), KiB.
    pub(crate) rss_kib: u64,
    /// Peak resident set size since the process started (`VmHWM`), KiB.
    pub(crate) hwm_kib: u64,
    /// User + system CPU time so far, seconds.
    pub(crate) cpu_secs: f64,
    #[serde(skip)]
    pub(crate) at: Instant,
}

/// Reads samples of one process.
#[derive(Debug, Clone)]
pub(crate) struct ProcWatch {
    pid: u32,
    ticks_per_sec: f64,
}

impl ProcWatch {
    /// Fails when the process does not exist.
    pub(crate) fn new(pid: u32) -> anyhow::Result<Self> {
        let watch = Self { pid, ticks_per_sec: clock_ticks() };
        watch.sample().with_context(|| format!("cannot read /proc/{pid}: is the server running?"))?;
        Ok(watch)
    }

    pub(crate) fn sample(&self) -> anyhow::Result<Sample> {
        let at = Instant::now();
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        let rss_kib = status_kib(&status, "VmRSS:")?;
        let hwm_kib = status_kib(&status, "VmHWM:")?;
        let ticks = stat_cpu_ticks(&stat)?;
        Ok(Sample { rss_kib, hwm_kib, cpu_secs: ticks as f64 / self.ticks_per_sec, at })
    }
}

/// `VmRSS:      12345 kB` → 12345.
fn status_kib(status: &str, key: &str) -> anyhow::Result<u64> {
    let line = status.lines().find(|l| l.starts_with(key)).ok_or_else(|| anyhow!("no {key} in /proc/PID/status"))?;
    let value = line[key.len()..].split_whitespace().next().ok_or_else(|| anyhow!("empty {key}"))?;
    Ok(value.parse()?)
}

/// utime + stime (fields 14 and 15) from `/proc/PID/stat`; the command name may hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn stat_cpu_ticks(stat: &str) -> anyhow::Result<u64> {
    let rest = stat.rfind(')').map(|i| &stat[i + 1..]).ok_or_else(|| anyhow!("malformed /proc/PID/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 → index 11, stime index 12.
    let utime: u64 = fields.get(11).ok_or_else(|| anyhow!("no utime"))?.parse()?;
    let stime: u64 = fields.get(12).ok_or_else(|| anyhow!("no stime"))?.parse()?;
    Ok(utime + stime)
}

/// Machine-wide `TcpExt` counter from `/proc/net/netstat` (e.g. `ListenOverflows`: SYNs dropped
/// because a listener's accept queue was full; each costs the client a 1 s retransmit).
pub(crate) fn tcp_ext_counter(name: &str) -> Option<u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = netstat.lines();
    while let Some(header) = lines.next() {
        let values = lines.next()?;
        if let (Some(names), Some(values)) = (header.strip_prefix("TcpExt:"), values.strip_prefix("TcpExt:")) {
            let index = names.split_whitespace().position(|n| n == name)?;
            return values.split_whitespace().nth(index)?.parse().ok();
        }
    }
    None
}

/// Machine-wide CPU time from the `cpu` line of `/proc/stat`: (busy, total) in ticks, where busy
/// leaves out idle and iowait. Two readings give the cores busy in between: Δbusy / Δtotal ×
/// cores.
pub(crate) fn machine_cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine_cpu(&stat)
}

fn parse_machine_cpu(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// The 1-minute load average.
pub(crate) fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// `getconf CLK_TCK`, 100 when unavailable (the value on every common Linux).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_stat() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(status_kib(status, "VmRSS:").expect("rss"), 1024);
        assert_eq!(status_kib(status, "VmHWM:").expect("hwm"), 2048);
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 1 2 3";
        assert_eq!(stat_cpu_ticks(stat).expect("ticks"), 12);
    }

    #[test]
    fn reads_tcp_ext_counters() {
        assert!(tcp_ext_counter("ListenOverflows").is_some());
        assert!(tcp_ext_counter("NoSuchCounter").is_none());
    }

    #[test]
    fn reads_machine_cpu() {
        let stat = "cpu  100 5 50 800 40 3 2 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(parse_machine_cpu(stat), Some((160, 1000)));
        assert!(machine_cpu_ticks().is_some_and(|(busy, total)| busy <= total));
        assert!(load_average().is_some());
    }

    #[test]
    fn samples_this_process() {
        let watch = ProcWatch::new(std::process::id()).expect("own pid");
        let s = watch.sample().expect("sample");
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib);
    }
}
