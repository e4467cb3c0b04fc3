"""A stage's :class:`~.chip_plan.StagePlan` as a Lava process graph (``Conv`` and one-to-one
:class:`~.lava_procs.processes.DiagonalSynapse` connections + ``LIF``), fed and reset by host processes
(:mod:`.lava_procs`); delays and resets are explained in :mod:`.chip_plan`."""

from __future__ import annotations

from typing import Any

import numpy as np

from .chip_plan import StagePlan, chw_to_whc, whc_shape

__all__ = ["LavaStage"]


class LavaStage:
    """The plan's ``LIF`` populations and ``Conv``/``DiagonalSynapse`` connections, fed by ``source`` (an OutPort of a
    host process: the input spikes for ``"spikes"`` stages, the integer/float current ``a`` of the input
    population for ``"current"`` stages).  Building only; the populations are reset and read by the host
    processes through RefPorts (:attr:`lifs`, :func:`reset_offset`)."""

    def __init__(self, plan: StagePlan, source: Any) -> None:
        from lava.proc.conv.process import Conv
        from lava.proc.lif.process import LIF

        from spkdiff.neuromorphic import loihi
        from spkdiff.neuromorphic.lava_procs.processes import DiagonalSynapse

        self.plan = plan
        fixed = plan.mode == "fixed"
        self.lifs: dict[str, Any] = {}
        for name, pop in plan.populations.items():
            p = pop.params
            whc = whc_shape(pop.shape)
            if fixed:
                self.lifs[name] = LIF(shape=whc, du=p["du"], dv=p["dv"], vth=p["vth"],
                                      bias_mant=chw_to_whc(p["bias_mant"]).astype(np.int32),
                                      bias_exp=chw_to_whc(p["bias_exp"]).astype(np.int32), name=name)
            else:
                self.lifs[name] = LIF(shape=whc, du=p["du"], dv=p["dv"], vth=p["vth"],
                                      bias_mant=chw_to_whc(np.broadcast_to(p["bias_mant"], pop.shape)), name=name)
        if plan.input_kind == "current":
            source.connect(self.lifs[plan.input_target].a_in)
        self.conns: list[Any] = []
        for c in plan.connections:
            src_port = source if c.src == "input" else self.lifs[c.src].s_out
            dst = self.lifs[c.dst]
            if c.kind == "conv":
                w = loihi.lava_conv_weight(c.weight)
                gain = 1.0 if fixed else plan.populations[c.dst].params["gain"]
                proc = Conv(weight=w.astype(np.int32) if fixed else w * gain,
                            input_shape=tuple(reversed(c.geometry["in_shape"])), stride=c.geometry["stride"],
                            padding=c.geometry["padding"], dilation=c.geometry["dilation"],
                            groups=c.geometry["groups"])
                src_port.connect(proc.s_in)
                proc.a_out.connect(dst.a_in)
            else:
                gain = 1.0 if fixed else plan.populations[c.dst].params["gain"]
                if fixed:
                    proc = DiagonalSynapse(weights=c.weight.astype(np.int32), delay=c.delay,
                                           weight_exp=int(c.weight_exp), num_weight_bits=8,
                                           sign_mode=_sign_mode(c.weight))
                else:
                    proc = DiagonalSynapse(weights=c.weight.astype(float) * gain, delay=c.delay)
                src_port.flatten().connect(proc.s_in)
                proc.a_out.reshape(dst.a_in.shape).connect(dst.a_in)
            self.conns.append(proc)


def _sign_mode(w: np.ndarray) -> Any:
    """:func:`loihi.determine_sign_mode` as Lava's enum (same values)."""
    from lava.utils.weightutils import SignMode

    from spkdiff.neuromorphic.loihi import determine_sign_mode

    return SignMode(int(determine_sign_mode(w)))
