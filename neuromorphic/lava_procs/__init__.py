"""Lava processes of our own: the host side of the generative loop (mask sampler, codebook lookup, image source and
sink) and the on-chip one-to-one synapse (``DiagonalSynapse``).  Own package: Lava imports every module beside a
process to find its models, so only process and model files live here."""
