import random

from cadence.data.captions import CaptionStats, apply_caption_dropout, caption_warnings, read_caption


def test_caption_file_trigger_and_default(tmp_path):
    media = tmp_path / "clip.mp4"
    (tmp_path / "clip.txt").write_text("  [trigger] walks, [trigger] waves \n")
    stats = CaptionStats()
    assert read_caption(media, "txt", None, "sks", stats) == "sks walks, sks waves"
    # the seed trainer prepends the trigger word to captions that lack it
    assert read_caption(tmp_path / "other.mp4", "txt", "a video", "sks", stats) == "sks a video"
    assert read_caption(tmp_path / "third.mp4", ".txt", None, "sks", stats) == "sks"
    assert read_caption(tmp_path / "third.mp4", ".txt", "[name] runs", "sks", stats) == "sks runs"
    assert stats.missing == 3
    lines = caption_warnings(stats, tmp_path, "txt", None, total=4)
    assert len(lines) == 1 and "3 of 4" in lines[0] and str(tmp_path) in lines[0]


def test_trigger_without_trigger_word_is_removed_and_warned(tmp_path):
    (tmp_path / "a.caption").write_text("[trigger] dances")
    stats = CaptionStats()
    assert read_caption(tmp_path / "a.png", "caption", None, None, stats) == "dances"
    lines = caption_warnings(stats, tmp_path, "caption", None, total=1)
    assert any("trigger_word" in line for line in lines)


def test_caption_dropout_rate_and_determinism():
    rng = random.Random(0)
    out = [apply_caption_dropout("text", 0.25, rng) for _ in range(4000)]
    dropped = out.count("")
    assert 850 < dropped < 1150 and set(out) == {"", "text"}
    assert [apply_caption_dropout("t", 0.5, random.Random(7)) for _ in range(3)] == [
        apply_caption_dropout("t", 0.5, random.Random(7)) for _ in range(3)
    ]
    assert all(apply_caption_dropout("t", 0.0, rng) == "t" for _ in range(100))
    assert all(apply_caption_dropout("t", 1.0, rng) == "" for _ in range(100))


def test_caption_encodings_of_real_editors(tmp_path):
    """UTF-8 with a BOM, UTF-16 (Notepad's "Unicode") and Latin-1 files all give the caption's text."""
    files = {
        "bom.txt": "\ufeffcafé scene".encode("utf-8"),
        "utf16.txt": "café scene".encode("utf-16"),  # with its BOM
        "latin1.txt": "café scene".encode("latin-1"),
    }
    for name, raw in files.items():
        (tmp_path / name).write_bytes(raw)
    stats = CaptionStats()
    texts = [
        read_caption(tmp_path / name.replace(".txt", ".mp4"), "txt", None, None, stats) for name in files
    ]
    assert texts == ["café scene"] * 3
    assert stats.missing == 0 and stats.legacy_encoding == [str(tmp_path / "latin1.txt")]
    lines = caption_warnings(stats, tmp_path, "txt", None, total=3)
    assert len(lines) == 1 and "Windows-1252" in lines[0] and "latin1.txt" in lines[0]
