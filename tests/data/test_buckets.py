from cadence.config.schema import DatasetConfig
from cadence.data.buckets import (
    bucket_size,
    center_crop_box,
    cover_size,
    fixed_bucket,
    over_budget,
    pixel_budgets,
)


def test_bucket_keeps_aspect_under_budget_and_multiple():
    w, h = bucket_size(1920, 1080, 512 * 512, 16)
    assert (w, h) == (672, 384)
    assert w * h <= 512 * 512 and w % 16 == 0 and h % 16 == 0


def test_bucket_never_upscales_small_sources():
    assert bucket_size(300, 200, 512 * 512, 16) == (288, 192)
    assert bucket_size(96, 64, 512 * 512, 32) == (96, 64)


def test_bucket_respects_spatial_multiple_of_ti2v():
    w, h = bucket_size(1280, 704, 704 * 704, 32)
    assert w % 32 == 0 and h % 32 == 0 and w * h <= 704 * 704
    assert (w, h) == (928, 512)


def test_bucket_tiny_source_gets_one_multiple():
    assert bucket_size(10, 10, 512 * 512, 16) == (16, 16)


def test_portrait_is_transposed_landscape():
    assert bucket_size(1080, 1920, 480 * 480, 16) == tuple(reversed(bucket_size(1920, 1080, 480 * 480, 16)))


def test_budgets_from_resolution_or_max_pixels():
    assert pixel_budgets(DatasetConfig(folder_path="x", resolution=[256, 512, 256])) == [256 * 256, 512 * 512]
    assert pixel_budgets(
        DatasetConfig(folder_path="x", resolution=[512], max_pixels_per_frame=400 * 400)
    ) == [160000]


def test_cover_then_center_crop():
    cw, ch = cover_size(1920, 1080, 672, 368)
    assert cw >= 672 and ch >= 368 and (cw == 672 or ch == 368)
    left, top, right, bottom = center_crop_box(cw, ch, 672, 368)
    assert (right - left, bottom - top) == (672, 368)
    assert abs(left - (cw - right)) <= 1 and abs(top - (ch - bottom)) <= 1


def test_a_strip_never_gets_a_bucket_over_the_pixel_budget():
    """A side raised to one multiple used to keep the other side's full length: 2000x10 under a 64x64
    budget gave 896x16 (3.5x the budget). The long side is now cut back into the budget."""
    for width, height in ((2000, 10), (10, 2000), (5000, 40), (100000, 16)):
        w, h = bucket_size(width, height, 64 * 64, 16)
        assert w * h <= 64 * 64 and w % 16 == 0 and h % 16 == 0, (width, height, w, h)
        assert over_budget(width, height, 64 * 64, 16)
    assert not over_budget(1920, 1080, 64 * 64, 16) and bucket_size(1920, 1080, 64 * 64, 16) == (80, 48)


def test_upscale_and_fixed_size():
    assert bucket_size(300, 200, 512 * 512, 16) == (288, 192)  # never up by default
    w, h = bucket_size(300, 200, 512 * 512, 16, upscale=True)
    assert (w, h) == (624, 416) and w * h <= 512 * 512
    assert fixed_bucket([830, 470], 16) == (816, 464)


def test_index_crops_a_strip_into_the_budget_and_says_so(tmp_path, make_config):
    from PIL import Image

    from cadence.data.dataset import build_dataset_index, load_pixels

    folder = tmp_path / "strips"
    folder.mkdir()
    Image.new("RGB", (2000, 10), (200, 30, 30)).save(folder / "banner.png")
    Image.new("RGB", (96, 64), (30, 200, 30)).save(folder / "normal.png")
    index = build_dataset_index(make_config(folder, resolution=[64]), 16, 4, 16, seed=0)
    banner = next(it for it in index.train_items if it.path.name == "banner.png")
    assert banner.width * banner.height <= 64 * 64
    assert load_pixels(banner).shape == (3, 1, banner.height, banner.width)
    lines = [w for w in index.warnings if "too narrow for the pixel budget" in w]
    assert len(lines) == 1 and "banner.png (2000x10)" in lines[0] and "normal.png" not in lines[0]


def test_fixed_size_crops_every_file_to_one_size(tmp_path, make_config):
    from PIL import Image

    from cadence.data.dataset import build_dataset_index

    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.new("RGB", (300, 100)).save(folder / "wide.png")
    Image.new("RGB", (50, 120)).save(folder / "tall.png")
    index = build_dataset_index(make_config(folder, fixed_size=[64, 48]), 16, 4, 16, seed=0)
    assert {it.bucket for it in index.train_items} == {(64, 48, 1)}
