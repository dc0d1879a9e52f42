"""Values a run cannot use are config errors at the key: non-finite or absurd numbers, a bool given as a
count, and a caption extension that would point captions at the media themselves."""

from __future__ import annotations

import pytest

from cadence.config import ConfigError, load_config_dict


def issues_of(data) -> dict[str, str]:
    with pytest.raises(ConfigError) as err:
        load_config_dict(data)
    return dict(err.value.issues)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_numbers_are_errors(make_flat, value):
    issues = issues_of(make_flat(train={"lr": value, "max_grad_norm": value, "disable_sampling": True}))
    for key in ("train.lr", "train.max_grad_norm"):
        assert "finite number" in issues[key] or "must be" in issues[key], issues


def test_yaml_inf_spelling_is_an_error(tmp_path):
    from cadence.config.loader import load_config

    path = tmp_path / "job.yaml"
    path.write_text(
        "name: j\nmodel: {name_or_path: /m, arch: wan21}\ntrain: {lr: .inf, disable_sampling: true}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert dict(err.value.issues)["train.lr"] == (
        "got inf; expected a finite number (inf and NaN are not numbers a run can use)"
    )


def test_absurd_learning_rate_and_steps_are_refused(make_flat):
    issues = issues_of(make_flat(train={"lr": 1e30, "steps": 10**12, "disable_sampling": True}))
    assert issues["train.lr"] == "got 1e+30; must be <= 10"
    assert "train.steps" in issues


def test_bool_is_not_a_count(make_flat):
    issues = issues_of(
        make_flat(
            train={"steps": True, "batch_size": False, "disable_sampling": True}, save={"save_every": True}
        )
    )
    assert issues["train.steps"] == "got 'true'; expected a whole number"
    assert issues["train.batch_size"] == "got 'false'; expected a whole number"
    assert issues["save.save_every"] == "got 'true'; expected a whole number"


def test_bool_still_accepted_where_a_bool_is_meant(make_flat):
    cfg = load_config_dict(make_flat(train={"gradient_checkpointing": True, "disable_sampling": True}))
    assert cfg.train.gradient_checkpointing is True


@pytest.mark.parametrize("ext", ["mp4", ".png", "MOV", "jpg"])
def test_caption_ext_naming_a_media_type_is_refused(make_flat, ext):
    issues = issues_of(make_flat(datasets=[{"folder_path": "/x", "caption_ext": ext}]))
    assert "is a media extension" in issues["datasets[0].caption_ext"]


@pytest.mark.parametrize("ext", ["../txt", "sub/txt", "a\\\\b", ".."])
def test_caption_ext_leaving_the_folder_is_refused(make_flat, ext):
    issues = issues_of(make_flat(datasets=[{"folder_path": "/x", "caption_ext": ext}]))
    assert "path separator or '..'" in issues["datasets[0].caption_ext"]


def test_caption_type_synonym_is_checked_at_the_users_key(make_flat):
    issues = issues_of(make_flat(datasets=[{"folder_path": "/x", "caption_type": "webp"}]))
    assert "is a media extension" in issues["datasets[0].caption_type"]


def test_hidden_and_overlong_names_are_refused(make_flat):
    issues = issues_of(make_flat(name=".secret"))
    assert "starts with '.'" in issues["name"]
    issues = issues_of(make_flat(name="n" * 209))
    assert "at most 208 fit" in issues["name"]
    assert load_config_dict(make_flat(name="n" * 208, train={"disable_sampling": True})).name == "n" * 208


def test_training_folder_that_is_a_file_is_a_config_error(make_flat, tmp_path):
    blocker = tmp_path / "output"
    blocker.write_text("a file where the runs should go")
    issues = issues_of(make_flat(training_folder=str(blocker), train={"disable_sampling": True}))
    message = next(iter(issues.values()))
    assert "is a file, not a folder" in message and str(blocker) in message


def test_longest_run_file_of_a_maximal_name_can_be_written(tmp_path):
    """The limit is real: a name of MAX_NAME_BYTES gives a temp file name the filesystem accepts."""
    from cadence.config.schema import MAX_NAME_BYTES

    name = "n" * MAX_NAME_BYTES
    longest = tmp_path / f".{name}_000001000_high_noise.safetensors.abcdefgh.tmp"
    longest.write_bytes(b"")
    with pytest.raises(OSError):
        (tmp_path / f".{name}x_000001000_high_noise.safetensors.abcdefgh.tmp").write_bytes(b"")


def test_unset_lokr_full_rank_is_named_because_the_trainers_disagree(make_flat, caplog):
    cfg = load_config_dict(make_flat(network={"type": "lokr", "linear": 8}, train={"disable_sampling": True}))
    assert cfg.network.lokr_full_rank is False  # the seed fork's default
    assert "network.lokr_full_rank: is not set, and the trainers disagree" in caplog.text
    caplog.clear()
    load_config_dict(
        make_flat(network={"type": "lokr", "lokr_full_rank": False}, train={"disable_sampling": True})
    )
    assert "lokr_full_rank" not in caplog.text
