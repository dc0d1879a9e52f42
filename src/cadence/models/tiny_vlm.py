"""Tiny random-weight vision-language models (Qwen2.5-VL, Qwen3-VL), written as complete transformers folders.

`cadence caption` loads these exactly as it loads `Qwen/Qwen2.5-VL-7B-Instruct`: the model is saved by
transformers' own `save_pretrained`, the image processor is the real Qwen2-VL one (PIL backend), and the
tokenizer is a byte-level BPE built offline with the `tokenizers` library over a few caption sentences, with
the Qwen special tokens (`<|im_start|>`, `<|image_pad|>`, ...) and a chat template in Qwen's format. So tests
run the real processor, the real vision tower and the real `generate` in milliseconds per token on a CPU.
The byte alphabet is printable ASCII, so the random captions such a model writes are plain (if meaningless)
text. Weights depend only on `seed`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

log = logging.getLogger(__name__)

VLM_ARCHS = ("qwen2_5_vl", "qwen3_vl")
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
_CORPUS = (
    "a person walks slowly across the street while the camera pans to the left",
    "a red car turns at the corner at night and its lights flash",
    "the woman smiles, raises her hand and waves at the camera",
    "a small dog runs along the beach, splashing through the water",
    "the camera zooms in on a tree as leaves fall in the wind",
    "a man in a blue jacket sits down and looks out of the window",
)
# Qwen's chat layout; the real checkpoints ship a longer template with the same output for these messages
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
VISION = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 32}


def build_vlm_tokenizer() -> PreTrainedTokenizerFast:
    """A deterministic byte-level BPE (printable ASCII alphabet, merges learnt from a few captions)."""
    # GPT-2's byte-level alphabet maps the printable bytes 33..126 to themselves and the space to "\u0120"
    printable = [chr(code) for code in range(33, 127)] + ["\u0120"]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=printable,
        limit_alphabet=len(printable),
        show_progress=False,
    )
    core.train_from_iterator(_CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=32768
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _config(arch: str, vocab: int, ids: dict[str, int]):
    tokens = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }
    text = {
        **TEXT,
        "vocab_size": vocab,
        "num_key_value_heads": 1,
        "max_position_embeddings": 8192,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    if arch == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
        vision = {**VISION, "window_size": 56, "fullatt_block_indexes": [1], "patch_size": 14}
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
    from transformers import Qwen3VLConfig

    text["head_dim"] = 16
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": [2, 3, 3],
        "mrope_interleaved": True,
    }
    vision = {**VISION, "patch_size": 16, "num_position_embeddings": 64, "deepstack_visual_indexes": [0]}
    return Qwen3VLConfig(text_config=text, vision_config=vision, **tokens)


def _image_processor(arch: str):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    patch = 14 if arch == "qwen2_5_vl" else 16
    factor = patch * 2
    # small pixel budgets keep the vision sequence short: at most 64 merged tokens per image
    return Qwen2VLImageProcessorPil(
        patch_size=patch, min_pixels=factor * factor, max_pixels=factor * factor * 64
    )


def write_tiny_vlm(path: Path, arch: str = "qwen2_5_vl", seed: int = 0) -> Path:
    """Write a complete tiny VLM folder for `arch` at `path` (created if needed) and return it."""
    if arch not in VLM_ARCHS:
        raise ValueError(f"unknown VLM arch {arch!r}; expected one of {', '.join(VLM_ARCHS)}")
    from transformers import AutoModelForImageTextToText

    path = Path(path)
    tokenizer = build_vlm_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    config = _config(arch, len(tokenizer), ids)
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config).eval()
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    _image_processor(arch).save_pretrained(str(path))
    (path / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    log.info("wrote tiny %s model to %s", arch, path)
    return path
