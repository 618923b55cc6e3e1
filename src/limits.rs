//! Process resource limits: the open-file limit bounds how many clients one node can hold.
//!
//! Every client TCP connection uses one file descriptor (a websocket client one; an HTTP
//! long-polling client one per concurrent request, so briefly two while a POST overlaps a GET).
//! The rest of the process needs a few more: the listeners, the admin server and its scrapes,
//! stdio, the config file and the runtime's own descriptors. [`connection_capacity`] keeps
//! [`FD_RESERVE`] of them aside.

use std::io;

use rlimit::Resource;

/// File descriptors kept aside for listeners, the admin server, logs and the runtime.
pub const FD_RESERVE: u64 = 64;

/// Soft limit to aim for when the hard limit is "unlimited" and the kernel's own ceiling is
/// unknown (Linux's default `fs.nr_open`).
const FALLBACK_NOFILE: u64 = 1 << 20;

/// Raises the soft `RLIMIT_NOFILE` as far as the hard limit allows and returns
/// `(soft, hard)` as they are afterwards.
///
/// Where the hard limit is unlimited the soft limit is raised to the kernel ceiling
/// (`/proc/sys/fs/nr_open` on Linux). Where raising fails the old limit stays in place and is
/// returned; only reading the limit can fail.
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    if !Resource::NOFILE.is_supported() {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "RLIMIT_NOFILE is not supported"));
    }
    let (soft, hard) = Resource::NOFILE.get()?;
    let target = if hard == rlimit::INFINITY { kernel_nofile_ceiling() } else { hard };
    if soft < target
        && let Err(e) = rlimit::increase_nofile_limit(target)
    {
        tracing::warn!(soft, hard, target, error = %e, "cannot raise the open-file limit");
    }
    Resource::NOFILE.get()
}

/// Most descriptors one process may open where the hard limit says "unlimited".
fn kernel_nofile_ceiling() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(FALLBACK_NOFILE)
}

/// How many client connections fit under a soft open-file limit of `soft`: one descriptor per
/// connection, after keeping [`FD_RESERVE`] for the rest of the process. At least 1.
pub fn connection_capacity(soft: u64) -> u64 {
    soft.saturating_sub(FD_RESERVE).max(1)
}

/// The connection limit to enforce: `configured` (`max_connections`), or when it is 0 the
/// capacity derived from the open-file limit `soft`.
pub fn max_connections(configured: u64, soft: u64) -> u64 {
    if configured == 0 { connection_capacity(soft) } else { configured }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn raises_soft_to_hard() {
        let (before_soft, before_hard) = Resource::NOFILE.get().unwrap();
        let (soft, hard) = raise_nofile_limit().unwrap();
        assert_eq!(hard, before_hard, "hard limit untouched");
        assert!(soft >= before_soft, "soft limit never lowered");
        assert!(soft <= hard);
        if hard != rlimit::INFINITY {
            assert_eq!(soft, hard);
        }
        // Idempotent.
        assert_eq!(raise_nofile_limit().unwrap(), (soft, hard));
    }

    #[test]
    fn capacity_keeps_a_reserve() {
        assert_eq!(connection_capacity(1024), 1024 - FD_RESERVE);
        assert_eq!(connection_capacity(1_048_576), 1_048_576 - FD_RESERVE);
        assert_eq!(connection_capacity(10), 1);
        assert_eq!(connection_capacity(0), 1);
        assert_eq!(max_connections(0, 1024), 960);
        assert_eq!(max_connections(100, 1024), 100);
    }
}
