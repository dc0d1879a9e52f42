from pathlib import Path

from cadence.data.media import MediaItem
from cadence.data.sampler import BucketBatchSampler


def _items(n: int) -> list[MediaItem]:
    sizes = [(64, 48, 17), (48, 64, 17), (64, 48, 1)]
    out = []
    for i in range(n):
        w, h, f = sizes[i % 3]
        out.append(
            MediaItem(
                Path(f"f{i}.mp4"),
                "video",
                "c",
                0,
                w,
                h,
                tuple(range(f)),
                16.0,
                1,
                1,
                num_repeats=2 if i == 0 else 1,
            )
        )
    return out


def test_batches_share_a_bucket_and_cover_the_epoch():
    items = _items(20)
    sampler = BucketBatchSampler(items, batch_size=3, seed=1)
    batches = [sampler.next_batch() for _ in range(len(sampler))]
    for batch in batches:
        assert len({items[i].bucket for i in batch}) == 1 and 1 <= len(batch) <= 3
    flat = sorted(i for b in batches for i in b)
    assert flat == sorted(list(range(20)) + [0])  # item 0 repeated twice
    assert sampler.epoch == 0 and sampler.next_batch() and sampler.epoch == 1


def test_deterministic_for_seed_and_different_across_seeds_and_epochs():
    items = _items(30)
    a = BucketBatchSampler(items, 2, seed=5)
    b = BucketBatchSampler(items, 2, seed=5)
    c = BucketBatchSampler(items, 2, seed=6)
    first = [a.next_batch() for _ in range(40)]
    assert first == [b.next_batch() for _ in range(40)]
    assert first != [c.next_batch() for _ in range(40)]
    n = len(a)
    assert first[:n] != first[n : 2 * n]


def test_resume_mid_epoch_equals_uninterrupted_sequence():
    items = _items(25)
    reference = BucketBatchSampler(items, 2, seed=3)
    expected = [reference.next_batch() for _ in range(30)]
    first = BucketBatchSampler(items, 2, seed=3)
    taken = [first.next_batch() for _ in range(7)]
    state = first.state_dict()
    resumed = BucketBatchSampler(items, 2, seed=3)
    resumed.load_state_dict(state)
    assert taken + [resumed.next_batch() for _ in range(23)] == expected


def test_drop_last_and_mismatched_state(caplog):
    items = _items(10)
    sampler = BucketBatchSampler(items, 3, seed=0, drop_last=True)
    assert all(len(sampler.next_batch()) == 3 for _ in range(10))
    state = sampler.state_dict()
    other = BucketBatchSampler(items[:9], 3, seed=0)  # a clip was removed since the checkpoint
    other.load_state_dict(state)
    assert (other.epoch, other.position) == (state["epoch"] + 1, 0)
    assert "num_items 10 -> 9" in caplog.text and "fresh epoch" in caplog.text
