"""`--output-format jsonl`: captions.jsonl that the dataset loader reads, torn-line repair, overwrite compaction."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from cadence.cli import build_parser
from cadence.config.schema import JobConfig
from cadence.data.captions import CaptionStats, parse_jsonl_captions, read_caption
from cadence.data.dataset import build_dataset_index
from cadence.data.synthetic import render_frame, write_clip
from cadence.models.tiny_vlm import write_tiny_vlm
from cadence.tools.caption import options_from_args, run_captions


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_vlm(tmp_path_factory.mktemp("vlm") / "qwen2_5_vl", "qwen2_5_vl", seed=1)


def _folder(root: Path) -> Path:
    root.mkdir()
    write_clip(root / "clip.mp4", 64, 48, 9, 16, seed=0)
    for i in range(2):
        Image.fromarray(render_frame(i, 64, 48, seed=i)).save(root / f"img_{i}.png")
    return root


def _run(folder: Path, vlm: Path, *extra: str):
    argv = ["caption", str(folder), "--model", str(vlm), "--max-new-tokens", "5", "--frames", "2"]
    return run_captions(
        options_from_args(build_parser().parse_args([*argv, "--output-format", "jsonl", *extra]))
    )


def _lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines()]


def test_jsonl_is_what_the_loader_reads(tmp_path: Path, vlm: Path) -> None:
    folder = _folder(tmp_path / "data")
    tally = _run(folder, vlm)
    assert tally.written == 3 and not list(folder.glob("*.txt"))
    lines = _lines(folder)
    assert [next(k for k in entry if k != "caption") for entry in lines] == [
        "video_path",
        *["image_path"] * 2,
    ]
    assert {e.get("video_path") or e.get("image_path") for e in lines} == {
        "clip.mp4",
        "img_0.png",
        "img_1.png",
    }
    stats = CaptionStats()
    for entry in lines:
        name = entry.get("video_path") or entry["image_path"]
        assert read_caption(folder / name, "txt", "default", None, stats) == entry["caption"].strip()
    assert stats.missing == 0
    # a same-stem text file wins over the jsonl (the UI editor writes those)
    (folder / "img_0.txt").write_text("edited in the UI")
    assert read_caption(folder / "img_0.png", "txt", None, None, stats) == "edited in the UI"


def test_torn_line_is_repaired_and_overwrite_compacts(tmp_path: Path, vlm: Path) -> None:
    folder = _folder(tmp_path / "data")
    jsonl = folder / "captions.jsonl"
    jsonl.write_text('{"image_path": "img_0.png", "caption": "kept one"}\n{"image_path": "img_1.png", "capt')
    assert parse_jsonl_captions(jsonl.read_bytes()).bad_lines == 1  # what a kill -9 mid-line leaves
    tally = _run(folder, vlm)
    assert (tally.written, tally.kept) == (2, 1)
    lines = _lines(folder)  # every line parses again
    assert lines[0] == {"image_path": "img_0.png", "caption": "kept one"} and len(lines) == 3

    (folder / "clip.txt").write_text("a clip caption file")
    replaced = _run(folder, vlm, "--overwrite")
    assert (replaced.written, replaced.shadowed) == (2, 1)  # clip.txt hides any jsonl line for clip.mp4
    names = [e.get("video_path") or e["image_path"] for e in _lines(folder)]
    assert sorted(names) == ["clip.mp4", "img_0.png", "img_1.png"]  # one line per file after compaction
    assert next(e for e in _lines(folder) if e.get("image_path") == "img_0.png")["caption"] != "kept one"


def test_training_index_reads_the_jsonl_without_warnings(tmp_path: Path, vlm: Path, caplog) -> None:
    folder = _folder(tmp_path / "data")
    _run(folder, vlm, "--trigger-word", "sks")
    cfg = JobConfig(
        name="run",
        training_folder=tmp_path / "out",
        trigger_word="sks",
        model={"name_or_path": "tiny", "arch": "wan22_14b_i2v"},
        datasets=[{"folder_path": folder, "resolution": [64], "num_frames": 5}],
    )
    with caplog.at_level(logging.WARNING):
        index = build_dataset_index(cfg, 16, 4, 16)
    captions = {Path(name).name: text for name, text in _named(folder).items()}
    assert {item.path.name: item.caption for item in index.items} == captions
    assert all(text.startswith("sks") for text in captions.values())
    assert not index.warnings and "jsonl" not in caplog.text  # neither "no caption" nor "unsupported .jsonl"


def _named(folder: Path) -> dict[str, str]:
    return {e.get("video_path") or e["image_path"]: e["caption"] for e in _lines(folder)}


def test_musubi_style_absolute_paths_match_by_name(tmp_path: Path) -> None:
    data = b'{"video_path": "/elsewhere/clips/a.mp4", "caption": "x"}\n[1, 2]\n{"image_path": "b.png"}\n'
    parsed = parse_jsonl_captions(data)
    assert parsed.captions == {"a.mp4": "x"} and parsed.bad_lines == 2
