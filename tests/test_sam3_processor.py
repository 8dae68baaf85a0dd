"""The batched SAM3 adapter against SAM3's own `Sam3Processor`, one image and one prompt at a time.

The tiny model (engine/sources/sam3/tiny.py, 224 px) runs two images of other sizes through both:
ours squashes with engine.data.preprocess and grounds the 2 x 2 image x prompt grid in
chunks of 3 pairs (the first chunk ends inside the second image); the processor takes each
original image with `set_image` and each prompt with `set_text_prompt`. The processor hands
back only thresholded, upsampled results, so its `forward_grounding` outputs are recorded
on the way (queries, logits, masks) and its own scores and masks are checked as well.

Tolerances: float32 results 1e-5 (the batched matmuls reassociate float32 sums; ~2e-6 seen);
mask probabilities 1e-3, one float16 step near 1, because the adapter keeps them in float16.
"""

from __future__ import annotations

import pytest
import torch

from engine.core.errors import ConfigError
from engine.data.preprocess import squash_image
from engine.sources.sam3.build import build_random_sam3_model
from engine.sources.sam3.source import Sam3Config, Sam3Source
from engine.sources.sam3.tiny import TINY_SIDE, build_tiny_sam3
from kernels.grid import pool_to_tokens

PROMPTS = ("road", "tree")
FP32 = {"rtol": 1e-5, "atol": 1e-5}
FP16 = {"rtol": 0, "atol": 1e-3}


@pytest.fixture(scope="module")
def model():
    return build_random_sam3_model(None, "cpu", seed=0, model_factory=build_tiny_sam3)


@pytest.fixture(scope="module")
def originals() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(4)
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen) for h, w in ((300, 400), (180, 150))]


@pytest.fixture(scope="module")
def ours(model, originals):
    images = torch.stack([squash_image(image, side=TINY_SIDE) for image in originals])
    source = Sam3Source(model, Sam3Config(checkpoint=None, prompts=PROMPTS, grid_chunk=3))
    return source.run_batch(images, ["a", "b"], (0.5,), keep_mask_probs=True)


@pytest.fixture(scope="module")
def processor_runs(model, originals):
    """{(image, prompt): (the processor's state, its forward_grounding outputs)}, one pair at a time."""
    from sam3.model.sam3_image_processor import Sam3Processor

    processor = Sam3Processor(model, resolution=TINY_SIDE, device="cpu", confidence_threshold=0.0)
    recorded = []
    grounding = model.forward_grounding

    def record(*args, **kwargs):
        out = grounding(*args, **kwargs)
        recorded.append({k: out[k].clone() for k in ("queries", "pred_logits", "presence_logit_dec", "pred_masks")})
        return out

    model.forward_grounding = record
    try:
        runs = {}
        for i, image in enumerate(originals):
            for j, prompt in enumerate(PROMPTS):
                state = processor.set_text_prompt(prompt, processor.set_image(image))
                runs[i, j] = ({k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()
                               if k in ("scores", "masks_logits")},
                              state["backbone_out"]["vision_features"].clone(), recorded[-1])
    finally:
        del model.forward_grounding  # back to the class's method
    return runs


def test_batched_grid_equals_the_processor_one_pair_at_a_time(ours, processor_runs, originals):
    assert len(processor_runs) == 4
    for (i, j), (state, features, raw) in processor_runs.items():
        torch.testing.assert_close(ours.features[i], features[0], **FP32, msg=f"features of image {i}")
        torch.testing.assert_close(ours.queries[i, j], raw["queries"][0], **FP32, msg=f"queries {i, j}")
        expected_scores = raw["pred_logits"][0, :, 0].sigmoid() * raw["presence_logit_dec"][0].sigmoid()
        torch.testing.assert_close(ours.scores[i, j], expected_scores, **FP32, msg=f"scores {i, j}")
        # the processor's own scores: every query kept at threshold 0, in query order
        assert state["scores"].shape == (ours.scores.shape[-1],)
        torch.testing.assert_close(ours.scores[i, j], state["scores"], **FP32, msg=f"processor scores {i, j}")
        probs = raw["pred_masks"][0].sigmoid()  # (Q, M, M) on the model's mask grid
        torch.testing.assert_close(ours.mask_probs[i, j].float(), probs, **FP16, msg=f"masks {i, j}")
        torch.testing.assert_close(ours.query_masks[i, j].float(), pool_to_tokens(probs, grid=ours.query_masks.shape[-1]),
                                   **FP16, msg=f"pooled masks {i, j}")
        # the processor's masks are these logits upsampled to the original size, then the sigmoid
        h, w = originals[i].shape[-2:]
        upsampled = torch.nn.functional.interpolate(raw["pred_masks"][0][:, None], (h, w), mode="bilinear",
                                                    align_corners=False).sigmoid()
        torch.testing.assert_close(state["masks_logits"], upsampled, **FP32, msg=f"processor masks {i, j}")


def test_a_model_with_joint_box_scores_is_refused(model):
    model.supervise_joint_box_scores = True
    try:
        with pytest.raises(ConfigError, match="supervise_joint_box_scores") as err:
            Sam3Source(model, Sam3Config(checkpoint=None, prompts=PROMPTS))
        assert "\n" not in str(err.value)
    finally:
        model.supervise_joint_box_scores = False
