"""Several GPUs and machines on torch.distributed: data parallel, a sharded frozen base (FSDP2) and
expert parallel (both Wan 2.2 A14B experts at once). See docs/distributed.md.

`launch.start_parallel(cfg)` gives the process its `context.ParallelContext` (a no-op one without
torchrun); `train.setup.build_training` wires it into the parts. The package imports nothing on its own:
`config_checks` and `world` stay importable without torch (the config schema and `--help` use them).
"""
