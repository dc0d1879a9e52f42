"""Which tool loads an image family's LoRA file at the trained strength: the per-family facts behind
`cadence.networks.loaders.verdicts` (Wan's rules live there; FLUX.1, Qwen-Image and Z-Image give theirs here).

Read from the tools' loader code (facts, re-stated; tests run diffusers' real loader against these verdicts):

* ComfyUI (`comfy/lora.py model_lora_keys_unet`): every family's `diffusion_model.<name>` / `lora_unet_<name>`
  keys of its own model's weights (FLUX: BFL names, so the fused q/k/v form; Qwen-Image: diffusers' names), plus
  per family `transformer.<diffusers name>` (FLUX, Qwen-Image, Z-Image) and, for Z-Image, `diffusion_model.
  <diffusers name>` (its z_image_to_diffusers map slices the fused weights). Z-Image's own names fuse q/k/v, so
  a `lora_unet_<diffusers name>` file is not matched. `.alpha` is read beside each key; the diffusers layout's
  `lora_adapter_metadata` is not, so such a file loads at alpha/rank only when alpha equals the rank.
* diffusers 0.42: FLUX `diffusion_model.` / `lora_unet_` files go through `_convert_kohya_flux_lora_to_diffusers`
  (LoRA only, the fused layers split back; it assumes FLUX.1's sizes for single-block linear1, and drops the
  `.alpha` of final_layer keys); Qwen-Image's through `_convert_non_diffusers_qwen_lora_to_diffusers` (LoRA);
  Z-Image's `diffusion_model.` LoRA and LoKr, and `lora_unet_` LoRA, through its two converters. The diffusers
  layout goes to PEFT (LoRA, output-axis DoRA) with its adapter metadata.
* musubi-tuner's `--lora_weight` merge is Wan's tool here; it has no verdict for these families.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LoaderRules:
    comfy_kohya: bool  # ComfyUI matches `lora_unet_<name>` for this family
    diffusers_algos: dict[str, frozenset[str]] = field(
        default_factory=dict
    )  # layout -> algos its converter reads
    diffusers_caveat: dict[str, str] = field(default_factory=dict)  # layout -> what it assumes
    drops_alpha_of: tuple[str, ...] = ()  # modules whose .alpha diffusers' converter ignores (comfyui/kohya)

    def verdicts(self, shape) -> list:
        return [self.comfyui(shape), self.diffusers(shape)]

    def comfyui(self, shape):
        from cadence.networks.loaders import Verdict

        if shape.layout == "diffusers":
            return Verdict(
                "ComfyUI",
                False,
                "ComfyUI maps this family's transformer.<name> keys but ignores lora_adapter_metadata, so the "
                "strength is right only when alpha equals the rank",
                "cadence convert FILE OUT --to comfyui",
            )
        if shape.layout == "kohya" and not self.comfy_kohya:
            return Verdict(
                "ComfyUI",
                False,
                "ComfyUI matches lora_unet_ keys only to the model's own (fused) layer names",
                "save.format: comfyui, or cadence convert FILE OUT --to comfyui",
            )
        return Verdict("ComfyUI", True)

    def diffusers(self, shape):
        from cadence.networks.loaders import Verdict

        if shape.layout == "diffusers":
            return Verdict("diffusers", True)
        algos = self.diffusers_algos.get(shape.layout, frozenset({"lora"}))
        unread = sorted(shape.algos - algos)
        if unread or shape.dora:
            what = f"{', '.join(unread)} adapters" if unread else "DoRA"
            return Verdict(
                "diffusers",
                False,
                f"its converter for this layout reads {', '.join(sorted(algos))} only, not {what}",
                "save.format: diffusers (LoRA), or load the file in ComfyUI",
            )
        dropped = sorted(n for n in shape.modules if n in self.drops_alpha_of)
        if dropped:
            return Verdict(
                "diffusers",
                False,
                f"its converter ignores the .alpha of {dropped[0]} (the file loads at scale 1 there)",
                "cadence convert FILE OUT --to diffusers, or leave it out of the targets",
            )
        return Verdict("diffusers", True, self.diffusers_caveat.get(shape.layout, ""))
