"""The instructions `cadence caption` gives the vision-language model, and the trigger word.

Two default styles. `motion` (for motion LoRAs, the default): what moves and how - subject action, direction
and speed, camera movement - because a video LoRA learns what its captions name and leaves to the base model
what they do not. `character` (character/style LoRAs): the trigger word stands for the subject, and the
caption describes what varies between the clips (pose, expression, clothing, action, setting, framing) but
not the subject's fixed look, so that look binds to the trigger word. A custom prompt (`--prompt` with `\\n`
escapes as in musubi-tuner, or `--prompt-file`) may use `{trigger}` and `{media}` ("video clip"/"image").
"""

from __future__ import annotations

from pathlib import Path

from cadence.tools.caption_args import STYLES

_COMMON = (
    "Write one paragraph of plain prose, at most about 80 words. Describe only what is visible; do not "
    "guess names, do not mention frames, timestamps or the words 'video', 'image' or 'clip', and do not "
    "begin with 'The video shows' or 'In this'."
)
_MOTION_CLIP = (
    "Describe this video clip for training a video generation model. Say who or what the subject is, what "
    "it does and exactly how it moves (direction, speed, gestures, how the motion starts and ends), how the "
    "camera moves (static, pan, tilt, zoom, tracking, handheld), and the setting and lighting in a few words. "
)
_MOTION_IMAGE = (
    "Describe this image for training a video generation model: the subject, its pose and any motion it "
    "implies, the setting, the lighting and the camera framing. "
)
_CHARACTER = (
    "Describe this {media} for training a model on the character or style called '{trigger}'. Call the main "
    "subject '{trigger}' and do not describe its fixed look (face, hair, body, species, art style); describe "
    "what varies: pose, expression, clothing, action, setting, lighting and camera framing. "
)
_CHARACTER_NO_TRIGGER = (
    "Describe this {media} for training a model on its main character or style. Describe the subject's look "
    "precisely (face, hair, build, clothing, art style), then its pose, expression and action, the setting, "
    "the lighting and the camera framing. "
)
_TRIGGER_HINT = "Mention '{trigger}' as the name of the main subject. "


class PromptError(ValueError):
    """A prompt option that cannot be used; the text names it and what to do."""


def default_prompt(style: str, is_clip: bool, trigger: str | None) -> str:
    """The built-in instruction for `style` and one image or clip."""
    media = "video clip" if is_clip else "image"
    if style == "motion":
        text = _MOTION_CLIP if is_clip else _MOTION_IMAGE
        if trigger:
            text += _TRIGGER_HINT
    elif style == "character":
        text = _CHARACTER if trigger else _CHARACTER_NO_TRIGGER
    else:
        raise PromptError(f"--style {style!r} is not one of {', '.join(STYLES)}")
    return (text + _COMMON).format(media=media, trigger=trigger or "")


def custom_prompt(prompt: str | None, prompt_file: str | None) -> str | None:
    """The user's prompt template (`--prompt` with `\\n` escapes, or the text of `--prompt-file`), or None."""
    if prompt is not None and prompt_file is not None:
        raise PromptError("give --prompt or --prompt-file, not both")
    if prompt_file is not None:
        path = Path(prompt_file)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise PromptError(
                f"--prompt-file {path}: cannot be read ({exc}); give a UTF-8 text file"
            ) from None
    elif prompt is not None:
        text = prompt.replace("\\n", "\n")
    else:
        return None
    if not text.strip():
        raise PromptError(
            "the prompt is empty; give an instruction such as 'Describe the motion in this clip.'"
        )
    return text.strip()


def render_prompt(template: str | None, style: str, is_clip: bool, trigger: str | None) -> str:
    """The instruction for one file: the custom template with its placeholders filled, else the default."""
    if template is None:
        return default_prompt(style, is_clip, trigger)
    media = "video clip" if is_clip else "image"
    # a plain replace, not str.format: a user's prompt may hold other braces (JSON examples)
    return template.replace("{trigger}", trigger or "").replace("{media}", media)


def with_trigger(caption: str, trigger: str | None) -> str:
    """The caption with the trigger word in it (prepended when the model left it out)."""
    if not trigger or trigger in caption:
        return caption
    return f"{trigger}, {caption}" if caption else trigger
