"""Ship a trained run inside the package as ``pretrained:NAME`` (weights only, no optimizer state).

    python -m spkdiff.train.ship RUN_DIR NAME
writes spkdiff/pretrained/NAME/{vqsvae,sdid}.safetensors, config.json and, if present, the run's
metrics.json and results.md (the numbers it reached and the commands that produced them).
"""

from __future__ import annotations

import argparse
import shutil
from importlib import resources
from pathlib import Path

from spkdiff.checkpoint import load_checkpoint, save_checkpoint
from spkdiff.config import read_json, write_json_atomic


def ship(run_dir: Path, name: str, dest_root: Path | None = None) -> Path:
    dest = (dest_root or Path(str(resources.files("spkdiff")))) / "pretrained" / name
    dest.mkdir(parents=True, exist_ok=True)
    config = read_json(run_dir / "config.json", "run config")  # the run's record; the checkpoints carry it too
    for stage in ("vqsvae", "sdid"):
        ckpt = load_checkpoint(run_dir / f"{stage}.safetensors", stage=stage)
        save_checkpoint(dest / f"{stage}.safetensors", model=ckpt.model, config=config, stage=stage,
                        position=ckpt.position)
    write_json_atomic(dest / "config.json", config)
    for extra in ("metrics.json", "results.md", "commands.md"):
        if (run_dir / extra).exists():
            shutil.copy(run_dir / extra, dest / extra)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("name")
    args = parser.parse_args()
    print(ship(args.run_dir, args.name))


if __name__ == "__main__":
    main()
