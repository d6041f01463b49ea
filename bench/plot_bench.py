#!/usr/bin/python3
"""Charts from `tandem bench --json` reports.

    python3 bench/plot_bench.py --out plots/ rr_rate2.json rr_rate4.json kv_rate2.json kv_rate4.json

Writes into --out (created if missing):
  latency_cdf.png      CDFs of TTFT, TPOT and E2E per report (from each
                       report's "samples"), one line per report, labelled
                       "<label> @ <rate> req/s".
  goodput_vs_rate.png  goodput (solid) and throughput (dashed) against the
                       request rate, one line per label (policy); written when
                       at least two reports carry a rate ("rate_rps", or
                       "offered_rps" for trace replays).
Needs python3 and matplotlib (Debian: python3-matplotlib). Exit 1 on a report
that cannot be read.
"""
import argparse
import collections
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

METRICS = [("ttft_ms", "TTFT (ms)"), ("tpot_ms", "TPOT (ms)"), ("e2e_ms", "E2E (ms)")]


def load(path):
    with open(path) as f:
        report = json.load(f)
    for key in ("requests", "completed", "goodput_rps"):
        if key not in report:
            raise ValueError(f"{path}: not a tandem bench report (no \"{key}\")")
    return report


def rate_of(report):
    rate = report.get("rate_rps")
    return rate if rate is not None else report.get("offered_rps")


def name_of(report, path):
    label = report.get("label") or os.path.splitext(os.path.basename(path))[0]
    rate = rate_of(report)
    return f"{label} @ {rate:g} req/s" if rate is not None else label


def plot_cdfs(reports, out):
    fig, axes = plt.subplots(1, len(METRICS), figsize=(5 * len(METRICS), 4))
    for ax, (key, title) in zip(axes, METRICS):
        for path, report in reports:
            values = sorted(s[key] for s in report.get("samples", []) if s.get(key) is not None)
            if not values:
                continue
            n = len(values)
            ax.step(values, [(i + 1) / n for i in range(n)], where="post", label=name_of(report, path))
        slo = (report.get("slo") or {}).get(key)
        if slo is not None:
            ax.axvline(slo, color="grey", linestyle=":", label="SLO")
        ax.set_xlabel(title)
        ax.set_ylabel("fraction of requests")
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.suptitle("Latency CDFs (completed requests)")
    fig.tight_layout()
    path = os.path.join(out, "latency_cdf.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_goodput(reports, out):
    by_label = collections.defaultdict(list)
    for path, report in reports:
        rate = rate_of(report)
        if rate is None:
            continue
        label = report.get("label") or "run"
        by_label[label].append((rate, report["goodput_rps"], report.get("throughput_rps")))
    if sum(len(points) for points in by_label.values()) < 2:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in sorted(by_label.items()):
        points.sort()
        line = ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{label} goodput")
        if all(p[2] is not None for p in points):
            ax.plot([p[0] for p in points], [p[2] for p in points], linestyle="--",
                    color=line[0].get_color(), alpha=0.6, label=f"{label} throughput")
    ax.set_xlabel("request rate (req/s)")
    ax.set_ylabel("req/s")
    ax.set_title("Goodput against request rate")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = os.path.join(out, "goodput_vs_rate.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", help="tandem bench --json files")
    parser.add_argument("--out", default=".", help="folder for the PNG files (default: .)")
    args = parser.parse_args(argv)
    reports = []
    for path in args.reports:
        try:
            reports.append((path, load(path)))
        except (OSError, ValueError) as e:
            print(f"plot_bench: {e}", file=sys.stderr)
            return 1
    os.makedirs(args.out, exist_ok=True)
    print(plot_cdfs(reports, args.out))
    goodput = plot_goodput(reports, args.out)
    if goodput:
        print(goodput)
    else:
        print("plot_bench: fewer than two reports with a rate; no goodput chart", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
