//! INFO: the sections clients read (ioredis' ready check wants `loading:0`), `\r\n` line endings
//! like Redis.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use bytes::Bytes;

use super::Ctx;
use super::hello::REDIS_VERSION;
use crate::resp::frame;

const DEFAULT: &[&str] = &[
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "replication",
    "cpu",
    "modules",
    "errorstats",
    "cluster",
    "keyspace",
];

/// `INFO [section [section ...]]`.
pub(crate) fn info(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    let mut wanted: Vec<&str> = Vec::new();
    if args.len() == 1 {
        wanted.extend_from_slice(DEFAULT);
    }
    for arg in &args[1..] {
        let arg = arg.to_ascii_lowercase();
        match &arg[..] {
            b"default" | b"all" | b"everything" => wanted.extend_from_slice(DEFAULT),
            other => {
                if let Some(known) = DEFAULT.iter().find(|s| s.as_bytes() == other) {
                    wanted.push(known);
                }
            }
        }
    }
    let mut text = String::new();
    for section in DEFAULT.iter().filter(|s| wanted.contains(s)) {
        if !text.is_empty() {
            text.push_str("\r\n");
        }
        section_text(ctx, section, &mut text);
    }
    frame::write_verbatim(ctx.out, ctx.client.proto, b"txt", text.as_bytes());
}

fn section_text(ctx: &Ctx<'_>, section: &str, out: &mut String) {
    let shared = ctx.shared;
    let stats = &shared.stats;
    let uptime = ctx.now.saturating_duration_since(shared.started).as_secs();
    let now_usec = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_micros());
    let broker = &shared.broker;
    let header = match section {
        "cpu" => "CPU".to_string(),
        other => {
            let mut h = other.to_string();
            h[..1].make_ascii_uppercase();
            h
        }
    };
    let _ = write!(out, "# {header}\r\n");
    let mut line = |k: &str, v: &dyn std::fmt::Display| {
        let _ = write!(out, "{k}:{v}\r\n");
    };
    match section {
        "server" => {
            line("redis_version", &REDIS_VERSION);
            line("redis_git_sha1", &"00000000");
            line("redis_git_dirty", &0);
            line("redis_build_id", &"0");
            line("redis_mode", &"standalone");
            line("os", &std::env::consts::OS);
            line("arch_bits", &64);
            line("multiplexing_api", &"epoll");
            line("process_id", &std::process::id());
            line("process_supervised", &"no");
            line("run_id", &shared.run_id);
            line("tcp_port", &shared.port);
            line("server_time_usec", &now_usec);
            line("uptime_in_seconds", &uptime);
            line("uptime_in_days", &(uptime / 86400));
            line("hz", &10);
            line("configured_hz", &10);
            line("executable", &"");
            line("config_file", &"");
            line("io_threads_active", &0);
            line("ioswarm_version", &env!("CARGO_PKG_VERSION"));
        }
        "clients" => {
            line("connected_clients", &shared.connected.load(Ordering::Relaxed));
            line("cluster_connections", &0);
            line("maxclients", &shared.config.max_clients);
            line("client_recent_max_input_buffer", &0);
            line("client_recent_max_output_buffer", &0);
            line("blocked_clients", &0);
            line("tracking_clients", &0);
            line("clients_in_timeout_table", &0);
        }
        "memory" => {
            line("used_memory", &0);
            line("used_memory_human", &"0B");
            line("maxmemory", &0);
            line("maxmemory_human", &"0B");
            line("maxmemory_policy", &"noeviction");
            line("mem_allocator", &"libc");
        }
        "persistence" => {
            line("loading", &0);
            line("async_loading", &0);
            line("current_cow_peak", &0);
            line("rdb_changes_since_last_save", &0);
            line("rdb_bgsave_in_progress", &0);
            line("rdb_last_save_time", &shared.started_unix);
            line("rdb_last_bgsave_status", &"ok");
            line("aof_enabled", &0);
            line("aof_rewrite_in_progress", &0);
            line("aof_last_write_status", &"ok");
        }
        "stats" => {
            line("total_connections_received", &stats.total_connections.load(Ordering::Relaxed));
            line("total_commands_processed", &stats.total_commands.load(Ordering::Relaxed));
            line("instantaneous_ops_per_sec", &0);
            line("rejected_connections", &stats.rejected_connections.load(Ordering::Relaxed));
            line("pubsub_channels", &broker.channels(None).len());
            line("pubsub_patterns", &broker.numpat());
            line("pubsub_shardchannels", &broker.shard_channels(None).len());
            line("pubsub_messages_delivered", &broker.messages_delivered());
            line("client_output_buffer_limit_disconnections", &broker.clients_killed());
            line("total_error_replies", &0);
            line("protocol_errors", &stats.protocol_errors.load(Ordering::Relaxed));
        }
        "replication" => {
            line("role", &"master");
            line("connected_slaves", &0);
            line("master_failover_state", &"no-failover");
            line("master_replid", &shared.run_id);
            line("master_replid2", &"0000000000000000000000000000000000000000");
            line("master_repl_offset", &0);
            line("second_repl_offset", &-1);
            line("repl_backlog_active", &0);
            line("repl_backlog_size", &1_048_576);
            line("repl_backlog_first_byte_offset", &0);
            line("repl_backlog_histlen", &0);
        }
        "cpu" => {
            line("used_cpu_sys", &"0.000000");
            line("used_cpu_user", &"0.000000");
            line("used_cpu_sys_children", &"0.000000");
            line("used_cpu_user_children", &"0.000000");
        }
        "modules" | "errorstats" | "keyspace" => {}
        "cluster" => {
            line("cluster_enabled", &0);
        }
        _ => {}
    }
}
