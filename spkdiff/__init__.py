"""spkdiff: Spiking-Diffusion (VQ-SVAE + SDID) from training to simulated neuromorphic deployment.

Subpackages (the repository's top-level folders):
    spkdiff.train         models (LIF, VQ-SVAE, SDID), datasets, training loops, samplers
    spkdiff.export        NIR / ONNX / Lava-bundle export of the SNN stages
    spkdiff.neuromorphic  Loihi number formats and quantization, the Lava process graph
    spkdiff.simulator     NIR executor (float and Loihi fixed point), counters, energy, mapping
"""

__version__ = "0.1.0"
