"""A model family: everything Cadence knows about one kind of model, in one registered object.

Generic code (config checks, data, perf, networks, sampling, the UI) never branches on a family's name; it
asks the family of an arch (`cadence.models.registry.family_of`) or a loaded `ModelAdapter`. A family says:

* which archs it has (`ArchSpec`: experts, I2V, geometry, frame rate or image-only, sample output kind) and
  the other spellings of their names (ai-toolkit's `arch` values and UI tags),
* how to recognise its Diffusers folders (`detect`) and which components they must hold,
* how to load one behind the `ModelAdapter` contract (`load`; a transformer may come from a single-file
  checkpoint beside the folder, `single_file.py`),
* its memory layout for `cadence.perf` (the repeated blocks in execution order, the Linears that may be
  quantized, the layers that stay in high precision),
* its default LoRA targets and its `KeyMap` (module names in the ComfyUI/kohya file layouts),
* the words a model card needs (`usage`) and its tiny random-weight folder (`write_tiny`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from torch import nn

    from cadence.models.base import ModelAdapter
    from cadence.models.card_usage import ArchUsage
    from cadence.networks.tensors import AdapterTensors


@dataclass(frozen=True)
class ArchSpec:
    """The facts of one arch that are known without loading anything (buckets, config checks, the UI)."""

    name: str
    title: str  # in words, e.g. "FLUX.1 dev"
    experts: tuple[str, ...] = ("main",)  # ("high_noise", "low_noise") for two-expert models
    i2v: Literal["never", "always", "optional"] = "never"
    spatial_multiple: int = 16  # pixel sizes are multiples of this (VAE stride x patch size)
    temporal_multiple: int = 1  # frame counts are k*temporal_multiple + 1 (1: images only)
    native_fps: int = 0  # the frame rate samples play at; 0 for image models
    output: Literal["video", "image"] = "video"  # what a sample is written as (mp4 + webp, or png)
    default_boundary: float | None = None  # two-expert models: the published expert boundary

    @property
    def two_experts(self) -> bool:
        return len(self.experts) > 1

    @property
    def image_only(self) -> bool:
        return self.output == "image"

    def geometry(self) -> tuple[int, int, int]:
        """(spatial_multiple, temporal_multiple, native_fps) as the dataset index takes them."""
        return self.spatial_multiple, self.temporal_multiple, self.native_fps

    def boundary(self, index: dict[str, Any], override: float | None) -> float | None:
        """Expert boundary of a two-expert model: config override, else the folder's `boundary_ratio`
        (model_index.json), else the published value; None for single-expert models."""
        if not self.two_experts:
            return None
        if override is not None:
            return float(override)
        if index.get("boundary_ratio") is not None:
            return float(index["boundary_ratio"])
        return self.default_boundary


class KeyMap:
    """Module names of a family's LoRA files: diffusers names (what Cadence keys modules by) <-> the names
    after `diffusion_model.` (ComfyUI / the original checkpoint) and after `lora_unet_` (kohya).

    The default maps names one to one (`original` for diffusers names that equal the original ones). A family
    whose original checkpoint fuses layers that diffusers splits (FLUX's q/k/v) overrides `export` / `restore`,
    which work on whole module sets."""

    family = "model"

    def to_original(self, name: str) -> str:
        """diffusers name -> original name (KeyError when the family has none for it)."""
        return name

    def to_diffusers(self, original: str) -> str:
        """original name -> diffusers name (KeyError when unknown)."""
        return original

    def kohya_to_original(self, flat: str) -> str:
        """`blocks_0_self_attn_q` (after `lora_unet_`) -> the original name; KeyError when unknown."""
        raise KeyError(f"no original name is known for kohya module {flat!r}")

    def export(self, modules: dict[str, AdapterTensors]) -> dict[str, AdapterTensors]:
        """{diffusers name: tensors} -> {original name: tensors} for the ComfyUI and kohya layouts."""
        return {self.to_original(name): t for name, t in modules.items()}

    def restore(self, modules: dict[str, AdapterTensors]) -> dict[str, AdapterTensors]:
        """The inverse of `export` (a file's original names -> diffusers names)."""
        return {self.to_diffusers(name): t for name, t in modules.items()}

    def export_problems(self, modules: dict[str, AdapterTensors]) -> list[str]:
        """Why `modules` have no ComfyUI/kohya form in this family (empty when they have one)."""
        algos = {t.algo for t in modules.values()}
        dora = any(t.dora_scale is not None for t in modules.values())
        return self.layout_problems(list(modules), algos.pop() if len(algos) == 1 else "mixed", dora)

    def layout_problems(self, names: list[str], algo: str, dora: bool) -> list[str]:
        """The same before training, from the target names and the configured type (`save.format` check)."""
        return []

    def knows(self, names: list[str]) -> bool:
        """True when every diffusers module name has an original name (used to recognise a file's family)."""
        try:
            for name in names:
                self.to_original(name)
        except (KeyError, ValueError):
            return False
        return True


class DiffusersNamesKeyMap(KeyMap):
    """The key map of a family whose original checkpoint (and ComfyUI model) uses diffusers' own module names
    (Qwen-Image, Z-Image): names map to themselves, restricted to the known ones; kohya's flat names (`.` -> `_`,
    ambiguous on their own) are parsed against the known block parts and globals."""

    def __init__(
        self, family: str, block_lists: tuple[str, ...], parts: tuple[str, ...], globals_: tuple[str, ...]
    ):
        self.family = family
        self.block_lists, self.parts, self.globals = block_lists, parts, globals_

    def to_original(self, name: str) -> str:
        head, _, rest = name.partition(".")
        index, _, part = rest.partition(".")
        if (head in self.block_lists and index.isdigit() and part in self.parts) or name in self.globals:
            return name
        raise KeyError(f"no {self.family} name is known for module {name!r}")

    def to_diffusers(self, original: str) -> str:
        return self.to_original(original)

    def kohya_to_original(self, flat: str) -> str:
        for known in self.globals:
            if known.replace(".", "_") == flat:
                return known
        for block in self.block_lists:
            head = block.replace(".", "_") + "_"
            index, _, part = flat[len(head) :].partition("_") if flat.startswith(head) else ("", "", "")
            for known in self.parts:
                if index.isdigit() and known.replace(".", "_") == part:
                    return f"{block}.{index}.{known}"
        raise KeyError(f"no {self.family} name is known for kohya module {flat!r}")


@dataclass
class ModelFamily(ABC):
    """One family; subclasses fill the facts and implement loading (see the module docstring)."""

    name: str
    title: str  # the family in words ("Wan", "FLUX.1"), as in "a complete Diffusers Wan folder"
    archs: dict[str, ArchSpec]
    transformer_classes: tuple[str, ...]  # diffusers class names of its denoisers
    keymap: KeyMap
    aliases: dict[str, str] = field(default_factory=dict)  # other spellings -> arch
    block_lists: tuple[str, ...] = ("blocks",)  # the transformer's repeated-block ModuleLists, in order
    high_precision_parts: tuple[str, ...] = ("norm", "embed")  # name parts never quantized
    encoder_parts: tuple[str, ...] = ("model_index.json", "vae", "text_encoder", "tokenizer")
    # takes model.assistant_lora_path (a frozen adapter, on during training only)
    training_adapter: bool = False
    # models.image_loaders.LoaderRules; None: networks.loaders' (Wan's) rules
    loader_rules: Any = None
    # its scheduler gives a shift per latent size (ModelAdapter.timestep_shift): timestep_type flux_shift
    scheduler_shift: bool = False

    # ------------------------------------------------------------------------------------------ folders
    @abstractmethod
    def detect(self, folder: Path, index: dict[str, Any]) -> str | None:
        """The arch a Diffusers folder (its model_index.json already read) holds, or None when the folder is
        not of this family."""

    def accepts(self, configured: str, detected: str) -> bool:
        """Whether `model.arch: configured` may load a folder detected as `detected`."""
        return configured == detected

    @abstractmethod
    def required_components(self, arch: str) -> tuple[str, ...]: ...

    @abstractmethod
    def load(
        self,
        folder: Path,
        arch: str,
        model_cfg: Any,
        device: Any,
        dtype: Any,
        model_id: str,
        files: dict[str, Path] | None = None,
    ) -> ModelAdapter:
        """Every component training and sampling need, frozen, behind the adapter contract. `files`: the
        transformer components given as single-file checkpoints ({component: file}, checked by the registry),
        loaded with `components.load_component(..., single_file=file)`; the rest come from `folder`."""

    # ------------------------------------------------------------------------------------- memory layout
    def transformer_blocks(self, transformer: nn.Module) -> nn.ModuleList:
        """The repeated blocks in execution order (checkpointing, block swap, regional compile). A family
        with several block lists gets one ModuleList over all of them (the modules are not re-registered)."""
        from torch import nn

        lists = [getattr(transformer, name, None) for name in self.block_lists]
        if not all(isinstance(blocks, nn.ModuleList) for blocks in lists):
            raise TypeError(
                f"{type(transformer).__name__} has no {' / '.join(self.block_lists)} ModuleList; "
                f"not a {self.name} transformer"
            )
        if len(lists) == 1:
            return lists[0]
        return nn.ModuleList([block for blocks in lists for block in blocks])

    def block_prefixes(self) -> tuple[str, ...]:
        return tuple(f"{name}." for name in self.block_lists)

    def block_of(self, name: str) -> tuple[int, int, str] | None:
        """(which block list, block number, name inside the block) of a module in the repeated blocks, else
        None: `single_transformer_blocks.3.attn.to_q` -> (1, 3, "attn.to_q") for FLUX."""
        head, _, rest = name.partition(".")
        number, _, inner = rest.partition(".")
        if head in self.block_lists and number.isdigit():
            return self.block_lists.index(head), int(number), inner
        return None

    def keep_high_precision(self, name: str) -> bool:
        """True for a module (dotted name below the transformer) that must not be quantized."""
        return any(part in name for part in self.high_precision_parts)

    def quantizable_linears(self, transformer: nn.Module) -> dict[str, nn.Linear]:
        """Linear layers inside the blocks that may be stored quantized (attention and feed-forward)."""
        from torch import nn

        out: dict[str, nn.Linear] = {}
        for list_name in self.block_lists:
            for i, block in enumerate(getattr(transformer, list_name)):
                for name, module in block.named_modules():
                    full = f"{list_name}.{i}.{name}"
                    if isinstance(module, nn.Linear) and not self.keep_high_precision(full):
                        out[full] = module
        return out

    # ----------------------------------------------------------------------------------------------- LoRA
    def default_target(self, name: str) -> bool:
        """Whether a Linear called `name` (diffusers name below the transformer) is adapted by default: every
        Linear inside the repeated blocks."""
        return name.startswith(self.block_prefixes())

    # ---------------------------------------------------------------------------------------------- words
    @abstractmethod
    def usage(self, arch: str) -> ArchUsage: ...

    @abstractmethod
    def write_tiny(self, path: Path, arch: str, seed: int = 0) -> Path:
        """A complete Diffusers folder of `arch` with tiny random weights (tests, demos)."""

    # ------------------------------------------------------------------------------------------- helpers
    def spec(self, arch: str) -> ArchSpec:
        return self.archs[arch]

    def canonical(self, value: str) -> str | None:
        """`value` as one of this family's archs (an alias resolved), or None."""
        if value in self.archs:
            return value
        return self.aliases.get(value)
