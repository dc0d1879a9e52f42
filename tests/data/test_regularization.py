"""is_reg batches: every other step of each expert, all micro-batches of a step of one kind, and a resumed
sampler taking exactly the batches an uninterrupted one takes."""

from __future__ import annotations

from pathlib import Path

from cadence.data.media import MediaItem
from cadence.data.regularization import RegularizedSampler, with_regularization
from cadence.data.sampler import BucketBatchSampler
from cadence.schedule.experts import ExpertRouter


def _items(train: int, reg: int) -> list[MediaItem]:
    def item(n: int, is_reg: bool) -> MediaItem:
        return MediaItem(
            Path(f"/d/{n}.png"), "image", f"c{n}", int(is_reg), 32, 32, (0,), 0.0, 1, 1, is_reg=is_reg
        )

    return [item(n, n % 3 == 2 and n < 3 * reg) for n in range(train + reg)]


def _run(sampler: RegularizedSampler, router: ExpertRouter, steps: int, accumulation: int) -> list[tuple]:
    out = []
    for _ in range(steps):
        expert = router.current()
        batches = [sampler.next_batch() for _ in range(accumulation)]
        out.append((expert, [[sampler_items[i].is_reg for i in b] for b in batches], batches))
        router.advance()
    return out


sampler_items = _items(8, 4)


def test_each_expert_alternates_training_and_regularisation_steps() -> None:
    router = ExpertRouter(["high_noise", "low_noise"], switch_every=1)
    base = BucketBatchSampler(sampler_items, batch_size=2, seed=3)
    sampler = with_regularization(base, sampler_items, router.current, accumulation=2)
    assert isinstance(sampler, RegularizedSampler)
    steps = _run(sampler, router, 12, 2)
    for expert in ("high_noise", "low_noise"):
        kinds = [flags for e, flags, _ in steps if e == expert]
        for n, micro in enumerate(kinds):  # both micro-batches of a step are of one kind
            assert all(all(f) == (n % 2 == 1) and len(set(f)) == 1 for f in micro), (expert, n, micro)
    # ai-toolkit's global parity would give all regularisation batches to one expert here
    assert {e for e, flags, _ in steps if flags[0][0]} == {"high_noise", "low_noise"}
    assert with_regularization(base, _items(6, 0), router.current, 1) is base  # no reg items: untouched


def test_a_resumed_sampler_takes_the_same_batches() -> None:
    def fresh() -> tuple[RegularizedSampler, ExpertRouter]:
        router = ExpertRouter(["high_noise", "low_noise"], switch_every=3)
        base = BucketBatchSampler(sampler_items, batch_size=1, seed=9)
        return RegularizedSampler(sampler_items, base, router.current, 1), router

    straight, router = fresh()
    whole = _run(straight, router, 20, 1)
    first, router_a = fresh()
    _run(first, router_a, 7, 1)
    resumed, router_b = fresh()
    resumed.load_state_dict(first.state_dict())
    router_b.load_state_dict(router_a.state_dict())
    assert _run(resumed, router_b, 13, 1) == whole[7:]
    assert "epoch" in resumed.state_dict()  # the metrics line reads the training sampler's epoch


def test_regularisation_keys_that_cannot_act_are_refused_at_the_key() -> None:
    from cadence.config import ConfigError, load_config_dict

    def issues(datasets: list[dict], **train: object) -> dict[str, str]:
        body = {
            "name": "t",
            "model": {"name_or_path": "Wan-AI/Wan2.2-I2V-A14B-Diffusers", "arch": "wan22_14b_i2v"},
            "datasets": datasets,
            "train": {"disable_sampling": True, **train},
        }
        try:
            load_config_dict(body)
        except ConfigError as err:
            return dict(err.issues)
        return {}

    assert "no dataset is one" in issues([{"folder_path": "/x"}], reg_weight=0.5)["train.reg_weight"]
    only_reg = issues([{"folder_path": "/x", "is_reg": True}, {"folder_path": "/e", "is_eval": True}])
    assert list(only_reg) == ["datasets[0].is_reg"] and "must not be is_reg" in only_reg["datasets[0].is_reg"]
    assert issues([{"folder_path": "/x"}, {"folder_path": "/r", "is_reg": True}], reg_weight=0.5) == {}
