"""Import torchmetrics without touching the installed-but-broken torchvision.

torchvision is installed (norse and spikingjelly require it) but its compiled operators do not load
with this torch build, so ``import torchvision`` raises.  torchmetrics imports it eagerly whenever the
``torchvision`` distribution is present; we only use the torchvision-free metrics (FID, KID, SSIM), so
while torchmetrics is first imported we report torchvision as absent to its availability checks.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError
from types import ModuleType

_HIDDEN = frozenset({"torchvision", "torchaudio"})


@contextmanager
def _hide_packages() -> Iterator[None]:
    import lightning_utilities.core.imports as lu

    orig_version, orig_module_available = lu._version, lu.module_available

    def version(name: str) -> str:
        if name in _HIDDEN:
            raise PackageNotFoundError(name)
        return orig_version(name)

    def module_available(path: str) -> bool:
        return path.split(".")[0] not in _HIDDEN and orig_module_available(path)

    lu._version, lu.module_available = version, module_available
    try:
        yield
    finally:
        lu._version, lu.module_available = orig_version, orig_module_available


def import_torchmetrics() -> ModuleType:
    """Return the ``torchmetrics`` module, importing it with torchvision/torchaudio hidden if needed."""
    if "torchmetrics" in sys.modules:
        return sys.modules["torchmetrics"]
    with _hide_packages():
        import torchmetrics
    return torchmetrics
