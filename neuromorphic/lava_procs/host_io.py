"""Host-side Lava processes of the generative loop.

:class:`HostDrive` sends the value of its ``data`` Var on ``out`` at every time step: the SDID's token/time
spikes (written by the mask sampler between denoiser calls) or the codebook-embedding currents (integer
``a`` in fixed_pt, float in floating_pt) straight into the ASG's ``a_in``.  The host writes ``data`` with
``Var.set`` while the runtime is paused between runs.
"""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol


class HostDrive(AbstractProcess):
    """Emits ``data`` (shape ``shape``) on ``out`` every step: ``out_t = data``."""

    def __init__(self, shape: tuple[int, ...], data: np.ndarray | None = None, **kwargs) -> None:
        super().__init__(shape=shape, **kwargs)
        init = np.zeros(shape) if data is None else np.asarray(data)
        self.data = Var(shape=shape, init=init)
        self.out = OutPort(shape=shape)


@implements(proc=HostDrive, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyHostDriveFixed(PyLoihiProcessModel):
    data: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=32)
    out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=32)

    def run_spk(self) -> None:
        self.out.send(self.data)


@implements(proc=HostDrive, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyHostDriveFloat(PyLoihiProcessModel):
    data: np.ndarray = LavaPyType(np.ndarray, float)
    out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)

    def run_spk(self) -> None:
        self.out.send(self.data)
