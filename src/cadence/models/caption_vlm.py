"""Vision-language captioners through transformers' own classes: Qwen2-VL, Qwen2.5-VL and Qwen3-VL.

The model is `AutoModelForImageTextToText` (so `Qwen2_5_VLForConditionalGeneration`,
`Qwen3VLForConditionalGeneration`, ...); the processor is the checkpoint's own Qwen processor class with its
image processor, tokenizer and chat template, loaded without its video processor: transformers' Qwen video
processors need torchvision, which a CPU machine (or a minimal GPU image) often lacks. A clip is therefore
given to the model as its sampled frames, each an image labelled with its time in the clip ("Frame 2
(0.53 s):"), which the Qwen-VL models read as a sequence (Qwen3-VL's own video prompt labels its frames with
timestamps the same way). Everything else - resizing to the patch grid, image placeholder tokens, M-RoPE
positions, generation - is transformers' code.

Quantization: `fp8` stores the language model's Linear weights in Cadence's block-scaled e4m3
(`cadence.perf.fp8`, dequantized on use; the vision tower stays in the compute dtype); `nf4` is
bitsandbytes' 4-bit NormalFloat through transformers' `BitsAndBytesConfig` (CUDA only).
"""

from __future__ import annotations

import copy
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

log = logging.getLogger(__name__)

# model_type -> processor class name in transformers (each takes image_processor, tokenizer, video_processor)
PROCESSORS = {
    "qwen2_vl": "Qwen2VLProcessor",
    "qwen2_5_vl": "Qwen2_5_VLProcessor",
    "qwen3_vl": "Qwen3VLProcessor",
    "qwen3_vl_moe": "Qwen3VLProcessor",
}
QUANTIZE = ("fp8", "nf4")
GPU_MODELS = ("Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen3-VL-8B-Instruct")


class CaptionModelError(ValueError):
    """The model cannot be loaded or used as asked; the text names the option and what to do."""


@dataclass(frozen=True)
class Visual:
    """What the model looks at: one still image, or a clip's frames with their times in seconds."""

    images: tuple[Image.Image, ...]
    times: tuple[float, ...] | None = None  # None for a still image

    @property
    def is_clip(self) -> bool:
        return self.times is not None


@dataclass(frozen=True)
class Caption:
    text: str
    new_tokens: int
    cut: bool  # stopped by max_new_tokens before the end-of-turn token


def _images_only(base: type) -> type:
    """`base` (a Qwen processor class) without its video processor: `ProcessorMixin` takes the
    sub-processors from the `__init__` signature, so this subclass loads the image processor and tokenizer only
    (through `from_pretrained`, chat template included) and needs no torchvision."""

    class ImagesOnlyProcessor(base):  # type: ignore[misc, valid-type]
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs) -> None:
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    ImagesOnlyProcessor.__name__ = ImagesOnlyProcessor.__qualname__ = f"{base.__name__}ImagesOnly"
    return ImagesOnlyProcessor


def _model_type(name_or_path: str) -> str:
    from transformers import AutoConfig

    if name_or_path.startswith(("/", ".", "~")) and not Path(name_or_path).expanduser().is_dir():
        raise CaptionModelError(
            f"--model {name_or_path}: no such folder; give a model folder or a hub id such as {GPU_MODELS[0]}"
        )
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        where = "folder" if Path(name_or_path).exists() else "model id"
        raise CaptionModelError(
            f"--model {name_or_path}: cannot read its config.json ({exc.__class__.__name__}: {exc}); give a "
            f"transformers model folder or hub id such as {GPU_MODELS[0]} (this {where} has none)"
        ) from None
    if config.model_type not in PROCESSORS:
        raise CaptionModelError(
            f"--model {name_or_path} is a {config.model_type!r} model; cadence caption runs the Qwen-VL families "
            f"({', '.join(sorted(PROCESSORS))}), e.g. {' or '.join(GPU_MODELS)}"
        )
    return config.model_type


def _quantization(quantize: str | None, device: torch.device, dtype: torch.dtype) -> dict:
    """from_pretrained arguments for `quantize` (nf4 through bitsandbytes; fp8 is applied after loading)."""
    if quantize is None or quantize == "fp8":
        return {}
    if quantize != "nf4":
        raise CaptionModelError(f"--quantize {quantize!r} is not one of {', '.join(QUANTIZE)}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise CaptionModelError(
            "--quantize nf4 needs bitsandbytes, which is not installed: `pip install bitsandbytes` (CUDA GPUs), "
            "or use --quantize fp8 (Cadence's own, no extra package)"
        )
    if device.type != "cuda":
        raise CaptionModelError(
            f"--quantize nf4 runs on CUDA GPUs only (device is {device}); use --quantize fp8"
        )
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    return {"quantization_config": config}


def _quantize_fp8(model: torch.nn.Module) -> None:
    """Cadence's block-scaled fp8 on the language model's Linears (not the vision tower, embeddings or head)."""
    from cadence.perf.quantize import quantize_linears

    decoder = model.get_decoder()
    linears = {n: m for n, m in decoder.named_modules() if isinstance(m, torch.nn.Linear)}
    quantize_linears(decoder, linears, "fp8", key="--quantize")


class CaptionModel:
    """A loaded VLM and its processor; `caption()` turns one image or clip and a prompt into text."""

    def __init__(self, model, processor, device: torch.device, name: str) -> None:
        self.model = model
        self.processor = processor
        self.device = device
        self.name = name
        config = copy.deepcopy(model.generation_config)
        config.do_sample = False  # greedy: the same file gives the same caption on every run
        config.temperature = config.top_p = config.top_k = None
        self.generation_config = config
        self.eos_ids = set(_as_list(config.eos_token_id))

    def inputs(self, visual: Visual, prompt: str) -> dict[str, torch.Tensor]:
        """The model inputs for `visual` + `prompt`, on the model's device (the processor's own work)."""
        content: list[dict] = []
        if visual.times is None:
            content.append({"type": "image"})
        else:
            for i, seconds in enumerate(visual.times):
                content += [{"type": "text", "text": f"Frame {i + 1} ({seconds:.2f} s):"}, {"type": "image"}]
        content.append({"type": "text", "text": prompt})
        messages = [{"role": "user", "content": content}]
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        batch = self.processor(text=[text], images=list(visual.images), return_tensors="pt")
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    @torch.inference_mode()
    def generate(self, inputs: dict[str, torch.Tensor], max_new_tokens: int) -> Caption:
        """Greedy generation of at most `max_new_tokens`; the reply text without special tokens."""
        config = copy.copy(self.generation_config)
        config.max_new_tokens = max_new_tokens
        out = self.model.generate(**inputs, generation_config=config)
        new = out[0, inputs["input_ids"].shape[1] :]
        ended = len(new) > 0 and int(new[-1]) in self.eos_ids
        text = self.processor.batch_decode(new[None], skip_special_tokens=True)[0]
        return Caption(text.strip(), len(new), cut=not ended and len(new) >= max_new_tokens)

    def caption(self, visual: Visual, prompt: str, max_new_tokens: int) -> Caption:
        return self.generate(self.inputs(visual, prompt), max_new_tokens)


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def load_caption_model(
    name_or_path: str, device: torch.device, dtype: torch.dtype, quantize: str | None = None
) -> CaptionModel:
    """Load a Qwen-VL checkpoint (folder or hub id) for captioning on `device` in `dtype`."""
    import transformers
    from transformers import AutoModelForImageTextToText

    if int(transformers.__version__.split(".")[0]) < 5:
        raise CaptionModelError(
            f"cadence caption needs transformers 5 or newer (this is {transformers.__version__}): "
            "pip install 'transformers>=5.23'"
        )
    model_type = _model_type(name_or_path)
    processor_class = _images_only(getattr(transformers, PROCESSORS[model_type]))
    processor = processor_class.from_pretrained(name_or_path)
    extra = _quantization(quantize, device, dtype)
    if extra:
        extra["device_map"] = {"": str(device)}
    model = AutoModelForImageTextToText.from_pretrained(name_or_path, dtype=dtype, **extra).eval()
    if quantize == "fp8":
        _quantize_fp8(model)  # on the CPU, before the move: the GPU never holds the full-precision weights
    if not extra:
        model.to(device)
    log.info(
        "caption model %s (%s, %s%s) on %s",
        name_or_path,
        type(model).__name__,
        str(dtype).removeprefix("torch."),
        f", {quantize}" if quantize else "",
        device,
    )
    return CaptionModel(model, processor, device, name_or_path)
