"""`cadence analyze` end to end on real run folders: LoRA files, metrics JSONL, config.yaml."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from cadence.cli import main
from cadence.networks.formats import LoraTensors, save_lora_file
from cadence.tools.analyze import analyze_run
from cadence.tools.run_folder import interval_stats, load_run, read_metrics


def _modules(scale: float, seed: int) -> dict[str, LoraTensors]:
    g = torch.Generator().manual_seed(seed)
    return {
        f"blocks.{b}.{m}": LoraTensors(
            torch.randn(4, 8, generator=g), torch.randn(16, 4, generator=g) * scale, 2.0
        )
        for b in range(3)
        for m in ("attn1.to_q", "ffn.net.0.proj")
    }


def make_run(
    root: Path, experts: tuple[str, ...] = ("high_noise", "low_noise"), config: dict | None = None
) -> Path:
    run_dir = root / "myrun"
    run_dir.mkdir(parents=True)
    for i, step in enumerate((50, 100, 150)):
        for j, expert in enumerate(experts):
            suffix = "" if expert == "main" else f"_{expert}"
            save_lora_file(
                run_dir / f"myrun_{step:09d}{suffix}.safetensors",
                _modules(1e-3 * (i + 1) * (2 - j), step + j),
                {"step": str(step)},
                "comfyui",
                torch.bfloat16,
            )
    rows = []
    for step in range(1, 151):
        expert = None if experts == ("main",) else experts[step % len(experts)]
        rows.append(
            {
                "step": step,
                "timestamp": float(step),
                "expert": expert,
                "loss": 0.1 - step * 1e-4 + (step % 3) * 0.01,
                "lr_group0": 2e-4 if expert == "high_noise" else 5e-5,
                "gradient_stability_avg": 0.5,
                **({"eval_loss": 0.2 - step / 2000} if step % 50 == 0 else {}),
            }
        )
    lines = [json.dumps(r) for r in rows]
    (run_dir / "metrics_myrun.jsonl").write_text(
        "\n".join(lines) + "\n" + '{"step": 151, "lo', encoding="utf-8"
    )
    if config is not None:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    (run_dir / "myrun_000000100_alpha_scheduler.json").write_text("{}", encoding="utf-8")
    (run_dir / "other_000000100.safetensors").write_bytes(b"")  # another run's name: ignored
    return run_dir


def test_analyze_command_writes_html_json_and_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = make_run(tmp_path)
    assert main(["analyze", str(run_dir), "--preset", "motion"]) == 0
    out = capsys.readouterr().out
    assert "high_noise" in out and "low_noise" in out and "Recommended checkpoints:" in out
    assert "[lr_ratio_low]" not in out  # 2e-4 / 5e-5 = 4x from lr_* group fields on each expert's rows
    assert re.search(r"^\s+100\s+high_noise\s+[\d.]+\s+\+\d", out, re.M)

    data = json.loads((run_dir / "analysis.json").read_text(encoding="utf-8"))
    assert [c["step"] for c in data["checkpoints"]] == [50, 100, 150]
    c100 = data["checkpoints"][1]
    assert c100["lr_ratio"] == pytest.approx(4.0)
    assert c100["weight_ratio"] == pytest.approx(
        c100["experts"]["high_noise"]["magnitude"] / c100["experts"]["low_noise"]["magnitude"]
    )
    assert c100["eval_loss"] == pytest.approx(0.15)
    assert set(c100["experts"]["high_noise"]["per_block"]) == {"0", "1", "2"}
    assert c100["experts"]["low_noise"]["file"] == "myrun_000000100_low_noise.safetensors"
    assert data["recommendations"]

    page = (run_dir / "analysis.html").read_text(encoding="utf-8")
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) >= 6
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    assert "http://" not in page and "https://" not in page


def test_json_flag_prints_valid_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = make_run(tmp_path, config={"name": "myrun", "train": {"health": {"preset": "character"}}})
    assert main(["analyze", str(run_dir), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["preset"] == "character"  # from config.yaml's train.health
    assert {w["rule"] for w in data["warnings"]} >= {"weight_ratio_high", "lr_ratio_high"}


def test_single_expert_run_and_seed_layout_config(tmp_path: Path) -> None:
    config = {
        "job": "extension",
        "config": {
            "name": "myrun",
            "process": [
                {"type": "sd_trainer", "train": {"health": {"thresholds": {"gradient_unstable": 0.6}}}}
            ],
        },
    }
    report = analyze_run(make_run(tmp_path, experts=("main",), config=config))
    assert report.experts == ["main"] and report.preset is None
    point = report.series.points[-1]
    assert point.weight_ratio is None and point.experts["main"].stats.loss_count == 50
    assert {w.rule for w in report.warnings} == {"gradient_unstable"}  # 0.5 < the overridden 0.6
    assert report.to_dict()["checkpoints"][0]["experts"]["main"]["eval_loss"] == pytest.approx(0.175)


def test_metrics_reader_and_interval_stats(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(
        '{"step": 1, "loss": 1.0, "expert": "low_noise", "lr_low_noise": 0.1}\n'
        '{"step": 2, "loss": 9.0, "expert": "low_noise", "lr_low_noise": 0.1}\n'
        '{"step": 2, "loss": 3.0, "expert": "low_noise", "lr_low_noise": 0.3}\n'
        '{"step": 3, "loss": NaN',
        encoding="utf-8",
    )
    rows = read_metrics(path)
    assert [r["loss"] for r in rows] == [1.0, 3.0]  # replayed step 2 keeps its latest row, torn line skipped
    stats = interval_stats(rows, 0, 2, "low_noise")
    assert stats.loss_mean == pytest.approx(2.0) and stats.loss_std == pytest.approx(2**0.5)
    assert stats.lr == pytest.approx(0.2) and stats.grad_stability is None
    assert interval_stats(rows, 0, 2, "high_noise").loss_count == 0


def test_missing_run_folder_is_a_clear_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert main(["analyze", str(tmp_path / "nope")]) == 2
    assert "does not exist" in caplog.text
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no LoRA checkpoints named empty_"):
        load_run(empty)
    try:  # argparse's own choices check exits with 2, analyze_command's returns 2
        code = main(["analyze", str(make_run(tmp_path)), "--preset", "bogus"])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2


def test_truncated_checkpoint_is_left_out_with_a_note(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = make_run(tmp_path)
    broken = run_dir / "myrun_000000100_low_noise.safetensors"
    broken.write_bytes(broken.read_bytes()[:300])  # an interrupted copy
    report = analyze_run(run_dir, preset="motion")
    assert [p.step for p in report.series.points] == [50, 100, 150]
    assert any("left out (unreadable)" in n and "myrun_000000100_low_noise" in n for n in report.notes)
    assert "may be truncated" in caplog.text
    assert main(["analyze", str(broken)]) == 2 and "is a file, not a run folder" in caplog.text
