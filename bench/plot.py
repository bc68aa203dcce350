#!/usr/bin/env python3
"""Draws PNG plots of the JSON files `dojo-bench` writes with `--json`.

    bench/plot.py e2e.json thin.json --out docs/bench

- an `e2e` file (dojo-bench e2e --json): acknowledgements per second against the
  offered rate, and the acknowledgement latency p50 / p99 / max of each second, with the
  goals of issue "Performance, round 2" (p99 under 25 ms, max under 250 ms);
  when the file has `machine_per_second`, a third panel stacks each service's CPU
  time in each second, with the disk's busy time;
- a `thin` file (dojo-bench thin --json): ingress's rate as a share of the thinnest
  receiver's, per route and run, with the 0.9 goal.

Each plot is written next to the others in --out as <input file's stem>.png.
Needs matplotlib (PyPI): python3 -m venv /tmp/plot && /tmp/plot/bin/pip install matplotlib,
then run this file with /tmp/plot/bin/python.
"""

import argparse
import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def e2e(data, title):
    seconds = [s["second"] for s in data["per_second"]]
    machine = data.get("machine_per_second")
    if machine:
        fig, (rate, latency, cpu) = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    else:
        fig, (rate, latency) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    rate.plot(seconds, [s["ok"] for s in data["per_second"]], label="acknowledged (200) per second")
    rate.plot(seconds, [s["errors"] for s in data["per_second"]], label="errors per second")
    rate.axhline(data["rate"], color="grey", linestyle="--", label=f"offered {data['rate']:.0f}/s")
    rate.set_ylabel("requests per second")
    rate.legend(loc="lower right")
    rate.set_title(title)
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("max_ms", "max")):
        latency.plot(seconds, [max(s[key], 0.01) for s in data["per_second"]], label=f"ack {label}")
    latency.axhline(25, color="black", linestyle=":", label="goal: p99 under 25 ms")
    latency.axhline(250, color="tab:red", linestyle=":", label="goal: max under 250 ms")
    latency.set_yscale("log")
    latency.set_ylabel("acknowledgement latency, ms")
    latency.legend(loc="upper right", fontsize="small")
    if machine:
        # What competed in each second (bench/src/machine.rs): CPU ms per service
        # (1,000 = one core), stacked, and the disk's busy time.
        n = len(machine)
        parts = (("ingress_cpu_ms", "ingress"), ("processor_cpu_ms", "processor"),
                 ("broker_cpu_ms", "RabbitMQ"), ("postgres_cpu_ms", "PostgreSQL"),
                 ("bench_cpu_ms", "load generator"))
        cpu.stackplot(range(n), *[[m[k] for m in machine] for k, _ in parts], labels=[l for _, l in parts])
        cpu.plot(range(n), [m["disk_busy_ms"] for m in machine], color="black", label="disk busy, ms")
        cpu.axhline(2000, color="grey", linestyle="--", label="two cores")
        cpu.set_ylabel("CPU ms in the second")
        cpu.legend(loc="upper right", fontsize="small", ncol=2)
        cpu.set_xlabel("second of the run")
    else:
        latency.set_xlabel("second of the run")
    summary = (
        f"ack p99 {data['ack_ms']['p99']:.1f} ms, max {data['ack_ms']['max']:.1f} ms; "
        f"ack to commit p99 {data['ack_to_commit_ms']['p99']:.1f} ms; "
        f"{data['lost']} lost"
    )
    fig.text(0.01, 0.005, summary, fontsize="small")
    return fig


def thin(data, title):
    runs = data["runs"]
    labels = [f"{r['route']} {r['run']}" for r in runs]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bars = ax.bar(labels, [r["ratio"] for r in runs], color=["tab:blue" if r["route"] == "webhook" else "tab:purple" for r in runs])
    ax.bar_label(bars, fmt="%.2f")
    ax.axhline(0.9, color="tab:red", linestyle="--", label="goal 0.9")
    ax.axhline(1.0, color="grey", linestyle=":")
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("ingress req/s ÷ thin receiver req/s")
    ax.set_title(title)
    ax.legend(loc="lower right")
    return fig


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=pathlib.Path)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("."))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.files:
        data = json.loads(path.read_text())
        kind = data.get("bench")
        date = data.get("date", "")[:10]
        if kind == "e2e":
            fig = e2e(data, f"End to end at {data['rate']:.0f}/s for {data['seconds']} s ({date})")
        elif kind == "thin":
            fig = thin(data, f"Ingress against the thinnest receiver ({date}, {data['count']} per run)")
        else:
            raise SystemExit(f"{path}: not a dojo-bench JSON file (bench = {kind!r})")
        target = args.out / f"{path.stem}.png"
        fig.tight_layout()
        fig.savefig(target, dpi=100)
        print(f"{path} -> {target}")


if __name__ == "__main__":
    main()
