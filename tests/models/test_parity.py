"""Training inputs equal what diffusers' Wan pipelines build during sampling (the train/infer contract)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import WanImageToVideoPipeline, WanPipeline
from PIL import Image

from cadence.config.schema import ModelConfig
from cadence.models import load_model_adapter

CPU = torch.device("cpu")
PROMPT = "a red car turns on a wet street at night"


def _adapter(folder, arch):
    return load_model_adapter(ModelConfig(name_or_path=str(folder), arch=arch), CPU, torch.float32)


def _image(size: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _first_frame(pipe, image: Image.Image, size: int) -> torch.Tensor:
    """The [1, 3, H, W] tensor in [-1, 1] the pipeline makes from the user's image."""
    return pipe.video_processor.preprocess(image, height=size, width=size).to(torch.float32)


@pytest.mark.parametrize("arch", ["wan22_14b_i2v", "wan21_i2v"])
def test_condition_equals_prepare_latents(tiny_dirs, arch):
    folder = tiny_dirs(arch)
    pipe = WanImageToVideoPipeline.from_pretrained(folder)
    adapter = _adapter(folder, arch)
    image = _image(32)
    frame = _first_frame(pipe, image, 32)
    gen = torch.Generator().manual_seed(0)
    _, condition = pipe.prepare_latents(frame, 1, 16, 32, 32, 9, torch.float32, CPU, gen, None, None)
    ours = adapter.encode_condition(frame, num_frames=9)
    assert ours["condition"].shape == (1, 20, 3, 4, 4)
    assert torch.equal(ours["condition"], condition)
    assert torch.equal(ours["condition"][:, :4, 0], torch.ones(1, 4, 4, 4))  # frame 0 marked known
    assert ours["condition"][:, :4, 1:].abs().sum() == 0
    if arch == "wan21_i2v":
        assert torch.equal(ours["image_embeds"], pipe.encode_image(image, CPU))
    else:
        assert "image_embeds" not in ours


def test_ti2v_5b_condition_equals_prepare_latents(tiny_dirs):
    folder = tiny_dirs("wan22_5b")
    pipe = WanImageToVideoPipeline.from_pretrained(folder)
    adapter = _adapter(folder, "wan22_5b")
    frame = _first_frame(pipe, _image(64), 64)
    gen = torch.Generator().manual_seed(0)
    _, latent, mask = pipe.prepare_latents(frame, 1, 48, 64, 64, 5, torch.float32, CPU, gen, None, None)
    ours = adapter.encode_condition(frame, num_frames=5)
    assert torch.equal(ours["first_frame_latent"], latent)
    assert torch.equal(ours["first_frame_mask"], mask)
    assert torch.equal(adapter.loss_mask(ours), mask)


def test_text_embeddings_equal_pipeline(tiny_dirs):
    folder = tiny_dirs("wan22_14b_i2v")
    pipe = WanImageToVideoPipeline.from_pretrained(folder)
    adapter = _adapter(folder, "wan22_14b_i2v")
    prompts = ["a dog", "  a woman   smiles at the camera, slow pan "]
    embeds = adapter.encode_prompts(prompts)
    assert [e.shape[0] for e in embeds][0] < embeds[1].shape[0]
    with torch.no_grad():  # as inside the pipeline's __call__ (grad mode changes kernels by ~1e-6)
        expected = pipe._get_t5_prompt_embeds(prompts, device=CPU)
    assert torch.equal(adapter.pad_text(embeds), expected)


def _capture(module, calls: list):
    def hook(_mod, _args, kwargs, output):
        calls.append(({k: v for k, v in kwargs.items() if torch.is_tensor(v)}, output[0].detach().clone()))

    return module.register_forward_hook(hook, with_kwargs=True)


def _run_and_capture(pipe, arch: str, size: int, image: Image.Image | None):
    calls: dict[str, list] = {"transformer": [], "transformer_2": []}
    handles = [_capture(getattr(pipe, n), calls[n]) for n in calls if getattr(pipe, n, None) is not None]
    kwargs = dict(
        prompt=PROMPT,
        height=size,
        width=size,
        num_frames=5,
        num_inference_steps=4,
        guidance_scale=1.0,
        output_type="latent",
        generator=torch.Generator().manual_seed(1),
    )
    if image is not None:
        kwargs["image"] = image
    pipe.set_progress_bar_config(disable=True)
    pipe(**kwargs)
    for h in handles:
        h.remove()
    return calls


@pytest.mark.parametrize(
    ("arch", "size", "i2v"),
    [
        ("wan22_14b_i2v", 32, True),
        ("wan21_i2v", 32, True),
        ("wan22_14b", 32, False),
        ("wan22_5b", 64, True),
        ("wan22_5b", 64, False),
    ],
)
def test_predict_equals_pipeline_transformer_call(tiny_dirs, arch, size, i2v):
    """Hook the real pipeline's transformer calls, then rebuild each from the adapter's own encoders."""
    folder = tiny_dirs(arch)
    pipe = (WanImageToVideoPipeline if i2v else WanPipeline).from_pretrained(folder)
    image = _image(size, seed=2) if i2v else None
    calls = _run_and_capture(pipe, arch, size, image)
    adapter = _adapter(folder, arch)
    text = adapter.pad_text(adapter.encode_prompts([PROMPT]))
    cond = adapter.encode_condition(_first_frame(pipe, image, size), 5) if i2v else {}
    checked = set()
    for spec in adapter.experts:
        for inputs, output in calls[spec.component]:
            hidden, ts = inputs["hidden_states"], inputs["timestep"]
            t = ts.reshape(ts.shape[0], -1).max(dim=1).values.float() / 1000.0
            assert spec.contains(float(t[0])), (spec, t)
            noisy = hidden[:, : adapter.latent_channels]
            assert torch.equal(inputs["encoder_hidden_states"], text)
            pred = adapter.predict(spec.name, noisy, t, text, cond)
            torch.testing.assert_close(pred, output, atol=1e-5, rtol=1e-5)
            checked.add(spec.name)
    assert checked == {e.name for e in adapter.experts}  # 4 steps reach both experts of the A14B models
