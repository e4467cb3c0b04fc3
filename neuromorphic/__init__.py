"""Neuromorphic targets: Loihi number formats (:mod:`.loihi`), the quantizer (:mod:`.quantize`, NIR graph analysis
in :mod:`.nir_graph`) and Lava export/run helpers.

Importing this package installs the Lava/Python 3.11 import hook (:func:`.lava_compat.ensure_lava`, cheap,
imports nothing from Lava), so every module below may ``import lava...`` directly.
"""

from spkdiff.neuromorphic.lava_compat import ensure_lava

ensure_lava()
