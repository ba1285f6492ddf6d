"""`python scripts/resize_bench.py [--groups 24@128,32@192] [--sizes 64,96,128,192] [--batch 8] [--batch-scale] [--schedule 64,0,0.7 ...] [--json FILE]`:
the UNet training step's time per image at each side of the training views, to predict what a
`trainer.size_schedule` saves.

A group `W@S` is the default model (maxpool, transpose, Dice + CE, `augment=strong`) at width W trained on images
decoded at S px (`data.image_size=S`), stepped at every side of `--sizes` up to S: the step is the training loop's
(`scripts/bench.py`'s `Step`: the batch to the device, the task's `training_loss` under the run's autocast, AdamW
and OneCycle), with the task resizing the full-size batch to the side before augmenting it, as a scheduled epoch
does. The defaults, `trainer.precision=auto` (bf16 where the CPU computes it natively) and channels_last, as a run
resolves them. `--batch-scale` also steps each smaller side at batch x (S / side)**2, as `batch_scale` does.

Every side of a group runs in this one process, in turns, window by window, after a warm-up (bench.py's `compare`):
the time per image is the median over the windows, and the ratio of a side to the full size is the median over
rounds of the ratio of their two windows in that round, so that load that changes between rounds cancels out.

A schedule (`--schedule START,RAMP_START,RAMP_END[,scaled]`, over `--epochs`, one per group given by its epochs
`--epochs W@S=E`, default 60 for S <= 128 else 130) is predicted from `size_schedule.sizes_per_epoch`, the one
source of the sides, and the times per image: a side between two measured ones takes the time linear in its pixel
count between theirs. Its ratio is the predicted training time over that of every epoch at S, validation left
out. The load average is printed before and after; figures taken above 0.5 per thread are only indicative. On a
machine that other work shares, run it with OMP_NUM_THREADS=1: spinning OpenMP threads that lose their core slow a
step many times over, and the ratios with them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import Step, busy, compare, config, cpu_model, fast_settings, load_average  # noqa: E402

from s18exp.size_schedule import batch_sizes_per_epoch, sizes_per_epoch  # noqa: E402
from s18exp.tasks import task_for  # noqa: E402

DEPTH = 4  # the default model.depth: every side a multiple of 16


class SizedStep(Step):
    """bench.Step on views of side `size`, resized from the batch's own side by the task, as a scheduled epoch does."""

    def __init__(self, *args: Any, size: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.size = size

    def loss(self) -> torch.Tensor:
        images, targets = self.runtime.to_device(*self.batch)
        with self.runtime.autocast():
            return self.task.training_loss(self.step_model, images, targets, size=self.size)


def parse_groups(text: str) -> list[tuple[int, int]]:
    """`24@128,32@192` -> [(24, 128), (32, 192)]: (model width, source side)."""
    return [tuple(int(part) for part in item.split("@")) for item in text.split(",")]  # type: ignore[misc]


def measure_group(width: int, source: int, sizes: list[int], batch: int, batch_scale: bool, windows: int, min_window_s: float) -> dict[str, Any]:
    """Seconds per image of each side (and with `batch_scale`, of each smaller side at the scaled batch), and each
    side's paired ratio to the full size."""
    cfg = config(f"model.width={width}", f"data.image_size={source}", f"trainer.batch_size={batch}")
    task = task_for(cfg)
    device = torch.device("cpu")
    settings = fast_settings(cfg, device, compile_=False)
    sides: dict[str, SizedStep] = {}
    for size in [s for s in sizes if s <= source]:
        scaled = batch_sizes_per_epoch([size], source, batch, True)[0]
        for this_batch in sorted({batch, scaled} if batch_scale else {batch}):
            generator = torch.Generator().manual_seed(0)
            images = torch.randint(0, 256, (this_batch, 3, source, source), dtype=torch.uint8, generator=generator)
            masks = torch.randint(0, len(task.class_names), (this_batch, source, source), dtype=torch.uint8, generator=generator)
            sides[f"{size}x{this_batch}"] = SizedStep(cfg, settings, device, task, (images, masks), size=size)
    result = compare(sides, device, windows, min_window_s, warmup=2)
    full = f"{source}x{batch}"
    rows = []
    for name, step in sides.items():
        images = len(step.batch[0])
        per_image = [w / images for w in result[name]["windows_s"]]
        full_per_image = [w / batch for w in result[full]["windows_s"]]
        rows.append({
            "size": step.size, "batch": images, "ms_per_image": 1000 * result[name]["median_s"] / images,
            "ratio_to_full": statistics.median(a / b for a, b in zip(per_image, full_per_image)),
            "pixel_share": (step.size / source) ** 2, "windows_s": result[name]["windows_s"],
        })
    return {"width": width, "source": source, "precision": settings.precision, "channels_last": settings.channels_last, "rows": rows}


def time_at(rows: list[dict[str, Any]], size: int, scaled: bool, source: int, batch: int) -> float:
    """Ratio to the full size of a step's time per image at `size`: measured, or linear in pixels between the two
    measured sides around it (at the batch `batch_scale` gives each side when `scaled`)."""
    def batch_of(side: int) -> int:
        return batch_sizes_per_epoch([side], source, batch, scaled)[0]

    points = sorted((r["size"], r["ratio_to_full"]) for r in rows if r["batch"] == batch_of(r["size"]))
    for (low, low_ratio), (high, high_ratio) in zip(points, points[1:]):
        if low <= size <= high:
            share = (size**2 - low**2) / (high**2 - low**2)
            return low_ratio + share * (high_ratio - low_ratio)
    if len(points) == 1 and points[0][0] == size:
        return points[0][1]
    raise ValueError(f"side {size} is outside the measured sides {[p[0] for p in points]}; add it to --sizes")


def predict(group: dict[str, Any], schedule: str, epochs: int, batch: int) -> dict[str, Any]:
    """The predicted training time of a schedule `START,RAMP_START,RAMP_END[,scaled]` over `epochs`, as a share of
    every epoch at the group's source side."""
    parts = schedule.split(",")
    start, ramp_start, ramp_end = int(parts[0]), float(parts[1]), float(parts[2])
    scaled = len(parts) > 3 and parts[3] == "scaled"
    source = group["source"]
    sizes = sizes_per_epoch(source, epochs, 2**DEPTH, start, ramp_start, ramp_end)
    ratio = sum(time_at(group["rows"], size, scaled, source, batch) for size in sizes) / epochs
    return {"schedule": schedule, "epochs": epochs, "sizes": sizes, "predicted_time_ratio": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", default="24@128,32@192", help="WIDTH@SOURCE_SIDE, comma-separated")
    parser.add_argument("--sizes", default="64,96,128,192", help="sides of the training views (each group takes those up to its source)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batch-scale", action="store_true", help="also step the smaller sides at batch x (source / side)**2")
    parser.add_argument("--windows", type=int, default=7)
    parser.add_argument("--min-window-s", type=float, default=1.0)
    parser.add_argument("--schedule", action="append", default=[], help="START,RAMP_START,RAMP_END[,scaled]; repeatable")
    parser.add_argument("--epochs", action="append", default=[], help="WIDTH@SOURCE=EPOCHS for the predictions")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    epochs_of = {item.split("=")[0]: int(item.split("=")[1]) for item in args.epochs}
    threads = torch.get_num_threads()
    result: dict[str, Any] = {"cpu": cpu_model(), "threads": threads, "load_before": load_average(), "groups": []}
    print(f"{result['cpu']}, {threads} threads, load average before: {result['load_before']}")
    for width, source in parse_groups(args.groups):
        group = measure_group(width, source, sizes, args.batch, args.batch_scale, args.windows, args.min_window_s)
        epochs = epochs_of.get(f"{width}@{source}", 60 if source <= 128 else 130)
        group["predictions"] = [predict(group, schedule, epochs, args.batch) for schedule in args.schedule]
        result["groups"].append(group)
        print(f"\nwidth {width}, images at {source} px, {group['precision']}, channels_last={group['channels_last']}")
        print(f"{'side':>5} {'batch':>5} {'ms/image':>9} {'ratio to full':>14} {'pixel share':>12}")
        for row in group["rows"]:
            print(f"{row['size']:>5} {row['batch']:>5} {row['ms_per_image']:>9.2f} {row['ratio_to_full']:>14.3f} {row['pixel_share']:>12.3f}")
        for p in group["predictions"]:
            print(f"schedule {p['schedule']} over {p['epochs']} epochs: predicted training time {p['predicted_time_ratio']:.3f} x every epoch at {source} px")
    result["load_after"] = load_average()
    result["busy"] = busy(result["load_before"], threads) or busy(result["load_after"], threads)
    print(f"\nload average after: {result['load_after']}" + ("  (busy machine: the figures are only indicative)" if result["busy"] else ""))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
