"""Host-side Lava processes (own package: Lava imports every module beside a process to find its models)."""
