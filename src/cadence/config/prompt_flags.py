"""The seed trainer's inline sample flags: `"a cat walking --n blurry --w 832 --h 480 --seed 7"`.

Its configs put per-sample settings in the prompt text (sd-scripts' `--n/--w/--h/--d/--l/--s` and its own
long names). Left alone they would be generated as words of the prompt at the section's size and seed, so
they are turned into the sample's own keys before validation. Flags with no meaning for Wan are refused,
as is a setting given both as a flag and as a key.
"""

from __future__ import annotations

import re
from typing import Any

from cadence.config.compat import Parts

_FLAG = re.compile(r"(?:^|\s)--([A-Za-z][A-Za-z0-9_]*)(?=\s|$)")
# flag -> (sample key, type)
FLAGS: dict[str, tuple[str, type]] = {
    "n": ("neg", str),
    "w": ("width", int),
    "h": ("height", int),
    "d": ("seed", int),
    "seed": ("seed", int),
    "l": ("guidance_scale", float),
    "cfg": ("guidance_scale", float),
    "s": ("sample_steps", int),
    "steps": ("sample_steps", int),
    "m": ("network_multiplier", float),
    "network_multiplier": ("network_multiplier", float),
    "frames": ("num_frames", int),
    "num_frames": ("num_frames", int),
    "fps": ("fps", int),
    "ctrl_img": ("ctrl_img", str),
}
NOT_FOR_WAN = {
    "p2": "a second text encoder's prompt (SDXL)",
    "n2": "a second text encoder's negative prompt (SDXL)",
    "gr": "guidance rescale (SDXL)",
    "a": "adapter conditioning scale (T2I adapters)",
    "ref": "the SDXL refiner start",
    "ev": "extra values of other model families",
    "extra_values": "extra values of other model families",
    "ctrl_idx": "a control-image index of multi-control models",
}


def parse_prompt(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(prompt without flags, [(flag, value text)]) in the order written."""
    matches = list(_FLAG.finditer(text))
    if not matches:
        return text, []
    flags = []
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        flags.append((match.group(1), text[match.end() : end].strip()))
    return text[: matches[0].start()].strip(), flags


def item_from_flags(item: dict[str, Any], where: Parts) -> tuple[dict[str, Any], list[tuple[Parts, str]]]:
    prompt, flags = parse_prompt(item["prompt"])
    out, issues = {**item, "prompt": prompt}, []
    for flag, value in flags:
        if flag in NOT_FOR_WAN:
            issues.append(
                (where, f"prompt flag --{flag} sets {NOT_FOR_WAN[flag]}, which Wan has no use for; remove it")
            )
            continue
        if flag not in FLAGS:
            known = " ".join(f"--{f}" for f in FLAGS)
            issues.append((where, f"unknown prompt flag --{flag}; the flags Cadence reads are {known}"))
            continue
        key, kind = FLAGS[flag]
        if key in item:
            issues.append((where, f"--{flag} in the prompt and '{key}' both set {key}; keep one"))
            continue
        try:
            out[key] = kind(value)
        except ValueError:
            issues.append((where, f"--{flag} needs a {kind.__name__} value, got {value!r}"))
    return out, issues


def expand_prompt_flags(body: dict[str, Any]) -> list[tuple[Parts, str]]:
    """Move inline flags of `sample.samples[].prompt` and `sample.prompts[]` into sample keys, in place.

    A `prompts:` entry with flags becomes a `samples:` item at the end (the sample order, samples then
    prompts, is unchanged).
    """
    sample = body.get("sample")
    if not isinstance(sample, dict):
        return []
    issues: list[tuple[Parts, str]] = []
    samples = sample.get("samples")
    if isinstance(samples, list):
        for i, item in enumerate(samples):
            if isinstance(item, dict) and isinstance(item.get("prompt"), str):
                samples[i], found = item_from_flags(item, ("sample", "samples", i, "prompt"))
                issues += found
    prompts = sample.get("prompts")
    texts = prompts if isinstance(prompts, list) and all(isinstance(p, str) for p in prompts) else []
    if any(_FLAG.search(text) for text in texts) and isinstance(samples, list | None):
        items = list(samples or [])
        for j, text in enumerate(texts):
            item, found = item_from_flags({"prompt": text}, ("sample", "prompts", j))
            items.append(item)
            issues += found
        sample["samples"], sample["prompts"] = items, []
    return issues
