"""Start the parallel context of a `cadence train` process, check the world `cadence validate` sees, and
build the torchrun command the UI launches a multi-GPU job with.

Launchers: `torchrun --nproc_per_node N -m cadence train CONFIG` (multi-node: the same command on every
machine with `--nnodes M --rdzv_backend c10d --rdzv_endpoint HOST:PORT`) and `accelerate launch -m cadence
train CONFIG`, which hands its processes the same variables (it runs torch.distributed.run). Cadence starts
no processes of its own: torchrun's elastic agent owns them, restarts none (a failed rank ends the job) and
stops the rest when one dies.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from cadence.parallel.context import ParallelContext
from cadence.parallel.groups import plan_groups
from cadence.parallel.world import World, WorldError, read_world, visible_gpus

log = logging.getLogger(__name__)

TWO_EXPERTS = ("high_noise", "low_noise")


def trained_experts(arch: str, train_high_noise: bool, train_low_noise: bool) -> list[str]:
    """The experts a config trains, in model order (what models/registry loads; no weights read)."""
    from cadence.parallel.config_checks import TWO_EXPERT_ARCHS

    if arch not in TWO_EXPERT_ARCHS:
        return ["main"]
    return [e for e, on in zip(TWO_EXPERTS, (train_high_noise, train_low_noise), strict=True) if on]


def pick_backend(requested: str, device_type: str) -> str:
    if requested != "auto":
        return requested
    return "nccl" if device_type == "cuda" else "gloo"


def _rank_device(base: Any, world: World) -> Any:
    import torch

    if base.type != "cuda":
        return base
    if base.index not in (None, world.local_rank):
        log.warning(
            "device %s: under torchrun each process uses the GPU of its local rank (cuda:%d); the index is "
            "ignored (choose GPUs with CUDA_VISIBLE_DEVICES)",
            base,
            world.local_rank,
        )
    device = torch.device("cuda", world.local_rank)
    torch.cuda.set_device(device)
    return device


def start_parallel(cfg: Any, env: Mapping[str, str] | None = None) -> ParallelContext:
    """The context for this process: a no-op one without launch variables, else the process group is
    joined (torch.distributed.init_process_group with env:// rendezvous, the timeout of
    `parallel.timeout_s`) and the groups of the plan are made."""
    world = read_world(env)
    if not world.distributed:
        return ParallelContext()
    import torch.distributed as dist

    from cadence.parallel.distributed import DistributedContext
    from cadence.train.precision import resolve_device

    device = _rank_device(resolve_device(cfg.device), world)
    backend = pick_backend(cfg.parallel.backend, device.type)
    owns = not dist.is_initialized()  # a caller that joined already (one process, several runs) keeps it
    if owns:
        dist.init_process_group(
            backend,
            timeout=timedelta(seconds=cfg.parallel.timeout_s),
            device_id=device if device.type == "cuda" else None,
        )
    kw = cfg.model.model_kwargs
    experts = trained_experts(cfg.model.arch, kw.train_high_noise, kw.train_low_noise)
    plan = plan_groups(world.world_size, experts, cfg.parallel.expert_parallel)
    return DistributedContext(world, plan, device, cfg.parallel.shard_base, owns_group=owns)


def world_issues(
    device_name: str,
    backend: str,
    expert_parallel: bool,
    experts: int,
    env: Mapping[str, str] | None = None,
) -> list[tuple[tuple[str, ...], str]]:
    """What is wrong with the world this process would train in: the launch variables, the GPUs this
    machine shows for its processes, the backend and the expert groups (`cadence validate`, start of train)."""
    try:
        world = read_world(env)
    except WorldError as error:
        return [(("parallel",), f"the launch variables do not describe a world: {error}")]
    if not world.distributed:
        return []
    issues: list[tuple[tuple[str, ...], str]] = []
    import torch
    import torch.distributed as dist

    cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if cuda:
        count = torch.cuda.device_count()
        shown = visible_gpus(env)
        if world.local_world_size > count:
            issues.append(
                (
                    ("device",),
                    f"{world.local_world_size} processes on this machine (LOCAL_WORLD_SIZE) but {count} GPU(s) "
                    f"visible (CUDA_VISIBLE_DEVICES={','.join(shown) if shown is not None else 'unset'}); one "
                    "process per GPU: torchrun --nproc_per_node at most the GPU count",
                )
            )
    chosen = pick_backend(backend, "cuda" if cuda else "cpu")
    if chosen == "nccl" and not cuda:
        issues.append(
            (("parallel", "backend"), "nccl needs CUDA GPUs and this run is on the CPU; use gloo or auto")
        )
    elif chosen == "nccl" and not dist.is_nccl_available():
        issues.append(
            (("parallel", "backend"), "this torch build has no NCCL; use gloo (slower) or install CUDA torch")
        )
    if expert_parallel and world.world_size % max(1, experts):
        issues.append(
            (
                ("parallel", "expert_parallel"),
                f"{world.world_size} processes cannot be split into {experts} equal expert groups; launch a "
                f"multiple of {experts}",
            )
        )
    return issues


def torchrun_command(gpus: list[str], train_args: list[str]) -> list[str]:
    """The command the UI runs for a job given several GPUs: one process per GPU on this machine, through
    the venv's own torchrun (`python -m torch.distributed.run`), no restarts (a failed rank fails the job;
    torchrun then stops the others: SIGTERM, SIGKILL after its 30 s --shutdown_timeout)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={len(gpus)}",
        "--max_restarts=0",
        "-m",
        "cadence",
        *train_args,
    ]
