"""The model card (README.md) of a published run: what was trained, from what, how to load it, how it went.

Built only from the run folder (config.yaml, the LoRA files' metadata, samples, the analysis), never from
anything secret: config.yaml is already redacted, and the card states settings, not the config's paths.
Model-family wording (pipelines, ComfyUI model names) comes from `cadence.models.card_usage`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from cadence.models.card_usage import ArchUsage, arch_usage


@dataclass
class CardFile:
    expert: str  # "high_noise", "low_noise" or "main"
    path: str  # path in the repo
    layout: str  # comfyui | diffusers
    metadata: dict[str, str] = field(default_factory=dict)
    diffusers_loads: bool = (
        True  # diffusers' load_lora_weights loads it (not LoKr/LoHa, ...: networks/loaders)
    )


@dataclass
class CardSample:
    prompt: str
    media: dict[str, str]  # extension (".mp4", ".webp", ".png") -> path in the repo
    step: int


@dataclass
class CardInputs:
    name: str
    repo_id: str | None
    step: int
    arch: str
    base_model: str  # model.name_or_path as trained
    config: dict[str, Any]  # resolved config (flat layout, secrets redacted)
    files: list[CardFile]
    samples: list[CardSample] = field(default_factory=list)
    analysis_lines: list[str] = field(default_factory=list)  # warnings and recommendations, in words
    recommended: int | None = None  # the analysis' first recommended checkpoint
    analysis_note: str | None = None  # why there is no analysis

    @property
    def hub_base_model(self) -> str | None:
        """A Hub id (not a local folder) the card's metadata can link to."""
        text = self.base_model
        if text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") != 1:
            return None
        return text


def _front_matter(c: CardInputs, usage: ArchUsage) -> str:
    network = (c.config.get("network") or {}).get("type", "lora")
    meta: dict[str, Any] = {}
    if c.hub_base_model:
        meta["base_model"] = c.hub_base_model
        meta["base_model_relation"] = "adapter"
    if c.files and all(f.diffusers_loads for f in c.files):  # the Hub shows "diffusers" usage for it
        meta["library_name"] = "diffusers"
    meta["pipeline_tag"] = usage.pipeline_tag
    meta["tags"] = list(dict.fromkeys(["lora", network, "cadence", *usage.tags, usage.pipeline_tag]))
    if c.config.get("trigger_word"):
        meta["instance_prompt"] = c.config["trigger_word"]
    widget = [
        {"text": s.prompt, "output": {"url": s.media.get(".webp") or s.media.get(".png")}}
        for s in c.samples
        if s.media.get(".webp") or s.media.get(".png")
    ]
    if widget:
        meta["widget"] = widget
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _files_section(c: CardInputs) -> list[str]:
    lines = ["## Files", "", "| expert | file | rank | alpha | layout |", "|---|---|---|---|---|"]
    for f in c.files:
        rank, alpha = f.metadata.get("rank", "?"), f.metadata.get("alpha", "?")
        lines.append(f"| {f.expert} | [`{f.path}`]({f.path}) | {rank} | {alpha} | {f.layout} |")
    lines += [
        "",
        f"All files are checkpoint step {c.step}. Each file stores its alpha, so strength 1.0 is the strength "
        "it was trained at.",
        "",
    ]
    return lines


def _comfy_section(c: CardInputs, usage: ArchUsage) -> list[str]:
    lines = ["### ComfyUI", ""]
    comfy_files = [f for f in c.files if f.layout == "comfyui"]
    if not comfy_files:
        return lines + [
            "These files are in the diffusers layout, which ComfyUI does not read; convert them with "
            "`cadence convert FILE OUT --to comfyui` first.",
            "",
        ]
    lines.append("Copy the files into `ComfyUI/models/loras/`, then:")
    lines.append("")
    for f in comfy_files:
        lines.append(
            f"- `{f.path.rsplit('/', 1)[-1]}`: a **LoraLoaderModelOnly** node on {usage.comfy_models[f.expert]}, "
            "strength 1.0"
        )
    if len(usage.components) > 1 and len(comfy_files) < len(usage.components):
        lines.append("- the other expert was not trained: its model runs without a LoRA")
    return lines + [""]


def _diffusers_section(c: CardInputs, usage: ArchUsage) -> list[str]:
    network = (c.config.get("network") or {}).get("type", "lora")
    sample = c.config.get("sample") or {}
    repo = c.repo_id or "REPO_ID"
    base = c.hub_base_model or "PATH_OR_ID_OF_THE_BASE_MODEL"
    prompt = c.samples[0].prompt if c.samples else (c.config.get("trigger_word") or "your prompt")
    lines = ["### diffusers", ""]
    if network != "lora":
        lines += [
            f"This is a `{network}` adapter; diffusers' `load_lora_weights` reads plain LoRA files only, so load "
            "it in ComfyUI (above).",
            "",
        ]
        return lines
    code = [
        "import torch",
        f"from diffusers import {usage.pipeline_class}",
        "from diffusers.utils import export_to_video" + (", load_image" if usage.needs_image else ""),
        "",
        f'pipe = {usage.pipeline_class}.from_pretrained("{base}", torch_dtype=torch.bfloat16).to("cuda")',
    ]
    for f in c.files:
        into = usage.components[f.expert]
        extra = ", load_into_transformer_2=True" if into == "transformer_2" else ""
        code.append(
            f'pipe.load_lora_weights("{repo}", weight_name="{f.path}", adapter_name="{f.expert}"{extra})'
        )
    args = [f"prompt={prompt!r}"]
    if usage.needs_image:
        args.insert(0, 'image=load_image("first_frame.png")')
    for key in ("width", "height", "num_frames"):
        if sample.get(key):
            args.append(f"{key}={sample[key]}")
    code += [
        f"frames = pipe({', '.join(args)}).frames[0]",
        f'export_to_video(frames, "out.mp4", fps={usage.fps})',
    ]
    return lines + ["```python", *code, "```", ""]


def _samples_section(c: CardInputs) -> list[str]:
    if not c.samples:
        return []
    step = c.samples[0].step
    lines = ["## Samples", ""]
    if step != c.step:
        lines += [f"From step {step}, the last sampled step at or before this checkpoint.", ""]
    for s in c.samples:
        lines.append(f"**{s.prompt}**")
        lines.append("")
        if ".mp4" in s.media:
            lines.append(f'<video src="{s.media[".mp4"]}" controls loop muted></video>')
        elif ".png" in s.media:
            lines.append(f"![sample]({s.media['.png']})")
        lines.append("")
    return lines


def _settings_section(c: CardInputs) -> list[str]:
    cfg = c.config
    train, network = cfg.get("train") or {}, cfg.get("network") or {}
    datasets = cfg.get("datasets") or []
    rows = [
        ("steps", train.get("steps")),
        ("optimizer", train.get("optimizer")),
        ("learning rate", train.get("lr")),
        ("lr scheduler", train.get("lr_scheduler")),
        ("batch size × accumulation", f"{train.get('batch_size')} × {train.get('gradient_accumulation')}"),
        (
            "network",
            f"{network.get('type')} rank {network.get('linear')}, alpha {network.get('linear_alpha')}",
        ),
        ("timesteps", train.get("timestep_type")),
        ("expert switch every", train.get("switch_boundary_every")),
        ("alpha schedule", "on" if (network.get("alpha_schedule") or {}).get("enabled") else "off"),
        ("training dtype", train.get("dtype")),
        ("datasets", f"{len(datasets)}: " + "; ".join(_dataset_words(d) for d in datasets)),
        ("trigger word", cfg.get("trigger_word") or "none"),
    ]
    params = train.get("optimizer_params") or {}
    for key in ("high_noise_lr", "low_noise_lr"):
        if key in params:
            rows.append((key.replace("_", " "), params[key]))
    lines = ["## Training settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows if v is not None]
    return lines + ["", "The full resolved config is `config.yaml` in this repo.", ""]


def _dataset_words(d: dict[str, Any]) -> str:
    res = "/".join(str(r) for r in d.get("resolution") or [])
    return f"{d.get('num_frames')} frames at {res}" + (" (eval)" if d.get("is_eval") else "")


def _analysis_section(c: CardInputs) -> list[str]:
    lines = ["## Training analysis", ""]
    if c.analysis_note:
        return lines + [c.analysis_note, ""]
    if c.recommended is not None:
        if c.recommended == c.step:
            lines.append(f"`cadence analyze` recommends this checkpoint (step {c.step}).")
        else:
            lines.append(
                f"`cadence analyze` recommends step {c.recommended}; this repo holds step {c.step} "
                f"(publish that one with `cadence publish RUN_DIR --repo {c.repo_id or 'REPO_ID'} "
                f"--checkpoint {c.recommended}`)."
            )
        lines.append("")
    lines += [f"- {line}" for line in c.analysis_lines] or ["- no warnings"]
    return lines + [""]


NETWORK_NAMES = {"lora": "LoRA", "locon": "LoCon", "lokr": "LoKr", "loha": "LoHa", "dora": "DoRA"}


def render_card(c: CardInputs) -> str:
    usage = arch_usage(c.arch)
    network = (c.config.get("network") or {}).get("type", "lora")
    base = f"`{c.hub_base_model}`" if c.hub_base_model else f"a local copy of {usage.title}"
    experts = ", ".join(f.expert for f in c.files)
    intro = [
        f"# {c.name}",
        "",
        f"A {NETWORK_NAMES.get(network, network)} adapter for {usage.title} ({c.arch}), "
        f"trained with Cadence on {base}. Experts: {experts}.",
        "",
    ]
    if c.config.get("trigger_word"):
        intro += [f"Trigger word: `{c.config['trigger_word']}` (put it in your prompt).", ""]
    body = intro + _files_section(c) + ["## How to use", ""]
    body += _comfy_section(c, usage) + _diffusers_section(c, usage)
    body += _samples_section(c) + _settings_section(c) + _analysis_section(c)
    return _front_matter(c, usage) + "\n" + "\n".join(body).rstrip() + "\n"
