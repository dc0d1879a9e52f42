from cadence.config.schema import DatasetConfig
from cadence.data.buckets import bucket_size, center_crop_box, cover_size, pixel_budgets


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
