"""Seed-trainer spellings accepted by Cadence, in one mapping.

The seed trainer (ai-toolkit) reads some settings under older or alternative names; a user's existing
config should run unchanged, so these are renamed to Cadence's key before validation. Errors on a renamed
key still name the key the user wrote. Keys here are patterns: `section.key`, with `[]` marking a list
(`datasets[].caption_type` = that key in every dataset); a key without a section is at the process level.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel

from cadence.config.errors import closest

# seed key -> Cadence key (same list item for `[]` patterns; otherwise the target section may differ)
SYNONYMS: dict[str, str] = {
    "network.rank": "network.linear",
    "network.alpha": "network.linear_alpha",
    "train.gradient_accumulation_steps": "train.gradient_accumulation",
    "train.skip_first_sample": "sample.skip_first_sample",
    "training_seed": "train.seed",
    "save.save_dtype": "save.dtype",
    "datasets[].caption_type": "datasets[].caption_ext",
    # DoRA and LoKr as LyCORIS / kohya / musubi-tuner / PEFT spell them (network_args of those trainers)
    "network.network_kwargs.use_dora": "network.network_kwargs.dora_wd",
    "network.network_kwargs.weight_decompose": "network.network_kwargs.dora_wd",
    "network.network_kwargs.wd_on_out": "network.network_kwargs.wd_on_output",
    "network.network_kwargs.factor": "network.lokr_factor",
    # the seed reads its per-expert (conv-alpha) phase list from `phases`
    "network.alpha_schedule.per_expert.high_noise.phases": (
        "network.alpha_schedule.per_expert.high_noise.conv_alpha_phases"
    ),
    "network.alpha_schedule.per_expert.low_noise.phases": (
        "network.alpha_schedule.per_expert.low_noise.conv_alpha_phases"
    ),
}

# values the seed matches case-insensitively or under an alias: key pattern -> {seed value: Cadence value}
VALUE_ALIASES: dict[str, dict[str, str]] = {
    "train.optimizer": {"adamw8": "adamw8bit"},
    "train.lr_scheduler": {},
    "train.noise_scheduler": {},
    "network.type": {},
    # lower-cased here; ai-toolkit's other spellings ("arch:variant" UI tags, ...) are each family's aliases
    # (cadence.models.family.ModelFamily.aliases), resolved when ModelConfig checks the arch
    "model.arch": {},
}

Parts = tuple[str | int, ...]

# Names other trainers use (SimpleTuner, musubi-tuner, kohya sd-scripts) -> where Cadence reads the setting.
# Not accepted silently (their sections and meanings differ): an unknown key with one of these names says
# where its setting lives here.
FOREIGN_KEYS: dict[str, str] = {
    "learning_rate": "train.lr",
    "max_train_steps": "train.steps",
    "train_batch_size": "train.batch_size",
    "output_dir": "training_folder (+ name)",
    "pretrained_model_name_or_path": "model.name_or_path",
    "dit": "model.name_or_path",
    "network_dim": "network.linear",
    "network_alpha": "network.linear_alpha",
    "network_dropout": "network.dropout",
    "network_args": "network.network_kwargs",
    "optimizer_type": "train.optimizer",
    "optimizer_args": "train.optimizer_params",
    "mixed_precision": "train.dtype",
    "save_every_n_steps": "save.save_every",
    "sample_every_n_steps": "sample.sample_every",
    "timestep_sampling": "train.timestep_type",
    "discrete_flow_shift": "train.flow_shift",
    "fp8_base": "model.quantize: true with model.qtype: fp8",
    "resume_from_checkpoint": "nothing: a run resumes from its newest checkpoint by itself",
    # LyCORIS / kohya `network_args` of seed 004's LoHa/LoKr recipes (they land in network.network_kwargs)
    "algo": "network.type (lora, locon, lokr, loha, dora)",
    "conv_dim": "network.conv (the Conv rank)",
    "use_tucker": "none: Tucker-decomposed Conv factors are not implemented (LoCon trains plain Conv factors)",
    "decompose_both": "none: LoKr with both Kronecker halves low-rank is not implemented (lokr_full_rank: false "
    "makes the larger one low-rank)",
    "use_scalar": "none: LyCORIS' trainable scalar is not implemented",
    "rank_dropout_scale": "none: rank dropout always rescales by 1/(1-p) here (network_kwargs.rank_dropout)",
    "train_norm": "none: norm layers are not trained (adapters on Linear/Conv only)",
    "bypass_mode": "none: Cadence's adapters always run beside the frozen layer (its hooks are LyCORIS' bypass)",
    "unbalanced_factorization": "none: LoKr's split is LyCORIS' default (network.lokr_factor sets it)",
    "full_matrix": "network.lokr_full_rank (LoKr) - LoHa has no full-matrix form here",
    "webhook_config": "logging.webhooks (the same entries: webhook_type, webhook_url/callback_url, ...)",
    "hub_model_id": "save.hf_repo_id (with save.push_to_hub: true)",
    "report_to": "logging.use_wandb: true / logging.tensorboard",
}


def split_pattern(pattern: str) -> tuple[str, str]:
    """'datasets[].caption_type' -> ('datasets[]', 'caption_type'); 'training_seed' -> ('', 'training_seed')."""
    section, _, key = pattern.rpartition(".")
    return section, key


def pattern_of(parts: Parts) -> str:
    """('datasets', 0, 'folder_path') -> 'datasets[].folder_path' (the pattern form used in the registries)."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += "[]"
        else:
            text += f".{part}" if text else part
    return text


def iter_sections(body: dict[str, Any], section: str) -> Iterator[tuple[dict[str, Any], Parts]]:
    """Yield every dict matching a section pattern (e.g. 'sample.samples[]') with its concrete path."""
    nodes: list[tuple[Any, Parts]] = [(body, ())]
    for name in [p for p in section.split(".") if p]:
        is_list = name.endswith("[]")
        key = name[:-2] if is_list else name
        nxt: list[tuple[Any, Parts]] = []
        for node, parts in nodes:
            if not isinstance(node, dict) or key not in node:
                continue
            child = node[key]
            if is_list:
                if isinstance(child, list):
                    nxt.extend((item, (*parts, key, i)) for i, item in enumerate(child))
            else:
                nxt.append((child, (*parts, key)))
        nodes = nxt
    for node, parts in nodes:
        if isinstance(node, dict):
            yield node, parts


def synonyms_for(section: str) -> list[str]:
    """Seed spellings valid in a section pattern, for 'did you mean' suggestions."""
    return [split_pattern(p)[1] for p in SYNONYMS if split_pattern(p)[0] == section]


def _target_node(body: dict[str, Any], node: dict[str, Any], src_section: str, dst_section: str) -> Any:
    if dst_section == src_section:
        return node
    target: Any = body
    for name in [p for p in dst_section.split(".") if p]:
        if not isinstance(target, dict):
            return None
        target = target.setdefault(name, {})
    return target


def apply_synonyms(body: dict[str, Any]) -> tuple[list[tuple[Parts, str]], dict[Parts, Parts]]:
    """Rename seed spellings in place. Returns (issues, renamed: Cadence path -> path the user wrote)."""
    issues: list[tuple[Parts, str]] = []
    renamed: dict[Parts, Parts] = {}
    for src, dst in SYNONYMS.items():
        src_section, src_key = split_pattern(src)
        dst_section, dst_key = split_pattern(dst)
        for node, parts in list(iter_sections(body, src_section)):
            if src_key not in node:
                continue
            target = _target_node(body, node, src_section, dst_section)
            user_parts = (*parts, src_key)
            if not isinstance(target, dict):
                continue  # the target section has the wrong type; validation reports it
            value = node.pop(src_key)
            if dst_key in target and target[dst_key] != value:
                issues.append(
                    (
                        user_parts,
                        f"'{src_key}' is the seed's spelling of '{dst}' and both are set to different "
                        f"values ({value!r} vs {target[dst_key]!r}); keep only '{dst_key}'",
                    )
                )
                continue
            target[dst_key] = value
            dst_parts = parts + (dst_key,) if dst_section == src_section else tuple(dst.split("."))
            renamed[dst_parts] = user_parts
    _normalize_values(body)
    issues += _family_flags(body)
    return issues, renamed


# ai-toolkit's older way to name a model family: a boolean beside (or instead of) model.arch
FAMILY_FLAGS = {"is_flux": "flux"}


def _family_flags(body: dict[str, Any]) -> list[tuple[Parts, str]]:
    """`model.is_flux: true` means `arch: flux` (ai-toolkit sets the arch from it when none is given); false is
    ai-toolkit's default and says nothing. Either way the flag is consumed here."""
    model = body.get("model")
    if not isinstance(model, dict):
        return []
    issues: list[tuple[Parts, str]] = []
    for flag, arch in FAMILY_FLAGS.items():
        if flag not in model:
            continue
        value = model.pop(flag)
        if value is False or value is None:
            continue
        if value is not True:
            issues.append((("model", flag), f"expected true or false, got {value!r}"))
            continue
        current = model.get("arch")
        if current is None:
            model["arch"] = arch
        elif not _same_family(str(current), arch):
            issues.append(
                (
                    ("model", flag),
                    f"{flag}: true says the model is {arch}, but model.arch is {current!r}; remove one of them",
                )
            )
    return issues


def _same_family(value: str, arch: str) -> bool:
    from cadence.models.registry import arch_names, canonical_arch, family_of

    found = canonical_arch(value.strip().lower())
    return found is not None and arch in arch_names() and family_of(found) is family_of(arch)


def _normalize_values(body: dict[str, Any]) -> None:
    for pattern, aliases in VALUE_ALIASES.items():
        section, key = split_pattern(pattern)
        for node, _ in iter_sections(body, section):
            value = node.get(key)
            if isinstance(value, str):
                lowered = value.strip().lower()
                node[key] = aliases.get(lowered, lowered)


# ------------------------------------------------------------------ where keys live in the schema
def _unwrap(annotation: Any) -> Any:
    """Strip Optional[...] and list[...] so the walk lands on the model or dict inside."""
    while True:
        args = [a for a in get_args(annotation) if a is not type(None)]
        origin = get_origin(annotation)
        if origin in (Union, UnionType) and len(args) == 1:
            annotation = args[0]
        elif origin in (list, tuple):
            annotation = args[0]
        else:
            return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def section_model(parts: Parts | list[str]) -> type[BaseModel] | None:
    """The config model at a path (list indices ignored, dict keys followed), or None if not a section."""
    from cadence.config.schema import JobConfig

    annotation: Any = JobConfig
    for part in parts:
        if isinstance(part, int):
            continue
        name = part[:-2] if part.endswith("[]") else part
        annotation = _unwrap(annotation)
        if _is_model(annotation):
            field = annotation.model_fields.get(name)
            if field is None:
                return None
            annotation = field.annotation
        elif get_origin(annotation) is dict:
            annotation = get_args(annotation)[1]
        else:
            return None
    annotation = _unwrap(annotation)
    return annotation if _is_model(annotation) else None


def clean_loc(loc: tuple[str | int, ...]) -> tuple[Parts, list[str]]:
    """Drop pydantic's union-member tags from an error location; returns (path, dropped tags)."""
    from cadence.config.schema import JobConfig

    out: list[str | int] = []
    tags: list[str] = []
    annotation: Any = JobConfig
    for part in loc:
        while True:  # Optional[X] -> X without consuming a loc element
            args = [a for a in get_args(annotation) if a is not type(None)]
            if get_origin(annotation) in (Union, UnionType) and len(args) == 1:
                annotation = args[0]
            else:
                break
        origin = get_origin(annotation)
        if origin in (Union, UnionType):
            tags.append(str(part))
            annotation = None
            continue
        out.append(part)
        if _is_model(annotation) and isinstance(part, str):
            field = annotation.model_fields.get(part)
            annotation = field.annotation if field is not None else None
        elif origin in (list, tuple) and get_args(annotation):
            annotation = get_args(annotation)[0]
        elif origin is dict:
            annotation = get_args(annotation)[1]
        else:
            annotation = None
    return tuple(out), tags


# ------------------------------------------------------------------ answering an unknown key
def _schema_patterns(annotation: Any = None, prefix: str = "") -> list[str]:
    """Every key pattern of the schema (`train.lr`, `datasets[].fps`, ...); dict-valued sections not walked."""
    from cadence.config.schema import JobConfig

    model = JobConfig if annotation is None else annotation
    out: list[str] = []
    for name, field in model.model_fields.items():
        pattern = f"{prefix}.{name}" if prefix else name
        out.append(pattern)
        inner, listed = field.annotation, False
        args = [a for a in get_args(inner) if a is not type(None)]
        if get_origin(inner) in (Union, UnionType) and len(args) == 1:
            inner = args[0]
        if get_origin(inner) in (list, tuple) and get_args(inner):
            inner, listed = get_args(inner)[0], True
        if _is_model(inner):
            out += _schema_patterns(inner, pattern + ("[]" if listed else ""))
    return out


def key_homes(key: str) -> list[str]:
    """Where a key name is valid, as patterns: Cadence's schema and seed synonyms; failing those, the
    ai-toolkit keys Cadence answers with a refusal (so the user learns where ai-toolkit reads it)."""
    from cadence.config.unsupported import all_entries

    for patterns in ([*_schema_patterns(), *SYNONYMS], [entry.key for entry in all_entries()]):
        found = sorted({p for p in patterns if split_pattern(p)[1] == key})
        if found:
            return found
    return []


def unknown_key_hint(key: str, valid: list[str], section: str) -> str:
    """What to tell a user about a key that is not valid in `section` (a pattern, '' = process level).

    Another trainer's name says which Cadence key does that job; a key that lives in another section says
    where; a typo (a keyboard slip, same section) gets "did you mean"; otherwise the section's valid keys."""
    if key in FOREIGN_KEYS:
        return f"that is another trainer's name; Cadence's setting is {FOREIGN_KEYS[key]}"
    homes = [p for p in key_homes(key) if split_pattern(p)[0] != section]
    if homes:
        where = " or ".join(f"'{p}'" for p in homes)
        return f"'{key}' is not a key of {section or 'the process level'}; it is {where} (move it there)"
    match = closest(key, valid)
    if match:
        return f"did you mean '{match}'?"
    return f"valid keys here: {', '.join(sorted(valid))}"
