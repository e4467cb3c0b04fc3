"""Host-side Lava processes of the generative loop: mask sampler, codebook lookup, image sink (own package:
Lava imports every module beside a process to find its models, so only process and model files live here)."""
