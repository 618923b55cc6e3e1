"""Draws bench/soak.sh's chart from soak.json (ioswarm-bench soak --json-out).

Usage: python soak.py SOAK.json OUT.png

One panel per sampled series (RSS, open descriptors, threads, CPU, data dir, Engine.IO
connections, rooms, Redis connections, tokio tasks, runnable tasks, queued packets, subscriber
output, messages queued to peers), one line per node, minutes on the x axis; a dotted line at
every node restart; the verdict of each node in the legend.
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANELS = [
    ("rss_kib", "RSS (MiB)", 1 / 1024),
    ("fds", "open file descriptors", 1),
    ("fds_other", "descriptors − client and Redis connections", 1),
    ("threads", "threads", 1),
    ("cpu", "CPU (cores)", 1),
    ("data_bytes", "data dir (MiB)", 1 / 1048576),
    ("engine_connections", "Engine.IO connections", 1),
    ("rooms", "rooms", 1),
    ("redis_connections", "Redis connections", 1),
    ("runtime_tasks", "tokio tasks", 1),
    ("tasks_other", "tasks − client and Redis connections", 1),
    ("runtime_queue_depth", "runnable tasks in the global queue", 1),
    ("engine_queued_packets", "packets in the sessions' send queues", 1),
    ("redis_output_bytes", "Redis subscribers' output (KiB)", 1 / 1024),
    ("peer_queue", "messages queued to peers", 1),
]


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: soak.py SOAK.json OUT.png")
    with open(sys.argv[1]) as f:
        soak = json.load(f)
    samples = soak.get("samples", [])
    if not samples:
        sys.exit("no samples to draw")
    nodes = len(samples[0]["nodes"])
    verdicts = {(v["node"], v["series"]): v.get("verdict", "?") for v in soak.get("verdicts", [])}
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(5, 3, figsize=(18, 20))
    for ax, (series, title, scale) in zip(axes.flat, PANELS):
        for n in range(nodes):
            xs, ys = [], []
            previous = None
            for s in samples:
                node = s["nodes"][n]
                if series == "cpu":
                    # CPU between two samples of the same process.
                    if previous and node.get("cpu_secs") is not None and previous[1].get("cpu_secs") is not None \
                            and node.get("pid") == previous[1].get("pid") and s["t"] > previous[0]:
                        xs.append(s["t"] / 60)
                        ys.append((node["cpu_secs"] - previous[1]["cpu_secs"]) / (s["t"] - previous[0]))
                    previous = (s["t"], node)
                    continue
                value = node.get(series)
                if value is not None:
                    xs.append(s["t"] / 60)
                    ys.append(value * scale)
            verdict = verdicts.get((n + 1, series))
            name = f"node {n + 1}" + (f": {verdict}" if verdict else "")
            ax.plot(xs, ys, label=name, color=palette[n % len(palette)], linewidth=1)
        for r in soak.get("restarts", []):
            ax.axvline(r["at"] / 60, color="grey", linestyle=":", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("minutes")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    restarts = ", ".join(f"node {r['node']} SIG{r['signal']} at {r['at'] / 60:.1f} min" for r in soak.get("restarts", []))
    fig.suptitle(f"ioswarm soak: {soak.get('minutes')} min on 3 nodes; restarts (dotted): {restarts or 'none'}",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.985))  # room for the title above the top row
    fig.savefig(sys.argv[2], dpi=100)


if __name__ == "__main__":
    main()
