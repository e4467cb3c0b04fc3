"""What a recipe's trainings cost, read from their checkpoints, against the issue's CPU-hour budget.

    python bench/quality/training_cost.py runs/mnist-b4-s1:vqsvae runs/mnist-b5-gen:vqsvae \
        runs/mnist-b5-prior:sdid --budget-cpu-hours 3

Each argument is ``RUN_DIR:STAGE`` (the stage that run trained: ``vqsvae`` or ``sdid``). Every training
checkpoint records ``cpu_s`` and ``wall_s``: the CPU seconds (all threads) and wall seconds of the processes
that trained it, summed over resumed runs (``train/loop.py``). A stage copied into a run from another one
(a prior's run holds its tokenizer's ``vqsvae.safetensors``) is named once, by the run that trained it.
A training that stopped before its last step is listed as incomplete and its projected full cost is shown
beside what it spent, at its own mean cost per step.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from spkdiff.checkpoint import load_checkpoint
from spkdiff.errors import SpkdiffError

STAGES = ("vqsvae", "sdid")


@dataclass(frozen=True)
class TrainingCost:
    run: str
    stage: str
    step: int
    total: int
    cpu_s: float
    wall_s: float

    @property
    def complete(self) -> bool:
        return self.step >= self.total

    @property
    def cpu_s_per_step(self) -> float:
        return self.cpu_s / max(self.step, 1)

    @property
    def projected_cpu_s(self) -> float:
        """CPU seconds for all ``total`` steps at this training's mean cost per step so far."""
        return self.cpu_s if self.complete else self.cpu_s_per_step * self.total


def parse_entry(entry: str) -> tuple[Path, str]:
    run, sep, stage = entry.rpartition(":")
    if not sep or stage not in STAGES or not run:
        raise SpkdiffError(f"{entry!r}: expected RUN_DIR:STAGE with STAGE one of {', '.join(STAGES)}")
    return Path(run), stage


def training_cost(run: Path, stage: str) -> TrainingCost:
    position = load_checkpoint(run / f"{stage}.safetensors", stage=stage).position
    missing = [key for key in ("step", "total", "cpu_s", "wall_s") if key not in position]
    if missing:
        raise SpkdiffError(f"{run}/{stage}.safetensors records no {', '.join(missing)} "
                           "(written before checkpoints recorded their cost, or not a training checkpoint)")
    return TrainingCost(str(run), stage, int(position["step"]), int(position["total"]),
                        float(position["cpu_s"]), float(position["wall_s"]))


def report(costs: list[TrainingCost], budget_cpu_hours: float) -> str:
    lines = ["| run | stage | steps | CPU-min | wall min | CPU-s / step |", "|---|---|---|---|---|---|"]
    for c in costs:
        steps = f"{c.step} / {c.total}" + ("" if c.complete else
                                           f" (incomplete: {c.projected_cpu_s / 60:.1f} CPU-min projected)")
        lines.append(f"| {c.run} | {c.stage} | {steps} | {c.cpu_s / 60:.1f} | {c.wall_s / 60:.1f} "
                     f"| {c.cpu_s_per_step:.2f} |")
    spent = sum(c.cpu_s for c in costs) / 60
    projected = sum(c.projected_cpu_s for c in costs) / 60
    budget = budget_cpu_hours * 60
    verdict = "within" if projected <= budget else "over"
    lines.append(f"total: {spent:.1f} CPU-minutes spent"
                 + ("" if projected == spent else f", {projected:.1f} projected for every training complete")
                 + f"; {verdict} the budget of {budget:.0f} CPU-minutes ({budget_cpu_hours:g} CPU-hours)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trainings", nargs="+", metavar="RUN_DIR:STAGE")
    parser.add_argument("--budget-cpu-hours", type=float, default=3.0)
    args = parser.parse_args(argv)
    try:
        if args.budget_cpu_hours <= 0:
            raise SpkdiffError(f"--budget-cpu-hours must be positive, got {args.budget_cpu_hours}")
        entries = [parse_entry(entry) for entry in args.trainings]
        if len(set(entries)) != len(entries):
            raise SpkdiffError("a training is named twice; its cost would be counted twice")
        costs = [training_cost(run, stage) for run, stage in entries]
    except SpkdiffError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report(costs, args.budget_cpu_hours))
    return 0


if __name__ == "__main__":
    sys.exit(main())
