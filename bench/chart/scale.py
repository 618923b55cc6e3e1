"""Draws the scale chart of bench/run-cluster.sh from scale.json (ioswarm-bench scale-report --out).

Usage: python scale.py SCALE.json OUT.png

Panels: one per run that lost a node: clients connected to each node over time (the clients'
own view), seconds from the signal, with the survivors' accept queue on a second axis; then
delivered messages per second per node in the steady phase, each cluster run against the single
node.
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: scale.py SCALE.json OUT.png")
    with open(sys.argv[1]) as f:
        combined = json.load(f)
    runs = combined.get("runs", [])
    events = [r for r in runs if r.get("event_figures")]
    panels = len(events) + 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 5), squeeze=False)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, run in zip(axes[0], events):
        ev = run["event_figures"]
        points = run.get("timeline", [])
        if not points:
            continue
        ts = [p["t"] for p in points]
        nodes = len(points[0]["connected"])
        for n in range(nodes):
            ax.plot(ts, [p["connected"][n] for p in points], label=f"node {n + 1}", color=palette[n % len(palette)])
        ax.plot(ts, [sum(p["connected"]) for p in points], label="all", color="black", linestyle="--", linewidth=1)
        ax.axvline(0, color="red", linewidth=1)
        signal = "SIGKILL" if ev.get("kind") == "kill" else "SIGTERM"
        ax.annotate(f"{signal} node {ev.get('victim')}", (0, 0), textcoords="offset points", xytext=(4, 8),
                    fontsize=8, color="red")
        recovered = ev.get("recovered_secs")
        if recovered is not None:
            ax.axvline(recovered, color="green", linewidth=1, linestyle=":")
            ax.annotate(f"all back +{recovered:.1f} s", (recovered, 0), textcoords="offset points",
                        xytext=(4, 24), fontsize=8, color="green")
        queued = [(p["t"], max((q or 0) for q in p["accept_queue"])) for p in points if p.get("accept_queue")]
        if queued:
            ax2 = ax.twinx()
            ax2.plot([t for t, _ in queued], [q for _, q in queued], color="grey", linewidth=0.8, alpha=0.7,
                     label="largest accept queue")
            ax2.set_ylabel("accept queue (connections)", color="grey")
            ax2.set_ylim(bottom=0)
        ax.set_xlabel("seconds from the signal")
        ax.set_ylabel("clients connected")
        ax.set_ylim(bottom=0)
        ax.set_title(f"{run.get('label')}: {ev.get('victim_clients')} clients of node {ev.get('victim')} move")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="center right", fontsize=8)
    ax = axes[0][-1]
    names, values, colours = [], [], []
    for i, run in enumerate(runs):
        per_node = run.get("steady", {}).get("per_node_delivered_per_sec", [])
        for n, v in enumerate(per_node):
            names.append(f"{run.get('label')}\nnode {n + 1}" if len(per_node) > 1 else run.get("label"))
            values.append(v)
            colours.append(palette[i % len(palette)])
    bars = ax.bar(range(len(values)), values, color=colours)
    ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(values)), names, fontsize=7)
    ax.set_ylabel("delivered messages per second (steady)")
    ax.set_title("per node: cluster vs one node of the same size")
    machine = combined.get("machine", {})
    fig.suptitle(f"ioswarm at scale — {machine.get('cores', '?')} cores shared by every node and the load clients",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
