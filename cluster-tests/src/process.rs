//! Finding the programs the tests run (the ioswarm binary, node) and running them.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root (this crate's parent folder).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".."))
}

/// The ioswarm binary under test: `$IOSWARM_BIN`, else `<target dir>/debug/ioswarm` (the target
/// dir from `$CARGO_TARGET_DIR`, else `<workspace>/target`), built with `cargo build --bin
/// ioswarm` if it is missing. Panics with what to do when neither works.
pub fn ioswarm_bin() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(locate_or_build) {
        Ok(path) => path.clone(),
        Err(e) => panic!("{e}"),
    }
}

fn locate_or_build() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("IOSWARM_BIN") {
        let path = std::path::absolute(PathBuf::from(&bin)).map_err(|e| e.to_string())?;
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("IOSWARM_BIN={} does not name a file", path.display()))
        };
    }
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let target = if target.is_absolute() { target } else { root.join(target) };
    let path = target.join("debug").join("ioswarm");
    if path.is_file() {
        return Ok(path);
    }
    eprintln!("{} is missing: running cargo build --bin ioswarm", path.display());
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--bin", "ioswarm"])
        .current_dir(&root)
        .status()
        .map_err(|e| format!("could not run cargo build --bin ioswarm: {e} (or set IOSWARM_BIN)"))?;
    if !status.success() {
        return Err(format!("cargo build --bin ioswarm failed ({status}); fix the build or set IOSWARM_BIN"));
    }
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("cargo build --bin ioswarm succeeded but {} is still missing", path.display()))
    }
}

/// `program` with `args`, run in network namespace `netns` when given (`ip netns exec NS …`,
/// which execs the program: the child's pid is the program's), with every `IOSWARM_*` variable
/// of the test environment removed (they would change the node's configuration).
pub(crate) fn command(netns: Option<&str>, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    };
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("IOSWARM_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Runs `cmd` to completion; its stdout on success, otherwise an error with its output.
pub(crate) fn run(mut cmd: Command) -> Result<String, String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| format!("could not run {shown}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{shown} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The last `n` lines of the file at `path` (or why it could not be read).
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// Sends `signal` (e.g. `TERM`) to process `pid` with kill(1).
pub(crate) fn signal(pid: u32, signal: &str) -> Result<(), String> {
    let mut cmd = Command::new("kill");
    cmd.arg(format!("-{signal}")).arg(pid.to_string());
    run(cmd).map(|_| ())
}
