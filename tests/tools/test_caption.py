"""`cadence caption` in-process: a real tiny Qwen2.5-VL (and Qwen3-VL) through transformers' own classes and
processor, real generate, over real mp4/png files decoded by the training decoders."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cadence.cli import build_parser
from cadence.data.captions import CaptionStats, read_caption
from cadence.data.frames import plan_frames
from cadence.data.synthetic import render_frame, write_clip
from cadence.data.video import probe_video
from cadence.models import caption_vlm
from cadence.models.caption_vlm import CaptionModelError, Visual, load_caption_model
from cadence.models.tiny_vlm import write_tiny_vlm
from cadence.perf.fp8 import Fp8Linear
from cadence.tools import caption_args
from cadence.tools.caption import caption_command, options_from_args, run_captions
from cadence.tools.caption_media import FrameOptions, fitted_size, load_visual
from cadence.tools.caption_output import CaptionOutputError
from cadence.tools.caption_prompts import (
    PromptError,
    custom_prompt,
    default_prompt,
    render_prompt,
    with_trigger,
)

TOKENS = 6


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_vlm(tmp_path_factory.mktemp("vlm") / "qwen2_5_vl", "qwen2_5_vl", seed=0)


@pytest.fixture(scope="module")
def model(vlm: Path):
    return load_caption_model(str(vlm), torch.device("cpu"), torch.float32)


def make_folder(folder: Path, clips: int = 2, images: int = 2, broken: bool = True) -> Path:
    """Real media the loader trains on: mp4 clips (17 frames at 16 fps) and PNG images, no captions."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(clips):
        write_clip(folder / f"clip_{i}.mp4", 64, 48, 17, 16, seed=i)
    for i in range(images):
        Image.fromarray(render_frame(i, 80, 56, seed=10 + i)).save(folder / f"still_{i}.png")
    if broken:
        (folder / "broken.mp4").write_bytes(b"this is not a video" * 20)
    return folder


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["caption", *argv])


def opts(folder: Path, vlm: Path, *extra: str):
    return options_from_args(parse(str(folder), "--model", str(vlm), "--max-new-tokens", str(TOKENS), *extra))


def test_tiny_models_run_through_transformers_classes(tmp_path: Path, vlm: Path, model) -> None:
    assert type(model.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    still = Visual((Image.fromarray(render_frame(0, 80, 56, seed=1)),))
    frames = tuple(Image.fromarray(render_frame(t, 64, 48, seed=2)) for t in range(3))
    inputs = model.inputs(Visual(frames, (0.0, 0.5, 1.0)), "Describe the motion.")
    assert inputs["image_grid_thw"].shape[0] == 3  # one image per sampled frame
    prompt_ids = inputs["input_ids"][0].tolist()
    image_token = model.processor.image_token_id
    merge = model.processor.image_processor.merge_size
    expected = int(inputs["image_grid_thw"].prod(dim=1).sum()) // merge**2
    assert prompt_ids.count(image_token) == expected  # the processor's own placeholder expansion
    text = model.processor.tokenizer.decode(prompt_ids)
    assert "Frame 2 (0.50 s):" in text and "Describe the motion." in text
    caption = model.caption(still, "Describe.", TOKENS)
    assert caption.text and caption.new_tokens <= TOKENS
    assert model.caption(still, "Describe.", TOKENS) == caption  # greedy: the same caption every time

    qwen3 = write_tiny_vlm(tmp_path / "qwen3", "qwen3_vl", seed=0)
    other = load_caption_model(str(qwen3), torch.device("cpu"), torch.float32)
    assert type(other.model).__name__ == "Qwen3VLForConditionalGeneration"
    assert other.caption(Visual(frames, (0.0, 0.5, 1.0)), "Describe.", TOKENS).text


def test_fp8_quantizes_the_language_model_and_still_captions(vlm: Path) -> None:
    fp8 = load_caption_model(str(vlm), torch.device("cpu"), torch.float32, quantize="fp8")
    decoder_linears = [m for m in fp8.model.get_decoder().modules() if isinstance(m, torch.nn.Linear)]
    assert decoder_linears and all(isinstance(m, Fp8Linear) for m in decoder_linears)
    assert not any(isinstance(m, Fp8Linear) for m in fp8.model.model.visual.modules())
    still = Visual((Image.fromarray(render_frame(0, 80, 56, seed=1)),))
    assert fp8.caption(still, "Describe.", TOKENS).text


def test_nf4_is_refused_clearly_where_it_cannot_run(tmp_path: Path, vlm: Path, capsys) -> None:
    # this venv has no bitsandbytes (the message users without it see); with it, a CPU device is refused
    installed = caption_vlm.importlib.util.find_spec("bitsandbytes") is not None
    expected = "runs on CUDA GPUs only" if installed else "needs bitsandbytes, which is not installed"
    with pytest.raises(CaptionModelError, match=expected):
        caption_vlm._quantization("nf4", torch.device("cpu"), torch.bfloat16)
    folder = make_folder(tmp_path / "data", clips=0, images=1, broken=False)
    assert (
        caption_command(parse(str(folder), "--model", str(vlm), "--quantize", "nf4", "--device", "cpu")) == 2
    )
    assert expected in capsys.readouterr().err
    assert not (folder / "still_0.txt").exists()


def test_not_a_vlm_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CaptionModelError, match="Qwen-VL families"):
        load_caption_model(str(folder), torch.device("cpu"), torch.float32)


def test_clip_frames_are_planned_over_the_clip_at_real_times(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "c.mp4", 96, 64, 33, 16, seed=3)
    visual = load_visual(clip, FrameOptions(frames=5, video_max_size=48))
    info = probe_video(clip)
    plan = plan_frames(
        33, info.fps, 5, shrink=True, target_fps=info.fps, seed=0, key="c.mp4", temporal_multiple=1
    )
    assert visual.times == tuple(i / info.fps for i in plan.indices)
    assert visual.times[0] == 0.0 and visual.times[-1] == pytest.approx(32 / 16)  # first and last frame
    assert {im.size for im in visual.images} == {(48, 32)}  # aspect kept, longer side 48
    first, last = np.asarray(visual.images[0]), np.asarray(visual.images[-1])
    assert np.abs(first.astype(int) - last.astype(int)).mean() > 1  # different moments of the clip
    short = write_clip(tmp_path / "short.mp4", 32, 32, 3, 16, seed=1)
    assert len(load_visual(short, FrameOptions(frames=8)).images) == 3  # a short clip gives all its frames
    png = tmp_path / "big.png"
    Image.fromarray(render_frame(0, 400, 100, seed=1)).save(png)
    still = load_visual(png, FrameOptions(max_size=200))
    assert still.times is None and still.images[0].size == (200, 50)
    assert fitted_size(30, 20, 1280) == (30, 20)  # never enlarged


def test_prompts_and_trigger_word() -> None:
    motion_clip, motion_image = default_prompt("motion", True, None), default_prompt("motion", False, None)
    assert "camera moves" in motion_clip and motion_clip != motion_image
    character = default_prompt("character", True, "sks")
    assert "'sks'" in character and "video clip" in character
    assert "{" not in default_prompt("character", False, None)
    template = custom_prompt("Describe {media}.\\nName it {trigger}.", None)
    assert render_prompt(template, "motion", True, "zx") == "Describe video clip.\nName it zx."
    with pytest.raises(PromptError, match="not both"):
        custom_prompt("a", "b")
    with pytest.raises(PromptError, match="empty"):
        custom_prompt("  ", None)
    assert with_trigger("a dog runs", "sks") == "sks, a dog runs"
    assert with_trigger("sks runs", "sks") == "sks runs"
    assert caption_args.DEFAULT_MODEL == caption_vlm.GPU_MODELS[0]
    assert caption_args.QUANTIZE_CHOICES == caption_vlm.QUANTIZE


def test_captions_appear_existing_kept_bad_files_counted(tmp_path: Path, vlm: Path) -> None:
    folder = make_folder(tmp_path / "data")
    (folder / "still_1.txt").write_text("my own caption\n")
    status = tmp_path / "status.json"
    tally = run_captions(
        opts(folder, vlm, "--frames", "3", "--status-file", str(status), "--trigger-word", "sks")
    )
    assert (tally.total, tally.written, tally.kept, tally.failed) == (5, 3, 1, 1)
    assert "broken.mp4" in tally.failures[0] and "not a readable video" in tally.failures[0]
    assert (folder / "still_1.txt").read_text() == "my own caption\n"  # never overwritten by default
    for name in ("clip_0", "clip_1", "still_0"):
        text = (folder / f"{name}.txt").read_text()
        assert text.startswith("sks") and text.endswith("\n") and len(text.strip()) > 3
    saved = json.loads(status.read_text())
    assert saved["state"] == "finished" and saved["done"] == 5 and saved["written"] == 3
    assert not list(folder.glob(".*.tmp"))
    # the dataset loader reads what was written
    stats = CaptionStats()
    assert (
        read_caption(folder / "clip_0.mp4", "txt", None, "sks", stats)
        == (folder / "clip_0.txt").read_text().strip()
    )

    # a file that failed is tried again next time (it may be fixed); nothing else left to do: the model is
    # not even loaded (a model path that does not exist is never read)
    (folder / "broken.mp4").unlink()
    again = run_captions(opts(folder, tmp_path / "no_such_model"))
    assert (again.written, again.kept, again.failed) == (0, 4, 0)

    before = {p.name: p.read_text() for p in folder.glob("*.txt")}
    replaced = run_captions(opts(folder, vlm, "--overwrite", "--frames", "2"))
    assert (replaced.written, replaced.kept) == (4, 0)
    assert (folder / "still_1.txt").read_text() != before["still_1.txt"]  # --overwrite replaces the user's


def test_bad_options_name_themselves(tmp_path: Path, vlm: Path, capsys) -> None:
    folder = make_folder(tmp_path / "data", clips=0, images=1, broken=False)
    with pytest.raises(CaptionOutputError, match="media extension"):
        opts(folder, vlm, "--caption-ext", "mp4")
    with pytest.raises(CaptionOutputError, match="--frames 0"):
        opts(folder, vlm, "--frames", "0")
    assert caption_command(parse(str(tmp_path / "missing"))) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert caption_command(parse(str(empty), "--model", str(vlm))) == 2
    assert "holds no images or videos" in capsys.readouterr().err


def test_argument_file_as_the_ui_writes_it(tmp_path: Path, vlm: Path) -> None:
    args = tmp_path / "caption.args"
    args.write_text(f"{tmp_path}\n--model={vlm}\n--trigger-word=-odd @word\n--frames=3\n--overwrite\n")
    parsed = build_parser().parse_args(["caption", f"@{args}"])
    assert (parsed.dataset_dir, parsed.model, parsed.trigger_word) == (str(tmp_path), str(vlm), "-odd @word")
    assert parsed.frames == 3 and parsed.overwrite
