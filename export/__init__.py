"""Export of the SNN stages: NIR (one HDF5 file per stage), ONNX (unrolled over T_s) and Lava bundles.

Public API (import from the submodules; this package imports nothing heavy so ``--help`` stays fast):

* :func:`spkdiff.export.nir_graphs.build_stage_graphs` ``(vq, sdid) -> {stage: StageGraph}`` (graph + layer
  table + read-out mapping); :func:`~spkdiff.export.nir_graphs.spiking_core` (graph without its LI/I read-out).
* :func:`spkdiff.export.manifest.build_manifest` / :func:`~spkdiff.export.manifest.write_manifest`.
* :func:`spkdiff.export.lowering.lower_conv`, :func:`~spkdiff.export.lowering.fold_batchnorm` (exact lowerings).
* :func:`spkdiff.export.verify.verify_stage` (NIR executor vs torch, layer by layer).
* :func:`spkdiff.export.command.export` ``(run, target, out, force)``; targets in ``command.TARGETS``.
"""
