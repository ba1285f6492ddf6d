"""`python scripts/shared_cpu.py [--data-root DIR] [--epochs 3] [--variant NAME:KEY=VALUE,...] [--json FILE]`:
how much slower the default UNet run trains when a second one shares the CPU.

For each variant (a set of environment variables given to the runs; `default` gives none beyond what the
caller's environment has), it runs `python -m s18exp data.root=DIR trainer.max_epochs=N` alone, then two such
runs side by side, and reports each run's median epoch time (`epoch_seconds` of its metrics.jsonl: training
only, validation left out) and the ratio of the side-by-side medians to the median alone. Sharing the cores
fairly costs 2x; more than that is time lost to the sharing itself.

The load average is read before each measurement and sampled every few seconds during it: a measurement that
starts with the 1-minute load above 0.5 is marked `busy` (other work is on the cores, so the ratio says
nothing about the runs themselves), and the script says so. Every run is the real default recipe (width 24,
128 px, batch 8) on the real data; only the number of epochs is cut, and W&B is off.

Variants worth comparing (libgomp, the OpenMP runtime of torch's CPU wheels, reads them when torch loads):
`OMP_WAIT_POLICY=PASSIVE` (a thread with no work sleeps at once), `OMP_WAIT_POLICY=ACTIVE` (it spins),
`GOMP_SPINCOUNT=300000` (libgomp's own default when neither is set: it spins a while, then sleeps),
`OMP_NUM_THREADS=1` (one thread per run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUIET_LOAD = 0.5  # a 1-minute load average above this at the start means other work shares the cores
SAMPLE_EVERY_S = 5.0
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS")


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """`NAME:KEY=VALUE,KEY=VALUE` (or `NAME` alone, no variables) -> (name, environment variables)."""
    name, _, assignments = text.partition(":")
    env = {}
    for item in filter(None, assignments.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --variant {text!r}: write NAME:KEY=VALUE,KEY=VALUE")
        env[key] = value
    return name, env


def command(data_root: str, epochs: int, run_dir: Path, extra: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "s18exp", f"data.root={data_root}", f"trainer.max_epochs={epochs}", "wandb.mode=disabled",
        "trainer.progress=plain", f"hydra.run.dir={run_dir}", *extra,
    ]


def epoch_seconds(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [float(json.loads(line)["epoch_seconds"]) for line in lines if line.strip()]


def run_together(commands: list[list[str]], env: dict[str, str], logs: list[Path]) -> list[float]:
    """Start every command at once; wait for all; the load averages sampled while they ran."""
    samples: list[float] = []
    handles = [open(log, "w") for log in logs]
    try:
        processes = [subprocess.Popen(c, env=env, cwd=REPO, stdout=h, stderr=subprocess.STDOUT) for c, h in zip(commands, handles)]
        while any(p.poll() is None for p in processes):
            time.sleep(SAMPLE_EVERY_S)
            samples.append(os.getloadavg()[0])
        failed = [(log, p.returncode) for log, p in zip(logs, processes) if p.returncode != 0]
        if failed:
            raise SystemExit(f"error: a run failed ({failed[0][0]}, exit status {failed[0][1]})")
    finally:
        for handle in handles:
            handle.close()
    return samples


def measure(name: str, variables: dict[str, str], args: argparse.Namespace, work: Path) -> dict:
    """One variant: a run alone, then two side by side."""
    # The thread settings are the variant's alone, not whatever the caller's shell happens to set.
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    env.update(variables)
    result: dict = {"variant": name, "env": variables}
    for label, count in (("alone", 1), ("side_by_side", 2)):
        dirs = [work / f"{name}-{label}-{k}" for k in range(count)]
        load_before = os.getloadavg()[0]
        during = run_together([command(args.data_root, args.epochs, d, args.override) for d in dirs], env, [d.with_suffix(".log") for d in dirs])
        medians = [statistics.median(epoch_seconds(d)) for d in dirs]
        result[label] = {
            "median_epoch_s": [round(m, 2) for m in medians],
            "epoch_s": [[round(s, 2) for s in epoch_seconds(d)] for d in dirs],
            "load_before": round(load_before, 2),
            "load_during_mean": round(statistics.mean(during), 2) if during else None,
            "busy": load_before > QUIET_LOAD,
        }
        print(f"{name} {label}: median epoch {', '.join(f'{m:.1f}' for m in medians)} s "
              f"(load before {load_before:.2f}, during {result[label]['load_during_mean']})", flush=True)
    alone = result["alone"]["median_epoch_s"][0]
    result["ratio"] = [round(m / alone, 2) for m in result["side_by_side"]["median_epoch_s"]]
    result["busy"] = result["alone"]["busy"] or result["side_by_side"]["busy"]
    print(f"{name}: side by side / alone = {', '.join(f'{r:.2f}x' for r in result['ratio'])}"
          + ("  (NOT A RESULT: the machine was busy before a measurement)" if result["busy"] else ""), flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--variant", action="append", default=[], help="NAME:KEY=VALUE,...; repeatable (default: default)")
    parser.add_argument("--override", action="append", default=[], help="one more key=value for every run")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--wait-quiet", type=float, default=0.0, help="wait up to this many seconds for a 1-minute load below 0.5 before each variant")
    args = parser.parse_args()
    variants = [parse_variant(v) for v in args.variant] or [("default", {})]
    results = []
    with tempfile.TemporaryDirectory(prefix="shared-cpu-") as tmp:
        for name, variables in variants:
            deadline = time.monotonic() + args.wait_quiet
            while os.getloadavg()[0] > QUIET_LOAD and time.monotonic() < deadline:
                time.sleep(30)
            results.append(measure(name, variables, args, Path(tmp)))
    if args.json:
        args.json.write_text(json.dumps({"cores": os.cpu_count(), "epochs": args.epochs, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
