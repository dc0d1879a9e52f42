"""The parallel parts on their own: the world from launch variables, the group plan, sharded sampling,
the optimizer-state merge of expert parallel, the config refusals at their keys, the UI's GPU slots."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from cadence.config.errors import ConfigError
from cadence.config.loader import load_config_dict
from cadence.data.media import MediaItem
from cadence.data.sampler import BucketBatchSampler
from cadence.parallel.config_checks import TWO_EXPERT_ARCHS
from cadence.parallel.distributed import merge_optimizer_state
from cadence.parallel.groups import plan_groups
from cadence.parallel.launch import world_issues
from cadence.parallel.world import World, WorldError, read_world
from cadence.train.rng import TrainingRandomness

from .conftest import job

LAUNCHED = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
RENDEZVOUS = {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}


def test_the_world_comes_from_torchruns_variables_and_a_broken_one_names_the_variable() -> None:
    assert read_world({}) == World()
    world = read_world({**LAUNCHED, **RENDEZVOUS})
    assert (world.rank, world.world_size, world.local_rank, world.nodes, world.is_main) == (3, 4, 1, 2, False)
    for broken, named in (
        ({**LAUNCHED, **RENDEZVOUS, "RANK": "4"}, "RANK=4"),
        ({"WORLD_SIZE": "2", **RENDEZVOUS}, "RANK is not set"),
        ({**LAUNCHED, **RENDEZVOUS, "LOCAL_WORLD_SIZE": "3"}, "not a multiple of LOCAL_WORLD_SIZE"),
        ({**LAUNCHED}, "MASTER_ADDR is not set"),
        ({**LAUNCHED, **RENDEZVOUS, "LOCAL_RANK": "x"}, "LOCAL_RANK='x'"),
    ):
        with pytest.raises(WorldError, match=named):
            read_world(broken)


def test_validate_reports_the_world_it_would_run_in() -> None:
    """`cadence validate` under torchrun: the launch variables, GPUs per machine, backend and groups."""
    assert world_issues("cpu", "auto", False, 1, env={}) == []
    broken = world_issues("cpu", "auto", False, 1, env={"WORLD_SIZE": "2", **RENDEZVOUS})
    assert broken[0][0] == ("parallel",) and "RANK is not set" in broken[0][1]
    launched = {**LAUNCHED, **RENDEZVOUS, "WORLD_SIZE": "3", "RANK": "1", "LOCAL_WORLD_SIZE": "3"}
    issues = dict(world_issues("cpu", "nccl", True, 2, env=launched))
    assert "nccl needs CUDA GPUs" in issues[("parallel", "backend")]
    assert "cannot be split into 2 equal expert groups" in issues[("parallel", "expert_parallel")]
    if torch.cuda.device_count() < 3:
        gpus = dict(world_issues("cuda", "gloo", False, 1, env=launched))
        assert "3 processes on this machine" in gpus[("device",)]


def test_expert_groups_split_the_world_in_model_order() -> None:
    plan = plan_groups(4, ["high_noise", "low_noise"], expert_parallel=True)
    assert plan.members == {"high_noise": (0, 1), "low_noise": (2, 3)}
    assert (plan.expert_of(1), plan.expert_of(2), plan.leader("low_noise")) == ("high_noise", "low_noise", 2)
    assert plan_groups(3, ["high_noise", "low_noise"], False).group_of(2) == (0, 1, 2)
    with pytest.raises(ValueError, match="multiple of 2"):
        plan_groups(3, ["high_noise", "low_noise"], expert_parallel=True)
    with pytest.raises(ValueError, match="both experts trained"):
        plan_groups(2, ["high_noise"], expert_parallel=True)


def _items(sizes: list[tuple[int, int, int]]) -> list[MediaItem]:
    return [
        MediaItem(Path(f"f{i}.mp4"), "video", "c", 0, w, h, tuple(range(f)), 16.0, 1, 1)
        for i, (w, h, f) in enumerate(sizes)
    ]


def test_ranks_take_disjoint_rows_of_the_one_process_batch_from_one_bucket() -> None:
    items = _items([(64, 48, 17)] * 8 + [(48, 64, 17)] * 4 + [(64, 48, 1)] * 3)
    one = BucketBatchSampler(items, batch_size=4, seed=3)
    ranks = [BucketBatchSampler(items, batch_size=2, seed=3, shards=2, shard=r) for r in range(2)]
    for _ in range(3 * len(one)):
        expected = one.next_batch()
        parts = [r.next_batch() for r in ranks]
        assert all(len(p) == 2 and len({items[i].bucket for i in p}) == 1 for p in parts)
        assert items[parts[0][0]].bucket == items[parts[1][0]].bucket
        if len(expected) == 4:
            assert parts[0] + parts[1] == expected
        else:  # a bucket's smaller last batch, filled up from the start of that bucket's order
            assert (parts[0] + parts[1])[: len(expected)] == expected
    assert ranks[0].state_dict()["position"] == ranks[1].state_dict()["position"] == one.position


def test_another_world_size_continues_the_epoch_from_its_consumed_rows() -> None:
    items = _items([(64, 48, 17)] * 12 + [(64, 48, 1)] * 4)
    two = [BucketBatchSampler(items, 1, seed=5, shards=2, shard=r) for r in range(2)]
    for _ in range(3):
        for r in two:
            r.next_batch()
    same = BucketBatchSampler(items, 2, seed=5)  # 1 process x 2: the same global batch, the same batches
    same.load_state_dict(two[0].state_dict())
    reference = BucketBatchSampler(items, 2, seed=5)
    for _ in range(3):
        reference.next_batch()
    assert [same.next_batch() for _ in range(5)] == [reference.next_batch() for _ in range(5)]
    four = BucketBatchSampler(items, 1, seed=5, shards=4, shard=0)  # a global batch of 4: regrouped
    four.load_state_dict(two[0].state_dict())
    assert four.epoch == 0 and four.position * 4 >= 6 > (four.position - 1) * 4


def test_expert_parallel_merges_each_experts_optimizer_state_from_its_own_ranks() -> None:
    groups = [
        {"params": [0, 1], "expert": "high_noise", "lr": 1.0},
        {"params": [2, 3], "expert": "low_noise", "lr": 1.0},
    ]
    high_rank = {"state": {0: {"m": 1}, 1: {"m": 2}}, "param_groups": groups}
    low_rank = {"state": {2: {"m": 3}, 3: {"m": 4}}, "param_groups": groups}
    merged = merge_optimizer_state(high_rank, low_rank, "low_noise")
    assert merged["state"] == {0: {"m": 1}, 1: {"m": 2}, 2: {"m": 3}, 3: {"m": 4}}
    per = merge_optimizer_state(
        {"per_expert": {"high_noise": "h", "low_noise": "stale"}},
        {"per_expert": {"low_noise": "l"}},
        "low_noise",
    )
    assert per == {"per_expert": {"high_noise": "h", "low_noise": "l"}}


def test_each_expert_draws_from_its_own_streams_and_an_old_shared_state_still_loads() -> None:
    a = TrainingRandomness(7, ("high_noise", "low_noise"))
    first = torch.randn(4, generator=a.of("high_noise").noise)
    assert not torch.equal(first, torch.randn(4, generator=a.of("low_noise").noise))
    assert torch.equal(first, torch.randn(4, generator=TrainingRandomness(7).of("main").noise))  # job seed's
    old = {"noise": a.of("high_noise").noise.get_state(), "timesteps": torch.Generator().get_state()}
    old["captions"] = random.Random(1).getstate()
    b = TrainingRandomness(7, ("high_noise", "low_noise"))
    b.load_state_dict(old)
    assert torch.equal(
        torch.randn(4, generator=b.of("high_noise").noise), torch.randn(4, generator=a.of("high_noise").noise)
    )


def _refusals(tmp_path: Path, parallel: dict, **changes) -> dict[str, str]:
    body = job(Path("Wan-AI/Wan2.2-I2V-A14B-Diffusers"), tmp_path, tmp_path / "out", parallel=parallel)
    for dotted, value in changes.items():
        section, _, key = dotted.rpartition("__")
        node = body
        for part in section.split("__") if section else []:
            node = node.setdefault(part, {})
        node[key] = value
    with pytest.raises(ConfigError) as error:
        load_config_dict(body, tmp_path / "job.yaml")
    return dict(error.value.issues)


def test_settings_the_parallel_section_rules_out_are_refused_at_their_keys(tmp_path: Path) -> None:
    issues = _refusals(
        tmp_path, {"shard_base": True}, model__low_vram=True, model__blocks_to_swap=2, train__compile=True
    )
    assert "model.low_vram" in issues and "sharded over the GPUs" in issues["model.low_vram"]
    assert "model.blocks_to_swap" in issues and "train.compile" in issues
    assert "network.type" in _refusals(tmp_path, {"shard_base": True}, network__type="dora")
    assert "model.qtype" in _refusals(
        tmp_path, {"shard_base": True}, model__quantize=True, model__qtype="qint8"
    )
    issues = _refusals(
        tmp_path, {"expert_parallel": True}, train__switch_boundary_every=2, save__save_every=5
    )
    assert "switch_boundary_every: 1" in issues["train.switch_boundary_every"]
    assert "Use 6 or 4" in issues["save.save_every"]
    issues = _refusals(tmp_path, {"expert_parallel": True}, model__model_kwargs={"train_low_noise": False})
    assert "trains one" in issues["parallel.expert_parallel"]
    issues = _refusals(tmp_path, {"expert_parallel": True, "shard_base": True})
    assert "not supported yet" in issues["parallel.shard_base"]


def test_the_config_checks_know_the_registrys_two_expert_archs() -> None:
    from cadence.models.registry import TWO_EXPERT

    assert tuple(TWO_EXPERT) == TWO_EXPERT_ARCHS


def test_the_ui_runs_several_gpus_through_the_venvs_torchrun_holding_each_gpus_slot(tmp_path: Path) -> None:
    import os

    from cadence.ui.runner import JobRunner
    from cadence.ui.store import Job, JobStore

    store = JobStore(tmp_path / "db.sqlite")
    runner = JobRunner(store, tmp_path, train_cmd=("true",), gpus=["0", "1", "2"])
    assert runner.device_problem("0,2") is None and runner.device_problem("1") is None
    assert "distinct GPUs" in runner.device_problem("0,0") and runner.device_problem("0,7")
    assert runner.device_problem("cpu,0")

    def make(job_id: str, device: str, status: str) -> Job:
        return Job(
            job_id, job_id, status, device, "", str(tmp_path / f"{job_id}.yaml"), str(tmp_path / job_id)
        )

    command = runner.command(make("a", "0,2", "created"))
    assert command[:3] == [command[0], "-m", "torch.distributed.run"] and "--nproc_per_node=2" in command
    assert command[-4:] == ["-m", "cadence", "train", str(tmp_path / "a.yaml")]
    store.add(make("a", "0,2", "running"))
    store.update("a", pid=os.getpid(), started_at=0.0)  # alive: this very process holds GPUs 0 and 2
    store.add(make("b", "2", "queued"))
    store.add(make("c", "1", "queued"))
    runner.schedule()
    assert store.get("b").status == "queued"  # GPU 2 is held by the two-GPU job
    assert store.get("c").status == "running"
