"""`cadence COMMAND -h` reads like a tool's help: every argument described, defaults and choices shown."""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import get_args

import pytest

from cadence.cli import ANALYZE_PRESETS, HANDLERS, TINY_ARCHS, build_parser

DEVELOPER_WORDS = ("TODO", "FIXME", "lazily", "cli.py", "import", "HANDLERS", "argparse")


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


SUBCOMMANDS = _subparsers()


def test_every_handler_has_a_subcommand_and_back() -> None:
    assert set(SUBCOMMANDS) == set(HANDLERS)


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_each_subcommand_help_describes_every_argument(name: str) -> None:
    sub = SUBCOMMANDS[name]
    text = sub.format_help()
    assert sub.description and len(sub.description) > 20, name
    for word in DEVELOPER_WORDS:
        assert word not in text, (name, word)
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        where = f"{name} {action.dest}"
        if action.help == argparse.SUPPRESS:
            continue  # hidden on purpose (used by the UI's job runner, not by people)
        assert action.help, f"{where}: no help"
        shown = action.default not in (None, False, argparse.SUPPRESS) and not action.required
        if shown and not isinstance(action.default, list):
            assert "default" in action.help and str(action.default) in action.help, (
                f"{where}: default not shown"
            )
        if action.choices is not None:
            for choice in action.choices:
                assert str(choice) in text, f"{where}: choice {choice} not shown"


def test_choices_and_defaults_match_the_code_they_describe() -> None:
    from cadence.config.health import Preset
    from cadence.demo import DEMO_STEPS
    from cadence.models.registry import ARCHS
    from cadence.models.tiny_vlm import VLM_ARCHS
    from cadence.tools.ema_merge import DEFAULT_BETA
    from cadence.ui.server import refuse_reason

    assert TINY_ARCHS == (*ARCHS, *VLM_ARCHS)
    assert ANALYZE_PRESETS == (*get_args(Preset), "none")
    assert f"default: {DEMO_STEPS}" in SUBCOMMANDS["demo"].format_help()
    assert f"default: {DEFAULT_BETA}" in SUBCOMMANDS["ema-merge"].format_help()
    assert "not with --beta/--beta2" in SUBCOMMANDS["ema-merge"].format_help()
    ui = SUBCOMMANDS["ui"].format_help()
    assert "CADENCE_AUTH" in ui and "CADENCE_HOME" in ui
    assert refuse_reason("0.0.0.0", None) is not None and refuse_reason("0.0.0.0", "t" * 32) is None
    train = " ".join(SUBCOMMANDS["train"].format_help().split())
    assert "resumes from the newest complete one by itself" in train and "--restart" in train
    assert "previous/<time>/" in train


def test_sample_flags_match_the_sample_commands_own_list() -> None:
    from cadence.sampling.command import add_sample_arguments

    reference = argparse.ArgumentParser()
    add_sample_arguments(reference)
    ours = {a.dest for a in SUBCOMMANDS["sample"]._actions}
    assert {a.dest for a in reference._actions} == ours


def test_help_renders_from_the_installed_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cadence.cli", "-h"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "COMMAND" in done.stdout
    for word in DEVELOPER_WORDS:
        assert word not in done.stdout
    for name in SUBCOMMANDS:
        assert name in done.stdout
