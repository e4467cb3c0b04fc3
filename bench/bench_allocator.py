"""What ``spkdiff.allocator.keep_freed_memory`` (called by every CLI command) buys a training step.

The glibc settings hold for a whole process, so the two arms run in separate child processes, alternated
round by round (load on a shared machine then hits both alike). Each child builds the stage-1 model of a
preset for the dataset's image shape, takes two warm-up steps and then times ``--steps`` steps; reported:
the median step time and the child's user and system CPU seconds per step.

    python bench/bench_allocator.py [--dataset cifar10] [--preset configs/cifar10_fast.yaml] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def child(dataset: str, preset: str, steps: int) -> dict:
    import torch

    from spkdiff.allocator import keep_freed_memory
    from spkdiff.config import load_preset
    from spkdiff.data import DATASETS
    from spkdiff.train.vqsvae import VQSVAE, VQSVAEConfig

    applied = keep_freed_memory()
    torch.manual_seed(0)
    channels, side, _ = DATASETS[dataset].shape
    stage = load_preset(preset)["vqsvae"]
    model = VQSVAE(VQSVAEConfig.from_dict({**stage["model"], "in_channels": channels, "image_size": side}))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(stage["train"]["batch_size"], channels, side, side) - 0.5
    times = []
    for i in range(steps + 2):
        if i == 2:
            before = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        loss = model(x)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"applied": applied, "step_s": statistics.median(times),
            "user_s_per_step": (after.ru_utime - before.ru_utime) / steps,
            "sys_s_per_step": (after.ru_stime - before.ru_stime) / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cifar10", help="a name in spkdiff.data.DATASETS")
    parser.add_argument("--preset", default="configs/cifar10_fast.yaml")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.dataset, args.preset, args.steps)))
        return
    arms = {"glibc defaults": "default", "keep_freed_memory": "tuned"}
    rows: dict[str, list[dict]] = {arm: [] for arm in arms}
    for _ in range(args.rounds):
        for arm, setting in arms.items():
            env = dict(os.environ, SPKDIFF_MALLOC=setting, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
            out = subprocess.run([sys.executable, __file__, "--child", "--dataset", args.dataset, "--preset",
                                  args.preset, "--steps", str(args.steps)], env=env, check=True,
                                 capture_output=True, text=True).stdout
            rows[arm].append(json.loads(out.strip().splitlines()[-1]))
    summary = {arm: {key: statistics.median(r[key] for r in rs) for key in ("step_s", "user_s_per_step",
                                                                          "sys_s_per_step")}
               for arm, rs in rows.items()}
    ratio = summary["glibc defaults"]["step_s"] / summary["keep_freed_memory"]["step_s"]
    print(json.dumps({"dataset": args.dataset, "preset": args.preset, "rounds": args.rounds, **summary,
                      "speedup": ratio}, indent=2))


if __name__ == "__main__":
    main()
