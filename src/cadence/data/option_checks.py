"""Rules between the datasets' augmentation / regularisation keys and the rest of the job, checked when a
config is loaded (`config.cross_checks` calls these), each at the key the user wrote."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cadence.config.schema import JobConfig

Issue = tuple[tuple[Any, ...], str]


def _token_keys(ds: Any) -> list[str]:
    return [
        key
        for key, on in (
            ("shuffle_tokens", ds.shuffle_tokens),
            ("token_dropout_rate", ds.token_dropout_rate > 0),
        )
        if on
    ]


def data_option_issues(cfg: JobConfig) -> list[Issue]:
    issues: list[Issue] = []
    train = cfg.train
    freed = "train.cache_text_embeddings" if train.cache_text_embeddings else None
    if train.unload_text_encoder and freed is None:
        freed = "train.unload_text_encoder"
    for i, ds in enumerate(cfg.datasets):
        for key in _token_keys(ds) if freed else []:
            issues.append(
                (
                    ("datasets", i, key),
                    f"varies captions at every batch, and {freed} frees the text encoder after caching, so the "
                    "varied captions could not be encoded (ai-toolkit skips token dropout with cached text "
                    f"embeddings and shuffles each caption once); remove {key} or {freed}",
                )
            )
    trained = [ds for ds in cfg.datasets if not ds.is_eval]
    if trained and all(ds.is_reg for ds in trained):
        for i, ds in enumerate(cfg.datasets):
            if ds.is_reg:
                issues.append(
                    (
                        ("datasets", i, "is_reg"),
                        "every training dataset is a regularisation set: regularisation batches alternate with "
                        "batches of the training sets, so at least one dataset must not be is_reg",
                    )
                )
    if train.reg_weight != 1 and not any(ds.is_reg for ds in cfg.datasets):
        issues.append(
            (
                ("train", "reg_weight"),
                f"{train.reg_weight:g} weights the loss of regularisation sets, and no dataset is one; remove it "
                "or set datasets[].is_reg: true on the regularisation dataset",
            )
        )
    return issues


def data_option_warnings(cfg: JobConfig) -> list[Issue]:
    if not cfg.model.low_vram:
        return []
    return [
        (
            ("datasets", i, key),
            "with model.low_vram the text encoder waits on the CPU, and every varied caption is encoded there "
            "when a batch needs it (seconds per caption for a large encoder)",
        )
        for i, ds in enumerate(cfg.datasets)
        for key in _token_keys(ds)[:1]
    ]
