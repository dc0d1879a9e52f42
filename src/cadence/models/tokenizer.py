"""A tiny T5-style tokenizer built offline.

Real Wan folders ship the umt5-xxl SentencePiece tokenizer (250k pieces). Tests and the demo need a
tokenizer that loads through `AutoTokenizer.from_pretrained` without any download, behaves like T5 on the
pipeline's call (pad to max_length, truncation, attention mask, trailing `</s>`) and still gives different
ids for different captions. A Unigram model over single characters plus a few common words does that:
any ASCII text is covered, unknown characters map to `<unk>`.
"""

from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIAL = ("<pad>", "</s>", "<unk>")  # T5 order: pad=0, eos=1, unk=2
WORDS = (
    "a an the of and in on with at to from by is are man woman person dog cat car city street forest "
    "water sky sun night day walks runs turns looks camera pan zoom slow fast motion video photo red "
    "green blue white black light dark small large people tree house road beach snow rain smiles dance"
).split()


def build_tokenizer(model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """Return a deterministic Unigram tokenizer with T5 conventions (`</s>` appended, pad id 0)."""
    vocab: list[tuple[str, float]] = [(tok, 0.0) for tok in SPECIAL]
    vocab += [("\u2581" + w, -2.0) for w in WORDS]
    vocab += [("\u2581", -4.0)]
    vocab += [(ch, -6.0) for ch in string.ascii_letters + string.digits + string.punctuation]
    core = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    core.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    core.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    core.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
        padding_side="right",
    )


def vocab_size() -> int:
    """Number of ids the tokenizer can emit (the text encoder's embedding table must cover them)."""
    return len(SPECIAL) + len(WORDS) + 1 + len(string.ascii_letters + string.digits + string.punctuation)


def save_tokenizer(path: Path) -> Path:
    """Write the tokenizer folder (tokenizer.json + tokenizer_config.json) and return it."""
    build_tokenizer().save_pretrained(str(path))
    return path


# --------------------------------------------------------------------------------------------- CLIP
CLIP_SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def build_clip_tokenizer(model_max_length: int = 77) -> PreTrainedTokenizerFast:
    """A tiny CLIP-style tokenizer (byte-level BPE with `</w>` word ends, lower-cased, `<|startoftext|> ...
    <|endoftext|>` around every text, padded with `<|endoftext|>` to 77) for FLUX's CLIP text encoder. Merges
    are learnt from the words above, so any ASCII caption tokenizes."""
    from tokenizers import trainers

    core = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    core.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    core.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.BPEDecoder(suffix="</w>")])
    alphabet = [chr(code) for code in range(33, 127)]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=list(CLIP_SPECIAL),
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    core.train_from_iterator([" ".join(WORDS)] * 4, trainer)
    core.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[(t, core.token_to_id(t)) for t in CLIP_SPECIAL],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=model_max_length,
        padding_side="right",
    )
