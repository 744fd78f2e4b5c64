"""Prints the comparison table from rookery-bench's JSON lines, with each figure's ratio to
rookery's (higher is better for rates, lower for latency, memory and CPU)."""

import json
import sys
from collections import defaultdict


def load(path):
    runs = defaultdict(lambda: defaultdict(list))
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                r = json.loads(line)
                # The repeated runs at half of rookery's top rate are kept apart from the steps.
                scenario = r["scenario"] + ("-half" if r.get("half_max") else "")
                runs[r["label"]][scenario].append(r)
    return runs


def kept_up(r):
    """Whether a run kept up: everything delivered (every copy, for rooms), p99 under a second,
    at least 95% of the target rate, and every user connected."""
    expected = r.get("expected", r["sent"])
    return (
        r["sent"] > 0
        and r["delivered"] >= 0.999 * expected
        and r["p99_ms"] < 1000
        and r["delivered_per_second"] >= 0.95 * r["rate"] * expected / r["sent"]
        and r.get("connect_errors", 0) == 0
    )


def sustained(runs):
    """The highest rate the server kept up with."""
    ok = [r for r in runs if kept_up(r)]
    return max(ok, key=lambda r: r["delivered_per_second"]) if ok else None


def figures(label, runs):
    f = {}
    chat = runs.get("chat", [])
    best = sustained(chat)
    if best:
        f["chat msg/s (sustained)"] = best["delivered_per_second"]
        f["CPU s per 10k msgs"] = best["cpu_seconds_per_10k"]
        f["lost at max rate"] = best["lost"]
    for r in chat:
        f[f"p99 ms @ {r['rate']}/s"] = r["p99_ms"]
    half = sorted(r["p99_ms"] for r in runs.get("chat-half", []))
    if half:
        rate = runs["chat-half"][0]["rate"]
        f[f"p99 ms @ half max ({rate}/s), median of {len(half)}"] = half[len(half) // 2]
        f[f"p99 ms @ half max ({rate}/s), lowest"] = half[0]
        f[f"p99 ms @ half max ({rate}/s), highest"] = half[-1]
    for scenario, name, unit in (
        ("muc", "muc", "deliveries"),
        ("rest", "REST", "posts"),
        ("federation", "s2s", "msgs"),
    ):
        these = runs.get(scenario, [])
        best = sustained(these)
        if best:
            f[f"{name} {unit}/s (sustained)"] = best["delivered_per_second"]
            f[f"{name} CPU s per 10k {unit}"] = best["cpu_seconds_per_10k"]
        for r in these:
            f[f"{name} p99 ms @ {r['rate']}/s"] = r["p99_ms"]
    idle = runs.get("idle", [])
    if idle and idle[-1]["connected"]:
        f["kB per idle TLS conn"] = idle[-1]["rss_per_connection_kb"]
        f["idle connected"] = idle[-1]["connected"]
    login = runs.get("login", [])
    if login:
        # Runs with more or fewer concurrent loops: the server's best.
        best = max(login, key=lambda r: r["logins_per_second"])
        f["logins/s"] = best["logins_per_second"]
        f["login errors"] = best["errors"]
    return f


LOWER_IS_BETTER = ("ms @", "kB", "CPU", "lost", "errors")


def main():
    runs = load(sys.argv[1])
    labels = list(runs)
    table = {label: figures(label, runs[label]) for label in labels}
    keys = []
    for label in labels:
        for k in table[label]:
            if k not in keys:
                keys.append(k)
    # Archiving runs compare with rookery archiving, federation pairs with rookery's pair, the
    # rest with rookery's raw routing.
    def base_for(label):
        for suffix in ("-mam", "-s2s"):
            if label.endswith(suffix) and f"rookery{suffix}" in table:
                return table[f"rookery{suffix}"]
        return table.get("rookery", {})

    width = max(len(k) for k in keys) if keys else 10
    header = f"{'':{width}}  " + "  ".join(f"{l:>22}" for l in labels)
    print(header)
    print("-" * len(header))
    for k in keys:
        cells = []
        for label in labels:
            v = table[label].get(k)
            if v is None:
                cells.append(f"{'—':>22}")
                continue
            ratio = ""
            b = base_for(label).get(k)
            if base_for(label) is not table[label] and b not in (None, 0) and v not in (0,):
                r = b / v if not any(t in k for t in LOWER_IS_BETTER) else v / b
                ratio = f" (rookery {r:.1f}x)"
            cells.append(f"{v:>10.1f}{ratio:>12}" if isinstance(v, float) else f"{v:>10}{ratio:>12}")
        print(f"{k:{width}}  " + "  ".join(cells))


if __name__ == "__main__":
    # `table.py --kept-up JSON` tells compare.sh (by exit code) whether to raise the rate.
    if len(sys.argv) == 3 and sys.argv[1] == "--kept-up":
        sys.exit(0 if kept_up(json.loads(sys.argv[2])) else 1)
    main()
