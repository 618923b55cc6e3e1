"""Draws bench/run.sh's chart from the combined results JSON (ioswarm-bench report --out).

Usage: python chart.py RESULTS.json OUT.png

Panels (only those the run has): fanout and rooms: p99 latency against delivered messages per
second, one line per server (one point per step); idle: server RSS per connection, one bar per
server.
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def label(run):
    name = run.get("label", "?")
    publisher = run.get("publisher")
    if publisher and publisher != "sio" and publisher not in name:
        name = f"{name} ({publisher})"
    return name


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: chart.py RESULTS.json OUT.png")
    with open(sys.argv[1]) as f:
        combined = json.load(f)
    runs = combined.get("runs", [])
    panels = [s for s in ("fanout", "rooms", "idle") if any(r.get("scenario") == s for r in runs)]
    if not panels:
        sys.exit("no runs to draw")
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5), squeeze=False)
    machine = combined.get("machine", {})
    # One colour per server across every panel.
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = []
    for run in runs:
        if label(run) not in names:
            names.append(label(run))
    colour = {name: palette[i % len(palette)] for i, name in enumerate(names)}
    for ax, scenario in zip(axes[0], panels):
        of = [r for r in runs if r.get("scenario") == scenario]
        if scenario == "idle":
            bar_names = [label(r) for r in of]
            values = [r.get("peak_per_client_kib") or 0 for r in of]
            bars = ax.bar(bar_names, values, color=[colour[n] for n in bar_names])
            ax.bar_label(bars, fmt="%.1f KiB")
            ax.set_ylabel("server RSS per connection (KiB)")
            clients = max((r.get("connected", 0) for r in of), default=0)
            ax.set_title(f"idle: memory per connection ({clients} clients)")
            continue
        for run in of:
            points = [
                (s["delivered_per_sec"], s["latency"]["p99_ms"], s["name"])
                for s in run.get("steps", [])
                if s.get("latency") and s.get("delivered_per_sec", 0) > 0
            ]
            if not points:
                continue
            xs, ys, names = zip(*points)
            ax.plot(xs, ys, marker="o", label=label(run), color=colour[label(run)])
            for x, y, n in points:
                ax.annotate(n, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("delivered messages per second")
        ax.set_ylabel("p99 publish-to-receive latency (ms)")
        clients = max((r.get("connected", 0) for r in of), default=0)
        what = "subscribers in one room" if scenario == "fanout" else "clients in small rooms"
        ax.set_title(f"{scenario}: {clients} {what}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(
        f"ioswarm benchmarks — {machine.get('cores', '?')} cores shared by servers and load clients",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
