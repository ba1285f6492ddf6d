"""`python -m s18exp.report SWEEP_DIR [--wandb]`: compare the runs under a folder, side by side.

    python -m s18exp.report SWEEP_DIR                   # report.md, report.html, report.json, figures, tables on the terminal
    python -m s18exp.report SWEEP_DIR --baseline mp_tr_bce   # compare each row with that one (default: every pair)
    python -m s18exp.report SWEEP_DIR --wandb           # also build a W&B Report (saved when logged in)
    python -m s18exp.report --from-spec SWEEP_DIR/wandb_report.json   # create a W&B Report written earlier offline

Rows are the distinct settings of the config keys the runs differ in (seeds aside); each row's mean gets a
95% interval, and each pair of rows an interval of their difference, P(A beats B), a verdict (`A better`,
`B better`, `no detectable difference`) and the seeds per row a detection would need (docs/report.md).

A sweep dir of a hyper-parameter search (it holds optuna.db) also gets a section on the study: its trials by
objective, the best trial's command line, the objective per trial, parameter importances (docs/search.md).

Exit codes: 0 done; 1 no run (or no complete run) found; 2 bad arguments; 3 the W&B Report could not be saved.
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.markup import escape


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m s18exp.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep_dir", nargs="?", help="a folder holding run dirs (searched recursively)")
    parser.add_argument("--wandb", action="store_true", help="also build a W&B Report (wandb-workspaces)")
    parser.add_argument("--from-spec", metavar="FILE", help="create the W&B Report from a wandb_report.json and exit")
    parser.add_argument("--entity", help="W&B entity of the report (default: the runs' wandb.entity, WANDB_ENTITY, or your default)")
    parser.add_argument("--out", metavar="DIR", help="where to write the report (default: SWEEP_DIR)")
    parser.add_argument("--baseline", metavar="LABEL", help="compare each row with the row of this label (default: every pair of rows)")
    parser.add_argument(
        "--min-effect", type=float, default=0.01, metavar="GAP",
        help="the smallest gap in a headline metric worth detecting, for the seeds-needed estimate (default: 0.01)",
    )
    parser.add_argument("--wandb-timeout", type=float, default=60.0, metavar="S", help="give up on the W&B server after S seconds")
    args = parser.parse_args(argv)
    if bool(args.sweep_dir) == bool(args.from_spec):
        parser.error("give either SWEEP_DIR or --from-spec FILE")
    if not args.min_effect > 0 or args.min_effect == float("inf"):
        parser.error(f"--min-effect {args.min_effect} must be a positive number, e.g. --min-effect 0.01")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # Imported once the arguments are read, so that --help and a bad argument answer without loading torch.
    from s18exp import cli

    return cli.command(report)(args)


def report(args: argparse.Namespace) -> int:
    """The report of SWEEP_DIR, or the W&B Report of --from-spec FILE; the exit status."""
    from s18exp.report.build import default_console, make_report

    console = default_console()
    if args.from_spec:
        return from_spec(args.from_spec, args.entity, args.wandb_timeout, console)

    return make_report(
        args.sweep_dir, out_dir=args.out, wandb=args.wandb, entity=args.entity, timeout=args.wandb_timeout, console=console,
        baseline=args.baseline, min_effect=args.min_effect,
    )


def from_spec(path: str, entity: str | None, timeout: float, console: Console) -> int:
    from s18exp.report import wandb_report as wb
    from s18exp.report.build import BAD_INPUT, OK, WANDB_FAILED

    try:
        spec = wb.load_spec(path)
    except (OSError, ValueError) as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        return BAD_INPUT
    if entity:
        spec["entity"] = entity
    online, why_not = wb.wants_online()
    if not online:
        console.print(f"[red]error:[/] {escape(why_not)}; log in first (`wandb login`)")
        return WANDB_FAILED
    if spec.get("sync_command"):
        console.print(f"(when written, these runs were offline; they must be synced first: {escape(spec['sync_command'])})")
    published = wb.publish(spec, timeout)
    if published.error:
        console.print(f"[red]error:[/] {escape(published.error)}")
        return WANDB_FAILED
    console.print(f"W&B report: {escape(published.url)}")
    return OK


if __name__ == "__main__":
    sys.exit(main())
