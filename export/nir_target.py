"""``--target nir``: one NIR (HDF5) file per SNN stage plus manifest.json."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import nir

from .manifest import build_manifest, write_manifest
from .nir_graphs import build_stage_graphs, load_models


def write_graph(path: Path, graph: nir.NIRGraph) -> None:
    """Write ``graph`` as a NIR (HDF5) file.  Serialised in memory first: HDF5 writing straight to a full disk
    crashes the process (h5py fails in its finalisers, then segfaults); a plain write raises one OSError."""
    buf = io.BytesIO()
    nir.write(buf, graph)
    Path(path).write_bytes(buf.getvalue())


def write_nir(run_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Write ``{stage}.nir`` for every trained stage and ``manifest.json`` into ``out_dir``."""
    vq, sdid = load_models(run_dir)
    stages = build_stage_graphs(vq, sdid)
    manifest = build_manifest(run_dir, vq, sdid, stages, "nir")
    for name, sg in stages.items():
        path = Path(out_dir) / f"{name}.nir"
        write_graph(path, sg.graph)
        manifest["stages"][name]["file"] = path.name
    write_manifest(manifest, out_dir)
    return manifest
