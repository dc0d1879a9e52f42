"""`DistributedContext`: the parallel verbs on torch.distributed (docs/distributed.md).

Process groups: the default group (NCCL on GPUs, gloo on the CPU) carries the adapters' gradient
all-reduce, the FSDP2 all-gathers and the weight broadcasts; a gloo "control" group over every rank carries
the small CPU-side collectives (the stop agreement, the main rank's decisions, the checkpoint's per-rank
state) with a long timeout, because it also waits across caching and sampling; with expert parallel each
expert's ranks get their own default-backend and gloo subgroups. A rank that dies (kill -9) is noticed by
torchrun's elastic agent, which stops the other workers (SIGTERM, then SIGKILL after its
--shutdown_timeout); the training group's timeout (`parallel.timeout_s`) bounds a collective whose peer
vanished without the agent noticing (another machine lost).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist

from cadence.parallel.context import ParallelContext, RowSlice, clone_router, trainable
from cadence.parallel.grads import average_gradients, broadcast_tensors
from cadence.parallel.groups import GroupPlan
from cadence.parallel.world import World

if TYPE_CHECKING:
    from cadence.train.setup import TrainingSetup

log = logging.getLogger(__name__)
T = TypeVar("T")

CONTROL_TIMEOUT = timedelta(hours=24)


class MainRankFailed(ValueError):
    """Raised on the other ranks when the main rank's part of the setup failed (its own error, with the
    full message, is raised and logged on the main rank)."""


class _Failed:
    """The main rank's exception, in words (exceptions do not all survive pickling)."""

    def __init__(self, error: BaseException) -> None:
        self.text = f"the main rank stopped: {type(error).__name__}: {error}"
        self.error = error

    def __getstate__(self) -> dict[str, str]:
        return {"text": self.text}

    def raise_here(self, is_main: bool) -> None:
        if is_main:
            raise self.error
        raise MainRankFailed(self.text)


class DistributedContext(ParallelContext):
    def __init__(
        self, world: World, plan: GroupPlan, device: torch.device, shard_base: bool, owns_group: bool = True
    ) -> None:
        super().__init__(world, plan)
        self._device = device
        self.sharded = shard_base
        self._owns_group = owns_group  # the default group was joined for this run (and is left at close)
        self.control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
        self._groups = [self.control]
        self.data: Any = None  # the default-backend group this rank trains with (None: the whole world)
        self.data_cpu: Any = self.control
        if plan.expert_parallel:
            for expert, ranks in plan.members.items():  # every rank creates every group, in the same order
                group = dist.new_group(list(ranks))
                group_cpu = dist.new_group(list(ranks), backend="gloo", timeout=CONTROL_TIMEOUT)
                self._groups += [group, group_cpu]
                if world.rank in ranks:
                    self.expert, self.data, self.data_cpu = expert, group, group_cpu
        self._members = plan.group_of(world.rank)
        self._scratch: Path | None = None
        log.info("parallel: %s; this process is %s on %s", plan.describe(), world.describe(), device)

    # ----------------------------------------------------------------------------------------- who
    @property
    def group_size(self) -> int:
        return len(self._members)

    @property
    def group_rank(self) -> int:
        return self._members.index(self.rank)

    def describe(self) -> str:
        assert self.plan is not None
        return self.plan.describe() + (", frozen base sharded (FSDP2)" if self.sharded else "")

    # --------------------------------------------------------------------------------------- setup
    def device(self, base: torch.device) -> torch.device:
        return self._device

    def _broadcast(self, value: Any) -> Any:
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def on_main(self, work: Callable[[], T]) -> T:
        outcome: Any = None
        if self.is_main:
            try:
                outcome = work()
            except Exception as error:  # handed on: every rank fails with the main rank's error
                outcome = _Failed(error)
        shared = self._broadcast(outcome)
        if isinstance(shared, _Failed):
            (outcome if self.is_main else shared).raise_here(self.is_main)
        return shared if not self.is_main else outcome

    def main_first(self, work: Callable[[], T]) -> T:
        failure: Any = None
        result: Any = None
        if self.is_main:
            try:
                result = work()
            except Exception as error:
                failure = _Failed(error)
        shared = self._broadcast(failure)
        if isinstance(shared, _Failed):
            (failure if self.is_main else shared).raise_here(self.is_main)
        return result if self.is_main else work()

    @torch.no_grad()
    def replicate(self, networks: dict[str, torch.nn.Module]) -> None:
        for net in networks.values():
            broadcast_tensors([*net.parameters(), *net.buffers()], src=0)

    def shard_frozen(self, adapter: Any) -> None:
        if not self.sharded:
            return
        from cadence.parallel.sharding import shard_transformer

        for spec in adapter.experts:
            transformer = adapter.transformer(spec.name)
            whole = sum(p.numel() * p.element_size() for p in transformer.parameters())
            kept = shard_transformer(transformer, self._device, self.data)
            log.info(
                "parallel.shard_base: %s keeps %.1f of its %.1f MB of parameters on this rank",
                spec.name,
                kept / 2**20,
                whole / 2**20,
            )

    def recorder(self, cfg: Any, paths: Any, checkpoints: Any) -> Any:
        if self.is_main:
            return super().recorder(cfg, paths, checkpoints)
        from cadence.parallel.follower import FollowerRecorder

        return FollowerRecorder(cfg, paths, checkpoints)

    def logs(self, attach: Callable[[], logging.Handler]) -> Callable[[], None]:
        """log.txt is the main rank's; the others keep their console to warnings and errors (each rank's
        INFO lines would repeat the main rank's N times)."""
        if self.is_main:
            detach = super().logs(attach)
            log.info("parallel: %s, %s", self.describe(), self.world.describe())  # into log.txt too
            return detach
        quiet = _AboveInfo()
        handlers = list(logging.getLogger().handlers)
        for handler in handlers:
            handler.addFilter(quiet)

        def undo() -> None:
            for handler in handlers:
                handler.removeFilter(quiet)

        return undo

    def share_samples(self, sampler: Any) -> None:
        """Split the prompts over the ranks (rank r renders prompts r, r + N, ...); with a sharded base
        every rank takes part in every sample (each block's forward needs all of them) and only rank 0's
        files are kept (the others render into a scratch folder removed at the end)."""
        if sampler is None or not sampler.enabled:
            return
        if self.sharded:
            if not self.is_main:
                self._scratch = Path(tempfile.mkdtemp(prefix=f"cadence_rank{self.rank}_samples_"))
                sampler.out_dir = self._scratch
            return
        sampler.specs = sampler.specs[self.rank :: self.world_size]

    # ------------------------------------------------------------------------------------ per step
    def trains(self, expert: str) -> bool:
        return self.expert is None or expert == self.expert

    def resident(self, current: str) -> str:
        return current if self.expert is None else self.expert

    def round_steps(self, first: int, total: int, router: Any) -> list[tuple[int, str]]:
        """Expert parallel: consecutive steps of distinct experts train at once (one per rank group)."""
        probe = clone_router(router)
        plan = [(first, probe.current())]
        if self.expert is None:
            return plan
        probe.advance()
        while plan[-1][0] < total and probe.current() not in {e for _, e in plan}:
            plan.append((plan[-1][0] + 1, probe.current()))
            probe.advance()
        return plan

    def rows(self, local: int) -> RowSlice:
        start = self.group_rank * local
        return RowSlice(start, start + local, local * self.group_size)

    def reduce_gradients(self, params: Sequence[torch.Tensor], finite: bool) -> bool:
        return average_gradients(params, finite, self.data)

    def mean(self, values: list[float]) -> list[float]:
        flat = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(flat, group=self.data_cpu)
        return [float(v) / self.group_size for v in flat]

    def any(self, *flags: bool) -> tuple[bool, ...]:
        flat = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int64)
        dist.all_reduce(flat, op=dist.ReduceOp.MAX, group=self.control)
        return tuple(bool(v) for v in flat.tolist())

    def main_value(self, value: T) -> T:
        return self._broadcast(value)

    def resample_needed(self, missing_here: bool) -> bool:
        return self.main_value(missing_here) if self.sharded else self.any(missing_here)[0]

    def share_round(self, setup: TrainingSetup, plan: list[tuple[int, str]], results: dict) -> dict:
        """Every rank learns every step's result (from each group's first rank) and the other experts'
        new weights; the stability probe and the EMA of an expert trained elsewhere move here, so the hub
        state is the same on every rank."""
        if self.expert is None:
            return results
        assert self.plan is not None
        from cadence.train.loop import StepResult

        mine = {step: dataclasses.asdict(r) for step, r in results.items()} if self.group_rank == 0 else {}
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, mine, group=self.control)
        merged: dict[int, dict] = {}
        for part in gathered:
            merged.update(part)
        out = {step: StepResult(**_own_lrs(merged[step], expert, setup.optimizer)) for step, expert in plan}
        updated = [(step, expert) for step, expert in plan if out[step].loss is not None]
        for _, expert in updated:
            if expert != self.expert:
                setup.hub.stability.before_step(expert, trainable(setup.networks[expert]))
        for _, expert in updated:
            net = setup.networks[expert]
            broadcast_tensors([*net.parameters(), *net.buffers()], src=self.plan.leader(expert))
            if expert != self.expert and setup.ema is not None:
                setup.ema.update(expert)
        return out

    def barrier(self) -> None:
        dist.barrier(group=self.control)

    # --------------------------------------------------------------------------------------- state
    def complete_state(self, state: dict[str, Any], setup: TrainingSetup) -> dict[str, Any]:
        """Gather every rank's random and sampler state into rank 0's checkpoint; with expert parallel the
        optimizer state and noise streams of each expert come from the first rank of its group."""
        from cadence.train.rng import capture_global_rng

        leader = self.expert is not None and self.group_rank == 0
        mine = {
            "rank": self.rank,
            "expert": self.expert,
            "global_rng": capture_global_rng(),
            "sampler": setup.sampler.state_dict(),
            "randomness": setup.randomness.state_dict() if leader else None,
            "optimizer": setup.optimizer.state_dict() if leader and not self.is_main else None,
        }
        gathered: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(mine, gathered, dst=0, group=self.control)
        if not self.is_main:
            return state
        assert gathered is not None and self.plan is not None
        if self.expert is not None:
            for part in gathered:
                if part["randomness"] is not None:
                    streams = state["randomness"]["streams"]
                    streams[part["expert"]] = part["randomness"]["streams"][part["expert"]]
                if part["optimizer"] is not None:
                    state["optimizer"] = merge_optimizer_state(
                        state["optimizer"], part["optimizer"], part["expert"]
                    )
        state["world"] = {
            "world_size": self.world_size,
            "layout": self.describe(),
            "expert_parallel": self.expert is not None,
        }
        state["ranks"] = [{"global_rng": p["global_rng"], "sampler": p["sampler"]} for p in gathered]
        return state

    def restore_state(self, state: dict[str, Any], setup: TrainingSetup, step: int) -> None:
        from cadence.train.rng import restore_global_rng, seed_everything

        saved = state.get("world", {})
        ranks = state.get("ranks") or []
        same = saved.get("world_size") == self.world_size and saved.get("layout") == self.describe()
        if same and len(ranks) == self.world_size:
            restore_global_rng(ranks[self.rank]["global_rng"])
            return
        if self.rank < len(ranks):
            restore_global_rng(ranks[self.rank]["global_rng"])
        elif self.rank > 0:  # no saved stream for this rank: a fresh one, different from every other rank's
            seed_everything(self.seed(setup.cfg.train.seed) + 7919 * step)
        if self.is_main:
            log.warning(
                "resume: step %d was saved by %s (%s), this run is %d processes (%s): weights, optimizer, "
                "schedules and the noise streams continue exactly; the sampler regroups the rest of the "
                "epoch and ranks without a saved stream draw LoRA dropout from a fresh one (docs/distributed.md)",
                step,
                f"{saved.get('world_size', 1)} process(es)",
                saved.get("layout", "one process"),
                self.world_size,
                self.describe(),
            )

    def close(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
        if not dist.is_initialized():
            return
        if self._owns_group:
            dist.destroy_process_group()
            return
        dist.barrier(group=self.control)  # nobody leaves a group another rank still uses
        for group in self._groups:
            dist.destroy_process_group(group)


class _AboveInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO


def _own_lrs(result: dict, expert: str, optimizer: torch.optim.Optimizer) -> dict:
    """A line's learning rates. Scheduler-driven ones are the same on every rank (each rank steps the
    schedule at every step); an optimizer that sets its own step size from its state (automagic's lr mask,
    Prodigy's d) knows it only on the ranks that train that expert, so a line keeps only its own expert's
    (the other expert's values are on that expert's lines)."""
    state_driven = hasattr(optimizer, "get_learning_rates") or any("d" in g for g in optimizer.param_groups)
    if not state_driven:
        return result
    foreign = set()
    for group in optimizer.param_groups:
        if group.get("expert") not in (None, expert):
            foreign |= {f"lr_{group.get('name')}", f"lr_{group.get('expert')}"}
    return {**result, "lrs": {k: v for k, v in result["lrs"].items() if k not in foreign}}


def merge_optimizer_state(base: dict[str, Any], owner: dict[str, Any], expert: str) -> dict[str, Any]:
    """`base` (rank 0's optimizer state) with `expert`'s part taken from `owner` (the rank that trains it).

    Two layouts: a torch optimizer's (per-parameter state by index, groups tagged with `expert`) and
    `PerExpertOptimizer`'s (one inner state per expert)."""
    if "per_expert" in base:
        merged = dict(base)
        merged["per_expert"] = {**base["per_expert"], expert: owner["per_expert"][expert]}
        return merged
    indices = {i for g in owner["param_groups"] if g.get("expert") == expert for i in g["params"]}
    state = {i: v for i, v in base["state"].items() if i not in indices}
    state.update({i: v for i, v in owner["state"].items() if i in indices})
    return {**base, "state": state}
