#!/usr/bin/env python3
"""Prints the benches' medians and ratios as Markdown tables.

Reads criterion's saved estimates (target/criterion/<group>/<name>/<param>/
new/estimates.json) from the last `cargo bench` run, so every ratio compares
figures measured in the same run. Run from the repository root:

    python3 benches/report.py
"""
import json
import pathlib
import sys

ROOT = pathlib.Path("target/criterion")


def median_ns(group, name, param):
    path = ROOT / group / name / str(param) / "new" / "estimates.json"
    try:
        return json.loads(path.read_text())["median"]["point_estimate"]
    except (OSError, KeyError, ValueError):
        return None


def fmt_time(ns):
    if ns is None:
        return "n/a"
    if ns >= 1_000_000:
        return f"{ns / 1_000_000:.2f} ms"
    if ns >= 1_000:
        return f"{ns / 1_000:.1f} µs"
    return f"{ns:.0f} ns"


def rps(ns):
    return "n/a" if ns is None else f"{1e9 / ns:,.0f}"


def ratio(peer, ours):
    """How many times faster edgepool is (peer time / edgepool time)."""
    if peer is None or ours is None or ours == 0:
        return "n/a"
    return f"{peer / ours:.2f}×"


def checkout():
    print("### Checkout + release (per operation, all tasks together)\n")
    print("| tasks | edgepool | deadpool | bb8 | vs deadpool | vs bb8 |")
    print("|---|---|---|---|---|---|")
    for tasks in (1, 8, 64, 512):
        e = median_ns("checkout_release", "edgepool", tasks)
        d = median_ns("checkout_release", "deadpool", tasks)
        b = median_ns("checkout_release", "bb8", tasks)
        print(f"| {tasks} | {fmt_time(e)} | {fmt_time(d)} | {fmt_time(b)} | {ratio(d, e)} | {ratio(b, e)} |")
    print()
    print("### Scale (one task; flat means the hot path scans nothing)\n")
    print("| dimension | 1 | 100 | large | largest / smallest |")
    print("|---|---|---|---|---|")
    for dim, sizes in (("origins", (1, 100, 10000)), ("conns_per_origin", (1, 100, 1000))):
        vals = [median_ns("scale", dim, s) for s in sizes]
        spread = ratio(vals[-1], vals[0]).replace("×", "") if None not in vals else "n/a"
        print(f"| {dim} ({sizes[-1]}) | {fmt_time(vals[0])} | {fmt_time(vals[1])} | {fmt_time(vals[2])} | {spread} |")
    print()


def http(group, peers):
    print(f"### {group}: requests/s (median), loopback\n")
    header = "| concurrency | edgepool | " + " | ".join(peers) + " | " + " | ".join(f"vs {p}" for p in peers) + " |"
    print(header)
    print("|" + "---|" * (2 + 2 * len(peers)))
    params = (1, 64) if group == "tls" else (1, 64, 256)
    for conc in params:
        e = median_ns(group, "edgepool", conc)
        ps = [median_ns(group, p, conc) for p in peers]
        cells = [rps(e)] + [rps(p) for p in ps] + [ratio(p, e) for p in ps]
        print(f"| {conc} | " + " | ".join(cells) + " |")
    print()


def main():
    if not ROOT.exists():
        sys.exit("no target/criterion: run `cargo bench --bench checkout --bench http` first")
    checkout()
    http("http1", ["hyper_util", "raw_connections"])
    http("http2", ["hyper_util", "raw_connection"])
    http("tls", ["new_connection_per_request"])
    http("http3", ["raw_connection", "new_connection_per_request"])


if __name__ == "__main__":
    main()
