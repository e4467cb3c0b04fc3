"""Ship a trained run inside the package as ``pretrained:NAME`` (weights only, no optimizer state).

    python -m spkdiff.train.ship RUN_DIR NAME
writes spkdiff/pretrained/NAME/{vqsvae,sdid}.safetensors, config.json and, if present, the run's
metrics.json and commands.md (the numbers it reached and the commands that produced them), with results.md
rendered from that metrics.json.  The folder describes one model: a text the run lacks is removed, never left
over from the model shipped before.

Nothing machine-local is shipped: absolute paths in the config become repo-relative or ``runs/NAME``
(:func:`portable_config`), and the run directory's parent in the copied texts becomes ``runs/``.
"""

from __future__ import annotations

import argparse
import os
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

from spkdiff.checkpoint import load_checkpoint, save_checkpoint
from spkdiff.config import read_json, write_json_atomic
from spkdiff.eval.evaluate import metrics_rows, results_markdown
from spkdiff.files import atomic_write

TEXTS = ("metrics.json", "commands.md")


def repo_root() -> Path | None:
    """The repository checkout holding the package (the folder with pyproject.toml), or None if installed."""
    root = Path(str(resources.files("spkdiff"))).parent
    return root if (root / "pyproject.toml").is_file() else None


def portable_config(config: Any, root: Path | None) -> Any:
    """A copy of ``config`` (nested dicts and lists) whose machine-local path strings are made portable.

    A string that is an absolute path or starts with ``~`` (expanded) becomes relative to ``root`` (the
    repository checkout) if it lies inside it, else ``runs/<its last component>``, the project's name for a run
    directory.  Relative paths, other strings and non-string values are kept as they are.
    """
    if isinstance(config, dict):
        return {key: portable_config(value, root) for key, value in config.items()}
    if isinstance(config, list | tuple):
        return [portable_config(value, root) for value in config]
    if not isinstance(config, str) or not config.startswith(("/", "~")):
        return config
    path = PurePosixPath(os.path.normpath(os.path.expanduser(config)))
    if not path.is_absolute():  # "~user" of an unknown user stays unexpanded
        return f"runs/{path.name}"
    if root is not None and path.is_relative_to(root):
        return path.relative_to(root).as_posix()
    return f"runs/{path.name}"


def portable_text(text: str, run_dir: Path) -> str:
    """``text`` with the run directory's parent folder (e.g. ``/root/spkdiff-runs/``) written ``runs/``."""
    for parent in dict.fromkeys((run_dir.absolute().parent, run_dir.resolve().parent)):
        if parent.parent != parent:  # never rewrite the bare "/"
            text = text.replace(f"{parent}/", "runs/")
    return text


def ship(run_dir: Path, name: str, dest_root: Path | None = None) -> Path:
    dest = (dest_root or Path(str(resources.files("spkdiff")))) / "pretrained" / name
    # every input is read and checked before anything in dest is replaced
    config = portable_config(read_json(run_dir / "config.json", "run config"), repo_root())
    checkpoints = {stage: load_checkpoint(run_dir / f"{stage}.safetensors", stage=stage)
                   for stage in ("vqsvae", "sdid")}
    texts: dict[str, str | None] = {}
    for extra in TEXTS:
        source = run_dir / extra
        texts[extra] = portable_text(source.read_text(encoding="utf-8"), run_dir) if source.exists() else None
    texts["results.md"] = None
    if texts["metrics.json"] is not None:  # checked once made portable: that is the text shipped
        texts["results.md"] = results_markdown(metrics_rows(texts["metrics.json"], run_dir / "metrics.json"))

    dest.mkdir(parents=True, exist_ok=True)
    for stage, ckpt in checkpoints.items():  # the checkpoints carry the same portable config
        save_checkpoint(dest / f"{stage}.safetensors", model=ckpt.model, config=config, stage=stage,
                        position=ckpt.position)
    write_json_atomic(dest / "config.json", config)
    for extra, text in texts.items():
        if text is None:  # a record of the model shipped before would describe the wrong weights
            (dest / extra).unlink(missing_ok=True)
        else:
            atomic_write(dest / extra, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("name")
    args = parser.parse_args()
    print(ship(args.run_dir, args.name))


if __name__ == "__main__":
    main()
