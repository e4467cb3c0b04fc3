"""Energy from operation counts: ``E = sum_op count_op * e_op`` with a named hardware profile.

Profiles are YAML files (``simulator/profiles/<name>.yaml``, or any path) with ``energy_pj``
(per-operation energies in pJ: ``sop``, ``mac``, ``add``, ``spike``, and ``neuron_update`` or the pair
``neuron_update_active``/``neuron_update_inactive``), optional ``time_ns`` (``sop``: time per synaptic op
on one core, used by the chip mapping), ``sources`` (citations), ``leaves_out`` (what the profile does
not price) and ``description``.  With the pair, a neuron update costs by its state:
``E_upd = active * e_active + (updates - active) * e_inactive`` (see :mod:`.counters` for *active*).
The ANN equivalent of a network (the same layers as an ANN, one pass; see :mod:`.counters`) costs
``ann_macs * e_mac + ann_adds * e_add`` on the ANN profile.  Beside it, the spiking-diffusion papers'
convention on the ANN profile: ``E_SNN = SOPs * E_AC + MACs * E_MAC`` vs ``E_ANN`` (``E_AC`` = its ``add``,
``E_MAC`` = its ``mac``).
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
_ACTIVE, _INACTIVE = "neuron_update_active", "neuron_update_inactive"
_ENERGY_KEYS = set(OP_OF_COUNT.values()) | {"add", _ACTIVE, _INACTIVE}
_TOP_KEYS = {"name", "description", "energy_pj", "time_ns", "sources", "leaves_out"}


@dataclass(frozen=True)
class Profile:
    """Per-operation energies (pJ) and times (ns) of one kind of hardware."""

    name: str
    energy_pj: dict[str, float]
    time_ns: dict[str, float] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    description: str = ""
    leaves_out: tuple[str, ...] = ()

    @property
    def by_state(self) -> bool:
        """Neuron updates priced by state (active / inactive)."""
        return _ACTIVE in self.energy_pj


def available_profiles() -> list[str]:
    """Names of the bundled profiles."""
    return sorted(p.name[:-5] for p in resources.files(__package__).joinpath("profiles").iterdir()
                  if p.name.endswith(".yaml"))


def _numbers(where: str, field_name: str, value: Any, positive: bool) -> dict[str, float]:
    if not isinstance(value, dict):
        raise SpkdiffError(f"{where}: field {field_name!r} must be a mapping 'op: number'")
    out = {}
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or not (v > 0 if positive else v >= 0):
            raise SpkdiffError(f"{where}: field {field_name}.{k} must be a {'positive' if positive else 'non-negative'}"
                               f" number, got {v!r}")
        out[str(k)] = float(v)
    return out


def _parse_profile(where: str, text: str, default_name: str) -> Profile:
    """Validate one profile; every problem is one line naming ``where`` and the field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise SpkdiffError(f"{where}: invalid YAML{at}: {getattr(err, 'problem', None) or 'parse error'}") from None
    if not isinstance(data, dict):
        raise SpkdiffError(f"{where}: a profile is a mapping with field 'energy_pj: {{op: pJ}}'")
    unknown = sorted(set(map(str, data)) - _TOP_KEYS)
    if unknown:
        raise SpkdiffError(f"{where}: unknown field {unknown[0]!r}; known: {', '.join(sorted(_TOP_KEYS))}")
    if "energy_pj" not in data:
        raise SpkdiffError(f"{where}: missing field 'energy_pj' (a mapping 'op: pJ')")
    energies = _numbers(where, "energy_pj", data["energy_pj"], positive=False)
    bad = sorted(set(energies) - _ENERGY_KEYS)
    if bad:
        raise SpkdiffError(f"{where}: field energy_pj.{bad[0]}: unknown operations {bad}; "
                           f"known: {', '.join(sorted(_ENERGY_KEYS))}")
    if (_ACTIVE in energies) != (_INACTIVE in energies) or (_ACTIVE in energies and "neuron_update" in energies):
        raise SpkdiffError(f"{where}: field energy_pj needs either neuron_update or both {_ACTIVE} and {_INACTIVE}")
    times = _numbers(where, "time_ns", data.get("time_ns") or {}, positive=True)
    sources = data.get("sources") or {}
    if not isinstance(sources, dict):
        raise SpkdiffError(f"{where}: field 'sources' must be a mapping 'op: citation'")
    leaves = data.get("leaves_out") or []
    if not isinstance(leaves, list) or not all(isinstance(x, str) for x in leaves):
        raise SpkdiffError(f"{where}: field 'leaves_out' must be a list of strings")
    for key in ("name", "description"):
        if key in data and not isinstance(data[key], str):
            raise SpkdiffError(f"{where}: field {key!r} must be a string")
    return Profile(name=data.get("name", default_name), energy_pj=energies, time_ns=times,
                   sources={str(k): str(v) for k, v in sources.items()}, description=data.get("description", ""),
                   leaves_out=tuple(leaves))


def load_profile(name_or_path: str | Path | Profile) -> Profile:
    """A bundled profile by name (``"loihi"``, ``"cmos45nm"``) or a YAML file by path."""
    if isinstance(name_or_path, Profile):
        return name_or_path
    text_name = str(name_or_path)
    path = Path(text_name)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise SpkdiffError(f"energy profile file not found: {path}")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise SpkdiffError(f"energy profile {path}: cannot read ({err})") from None
        return _parse_profile(f"energy profile {path}", text, path.stem)
    res = resources.files(__package__).joinpath("profiles", f"{text_name}.yaml")
    if not res.is_file():
        raise SpkdiffError(f"unknown energy profile {text_name!r}; bundled: {', '.join(available_profiles())} "
                           "(or give a YAML path)")
    return _parse_profile(f"energy profile {text_name}", res.read_text(), text_name)


def sop_time_ns(profile: str | Path | Profile = "loihi") -> float:
    """The profile's time per synaptic op on one core (``time_ns.sop``), for the chip mapping's latency."""
    prof = load_profile(profile)
    if "sop" not in prof.time_ns:
        raise SpkdiffError(f"energy profile {prof.name}: missing field time_ns.sop (needed for the step latency)")
    return prof.time_ns["sop"]


@dataclass
class EnergyReport:
    """Energies in joules per sample (batch mean).

    ``per_stage[stage][op]``, ``per_layer[stage][layer][op]``; ``ann_j[stage]`` is the ANN
    equivalent; ``unpriced[op]`` counts of operations the profile has no energy for;
    ``papers_snn_j``/``papers_ann_j`` the papers' convention (module docstring) per stage.
    """

    profile: str
    ann_profile: str
    per_stage: dict[str, dict[str, float]]
    per_layer: dict[str, dict[str, dict[str, float]]]
    ann_j: dict[str, float]
    unpriced: dict[str, float]
    papers_snn_j: dict[str, float] = field(default_factory=dict)
    papers_ann_j: dict[str, float] = field(default_factory=dict)
    papers_e_pj: dict[str, float] = field(default_factory=dict)  # {"ac": E_AC, "mac": E_MAC}
    leaves_out: tuple[str, ...] = ()

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

    def papers_convention(self) -> dict[str, Any]:
        snn, ann = sum(self.papers_snn_j.values()), sum(self.papers_ann_j.values())
        return {"e_ac_pj": self.papers_e_pj.get("ac"), "e_mac_pj": self.papers_e_pj.get("mac"),
                "snn_j": snn, "ann_j": ann, "ratio_vs_ann": ann / snn if snn > 0 else float("inf"),
                "per_stage_snn_j": self.papers_snn_j, "per_stage_ann_j": self.papers_ann_j,
                "formula": "E_SNN = SOPs * E_AC + MACs * E_MAC (analog-input layers), "
                           "E_ANN = ANN MACs * E_MAC + adds * E_AC (the network's layers)"}

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.profile, "ann_profile": self.ann_profile, "total_j": self.total_j,
                "ann_total_j": self.ann_total_j, "ratio_vs_ann": self.ratio_vs_ann, "per_op_j": self.per_op,
                "per_stage_j": self.per_stage, "ann_j": self.ann_j, "per_layer_j": self.per_layer,
                "unpriced": self.unpriced, "papers_convention": self.papers_convention(),
                "leaves_out": list(self.leaves_out)}


def _layer_energy(layer: Any, prof: Profile, unpriced: dict[str, float]) -> dict[str, float]:
    """``{op: joules}`` of one layer (sample mean); neuron updates by state when the profile has both."""
    counts = {OP_OF_COUNT[k]: float(layer.total(k).mean()) for k in COUNT_KEYS}
    if prof.by_state and counts["neuron_update"]:
        active = float(layer.total("active_updates").mean())
        total = counts.pop("neuron_update")
        counts[_ACTIVE], counts[_INACTIVE] = active, total - active
    row: dict[str, float] = {}
    for op, n in counts.items():
        if n == 0:
            continue
        if op not in prof.energy_pj:
            unpriced[op] = unpriced.get(op, 0.0) + n
            continue
        row[op] = n * prof.energy_pj[op] * PJ
    return row


def energy(counters: Counters | Mapping[str, Counters], profile: str | Path | Profile = "loihi",
           ann_profile: str | Path | Profile = "cmos45nm") -> EnergyReport:
    """Price counts: per stage (``{stage: Counters}``, or one graph as stage ``"graph"``) and layer.

    ``E_stage = sum_layers sum_op mean_over_samples(count) * e_op``; the ANN equivalent is
    ``ann_macs * e_mac + ann_adds * e_add`` on ``ann_profile``, which also gives the papers' convention.
    """
    prof = load_profile(profile)
    ann = load_profile(ann_profile)
    stages = {"graph": counters} if isinstance(counters, Counters) else dict(counters)
    rep = EnergyReport(prof.name, ann.name, {}, {}, {}, {}, leaves_out=prof.leaves_out,
                       papers_e_pj={"ac": ann.energy_pj.get("add", 0.0), "mac": ann.energy_pj.get("mac", 0.0)})
    e_ac, e_mac = rep.papers_e_pj["ac"], rep.papers_e_pj["mac"]
    for stage, ctr in stages.items():
        rep.per_stage[stage] = {}
        rep.per_layer[stage] = {}
        for lname, layer in ctr.layers.items():
            row = _layer_energy(layer, prof, rep.unpriced)
            for op, j in row.items():
                rep.per_stage[stage][op] = rep.per_stage[stage].get(op, 0.0) + j
            rep.per_layer[stage][lname] = row
        missing = [k for k, n in (("mac", ctr.ann_macs), ("add", ctr.ann_adds)) if n and k not in ann.energy_pj]
        if missing:
            raise SpkdiffError(f"ANN profile {ann.name!r} has no energy for {', '.join(missing)}")
        rep.ann_j[stage] = (ctr.ann_macs * e_mac + ctr.ann_adds * e_ac) * PJ
        net = [lc for lc in ctr.layers.values() if lc.nir_type != "Relay"]  # the network, as the papers count it
        sops, macs = (sum(float(lc.total(k).mean()) for lc in net) for k in ("sops", "macs"))
        rep.papers_snn_j[stage] = (sops * e_ac + macs * e_mac) * PJ
        rep.papers_ann_j[stage] = rep.ann_j[stage]
    return rep
