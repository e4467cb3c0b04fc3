"""Energy from operation counts: ``E = sum_op count_op * e_op`` with a named hardware profile.

Profiles are YAML files (``simulator/profiles/<name>.yaml``, or any path) with ``energy_pj``
(per-operation energies in pJ, keys ``sop``, ``neuron_update``, ``spike``, ``mac``, ``add``),
optional ``time_ns`` (``sop``: time per synaptic op on one core) and ``sources`` (citations).
The ANN equivalent of a network (same layers, one pass, dense) costs
``ann_macs * e_mac + ann_adds * e_add`` on the ANN profile.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from spkdiff.errors import SpkdiffError

from .counters import COUNT_KEYS, Counters

PJ = 1e-12
#: count name (Counters) -> operation name (profile)
OP_OF_COUNT = {"sops": "sop", "macs": "mac", "neuron_updates": "neuron_update", "spikes": "spike"}
_ENERGY_KEYS = set(OP_OF_COUNT.values()) | {"add"}


@dataclass(frozen=True)
class Profile:
    """Per-operation energies (pJ) and times (ns) of one kind of hardware."""

    name: str
    energy_pj: dict[str, float]
    time_ns: dict[str, float] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    description: str = ""


def available_profiles() -> list[str]:
    """Names of the bundled profiles."""
    return sorted(p.name[:-5] for p in resources.files(__package__).joinpath("profiles").iterdir()
                  if p.name.endswith(".yaml"))


def load_profile(name_or_path: str | Path | Profile) -> Profile:
    """A bundled profile by name (``"loihi"``, ``"cmos45nm"``) or a YAML file by path."""
    if isinstance(name_or_path, Profile):
        return name_or_path
    text_name = str(name_or_path)
    path = Path(text_name)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise SpkdiffError(f"energy profile file not found: {path}")
        text = path.read_text()
    else:
        res = resources.files(__package__).joinpath("profiles", f"{text_name}.yaml")
        if not res.is_file():
            raise SpkdiffError(f"unknown energy profile {text_name!r}; bundled: {', '.join(available_profiles())} "
                               "(or give a YAML path)")
        text = res.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpkdiffError(f"energy profile {text_name}: invalid YAML ({err})") from err
    if not isinstance(data, dict) or not isinstance(data.get("energy_pj"), dict):
        raise SpkdiffError(f"energy profile {text_name}: needs a mapping 'energy_pj: {{op: pJ}}'")
    energies = {str(k): float(v) for k, v in data["energy_pj"].items()}
    bad = set(energies) - _ENERGY_KEYS
    if bad:
        raise SpkdiffError(f"energy profile {text_name}: unknown operations {sorted(bad)}; "
                           f"known: {sorted(_ENERGY_KEYS)}")
    if any(v < 0 for v in energies.values()):
        raise SpkdiffError(f"energy profile {text_name}: negative energy")
    return Profile(name=str(data.get("name", path.stem)), energy_pj=energies,
                   time_ns={str(k): float(v) for k, v in (data.get("time_ns") or {}).items()},
                   sources={str(k): str(v) for k, v in (data.get("sources") or {}).items()},
                   description=str(data.get("description", "")))


@dataclass
class EnergyReport:
    """Energies in joules per sample (batch mean).

    ``per_stage[stage][op]``, ``per_layer[stage][layer][op]``; ``ann_j[stage]`` is the ANN
    equivalent; ``unpriced[op]`` counts of operations the profile has no energy for.
    """

    profile: str
    ann_profile: str
    per_stage: dict[str, dict[str, float]]
    per_layer: dict[str, dict[str, dict[str, float]]]
    ann_j: dict[str, float]
    unpriced: dict[str, float]

    @property
    def total_j(self) -> float:
        return sum(sum(ops.values()) for ops in self.per_stage.values())

    @property
    def ann_total_j(self) -> float:
        return sum(self.ann_j.values())

    @property
    def per_op(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for ops in self.per_stage.values():
            for k, v in ops.items():
                out[k] = out.get(k, 0.0) + v
        return out

    @property
    def ratio_vs_ann(self) -> float:
        """ANN-equivalent energy / simulated energy (> 1: the SNN is cheaper)."""
        return self.ann_total_j / self.total_j if self.total_j > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.profile, "ann_profile": self.ann_profile, "total_j": self.total_j,
                "ann_total_j": self.ann_total_j, "ratio_vs_ann": self.ratio_vs_ann, "per_op_j": self.per_op,
                "per_stage_j": self.per_stage, "ann_j": self.ann_j, "per_layer_j": self.per_layer,
                "unpriced": self.unpriced}


def energy(counters: Counters | Mapping[str, Counters], profile: str | Path | Profile = "loihi",
           ann_profile: str | Path | Profile = "cmos45nm") -> EnergyReport:
    """Price counts: per stage (``{stage: Counters}``, or one graph as stage ``"graph"``) and layer.

    ``E_stage = sum_layers sum_op mean_over_samples(count) * e_op``; the ANN equivalent is
    ``ann_macs * e_mac + ann_adds * e_add`` on ``ann_profile``.
    """
    prof = load_profile(profile)
    ann = load_profile(ann_profile)
    stages = {"graph": counters} if isinstance(counters, Counters) else dict(counters)
    per_stage: dict[str, dict[str, float]] = {}
    per_layer: dict[str, dict[str, dict[str, float]]] = {}
    unpriced: dict[str, float] = {}
    ann_j: dict[str, float] = {}
    for stage, ctr in stages.items():
        per_stage[stage] = {}
        per_layer[stage] = {}
        for lname, layer in ctr.layers.items():
            row: dict[str, float] = {}
            for key in COUNT_KEYS:
                op = OP_OF_COUNT[key]
                n = float(layer.total(key).mean())
                if n == 0:
                    continue
                if op not in prof.energy_pj:
                    unpriced[op] = unpriced.get(op, 0.0) + n
                    continue
                row[op] = n * prof.energy_pj[op] * PJ
                per_stage[stage][op] = per_stage[stage].get(op, 0.0) + row[op]
            per_layer[stage][lname] = row
        missing = [k for k, n in (("mac", ctr.ann_macs), ("add", ctr.ann_adds)) if n and k not in ann.energy_pj]
        if missing:
            raise SpkdiffError(f"ANN profile {ann.name!r} has no energy for {', '.join(missing)}")
        e_ann = ctr.ann_macs * ann.energy_pj.get("mac", 0.0) + ctr.ann_adds * ann.energy_pj.get("add", 0.0)
        ann_j[stage] = e_ann * PJ
    return EnergyReport(prof.name, ann.name, per_stage, per_layer, ann_j, unpriced)
