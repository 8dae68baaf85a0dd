"""engine.data.preprocess against SAM3's own processor transform (Sam3Processor.transform)."""

from __future__ import annotations

import pytest
import torch

from engine.data.preprocess import MODEL_SIDE, normalize_for_model, squash_image
from engine.sources.sam3.compat import apply_cpu_compat


@pytest.fixture(scope="module")
def processor_transform():
    """The transform Sam3Processor applies to a (3, H, W) uint8 image tensor."""
    apply_cpu_compat()  # torchvision must import next to a CPU-only torch
    from sam3.model.sam3_image_processor import Sam3Processor

    processor = Sam3Processor(model=None, resolution=MODEL_SIDE, device="cpu")
    steps = processor.transform.transforms
    # ToDtype(uint8) -> Resize -> ToDtype(float32, scale) -> Normalize(0.5, 0.5)
    assert [type(t).__name__ for t in steps] == ["ToDtype", "Resize", "ToDtype", "Normalize"], steps
    return processor.transform


def random_image(h: int, w: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)


@pytest.mark.parametrize("h, w", [(1500, 1100), (300, 200), (MODEL_SIDE, MODEL_SIDE)], ids=["down", "up", "same"])
def test_squash_equals_processor_resize_exactly(processor_transform, h, w):
    image = random_image(h, w, seed=h + w)
    to_uint8, resize = processor_transform.transforms[:2]
    expected = resize(to_uint8(image))
    got = squash_image(image)
    assert got.dtype == torch.uint8 and got.shape == (3, MODEL_SIDE, MODEL_SIDE)
    assert torch.equal(got, expected), f"max diff {(got.int() - expected.int()).abs().max().item()}"


@pytest.mark.parametrize("capability", ["AVX512", "AVX2", "DEFAULT"])
def test_squash_follows_torchvisions_uint8_rule_on_every_x86_cpu(processor_transform, monkeypatch, capability):
    """torchvision resizes uint8 natively only with AVX2/AVX512; on other x86 CPUs through float, rounded."""
    import platform

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    image = random_image(300, 200, seed=11)
    expected = processor_transform.transforms[1](image)  # torchvision's Resize, under the same capability
    got = squash_image(image)
    assert torch.equal(got, expected), f"max diff {(got.int() - expected.int()).abs().max().item()}"
    native = torch.nn.functional.interpolate(image[None], size=(MODEL_SIDE, MODEL_SIDE), mode="bilinear", antialias=True)[0]
    assert torch.equal(got, native) == (capability != "DEFAULT")  # the two branches do differ


@pytest.mark.parametrize("h, w", [(1500, 1100), (300, 200)], ids=["down", "up"])
def test_normalized_equals_processor_transform(processor_transform, h, w):
    image = random_image(h, w, seed=7 * h + w)
    expected = processor_transform(image)  # (3, 1008, 1008) float32
    got = normalize_for_model(squash_image(image)[None])[0]
    assert got.dtype == torch.float32 == expected.dtype
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert got.min() >= -1 and got.max() <= 1


def test_batched_squash_equals_per_image():
    images = torch.stack([random_image(400, 600, seed=s) for s in range(3)])
    batched = squash_image(images, side=224)
    assert batched.shape == (3, 3, 224, 224)
    for i in range(3):
        assert torch.equal(batched[i], squash_image(images[i], side=224))


def test_rejects_float_images():
    with pytest.raises(AssertionError, match="uint8"):
        squash_image(torch.zeros(3, 10, 10))
    with pytest.raises(AssertionError, match="uint8"):
        normalize_for_model(torch.zeros(1, 3, 10, 10))


@pytest.mark.gpu
def test_cuda_squash_within_one_grey_level_of_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (torch.cuda.is_available() is False)")
    image = random_image(1500, 1100, seed=3)
    cpu = squash_image(image)
    gpu = squash_image(image.cuda()).cpu()
    # the CUDA path resizes in float32 and rounds: the same filter, rounded once instead of
    # in the uint8 kernel's fixed point, so a pixel may differ by one grey level
    assert (gpu.int() - cpu.int()).abs().max().item() <= 1
