"""SAM3 adapter on a tiny model built from the package's own classes (CPU, 224 px).

The tiny model is saved to a temporary sam3.pt in the official layout and loaded back
through the real loader; every check below runs on that loaded model.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from engine.core.devices import parse_device
from engine.core.errors import BackendError, CheckpointError, ConfigError
from engine.sources.sam3.build import (
    build_random_sam3_model,
    expected_shapes,
    load_sam3_model,
    parameter_free,
    verify_checkpoint,
)
from engine.sources.sam3.checkpoint import check_state_dict, normalise_checkpoint, resolve_bpe_path
from engine.sources.sam3.source import Sam3Config, Sam3Source
from engine.sources.sam3.tiny import TINY_SIDE, build_tiny_sam3
from kernels.grid import pool_to_tokens

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ("road", "tree")
BPE_MD5 = "933b7abbbbde62c36f02f0e6ccde464f"

# Tolerances for paths that should agree. Not bitwise: CPU matmuls over a different
# number of rows (chunk size, batch size) take different blocking paths and reassociate
# float32 sums; observed differences are ~2e-6 on O(1) values.
FP32 = {"rtol": 1e-5, "atol": 1e-5}
FP16 = {"rtol": 0, "atol": 1e-3}  # one float16 step near 1 is 2**-10 ~ 9.8e-4


@pytest.fixture(scope="module", autouse=True)
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, before))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    model = build_random_sam3_model(None, "cpu", seed=0, model_factory=build_tiny_sam3)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def checkpoint(tiny_state, tmp_path_factory) -> Path:
    """The official layout: {"model": {"detector.<key>": ..., "tracker.<key>": ...}}."""
    path = tmp_path_factory.mktemp("ckpt") / "sam3.pt"
    weights = {f"detector.{k}": v for k, v in tiny_state.items()}
    weights["tracker.maskmem_tpos_enc"] = torch.zeros(7, 1, 1, 64)  # the video model's: ignored
    torch.save({"model": weights}, path)
    return path


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_sam3_model(checkpoint, None, "cpu", model_factory=build_tiny_sam3)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (2, 3, TINY_SIDE, TINY_SIDE), dtype=torch.uint8, generator=gen)


def make_source(model, *, prompts=PROMPTS, grid_chunk=8, checkpoint=None) -> Sam3Source:
    return Sam3Source(model, Sam3Config(checkpoint=checkpoint, prompts=prompts, grid_chunk=grid_chunk))


@pytest.fixture(scope="module")
def taus(model, images) -> tuple[float, ...]:
    """Thresholds that keep all, about half, and none of the (random-weight) scores."""
    scores = make_source(model).run_batch(images, ["a", "b"], (0.0,)).scores
    return (0.0, float(scores.median()), 1.0 + 1e-6)


@pytest.fixture(scope="module")
def grid(model, images, taus):
    """The whole 2 x 2 grid in one forward_grounding call."""
    return make_source(model, grid_chunk=4).run_batch(images, ["a", "b"], taus, keep_mask_probs=True)


# ----------------------------------------------------------------------------- loading


def test_loaded_weights_equal_saved(model, tiny_state):
    loaded = model.state_dict()
    assert loaded.keys() == tiny_state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in tiny_state.items())
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert not model.training


def test_plain_state_dict_loads_too(tiny_state, tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(tiny_state, path)
    model = load_sam3_model(path, None, "cpu", model_factory=build_tiny_sam3)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in tiny_state.items())


def test_verify_checkpoint_reports_what_was_loaded(checkpoint, tiny_state, model):
    report = verify_checkpoint(checkpoint, device="cpu", model_factory=build_tiny_sam3)
    assert report["layout"] == "official"
    assert report["keys_loaded"] == len(tiny_state)
    assert report["keys_ignored"] == {"tracker": 1}
    assert report["parameters"] == sum(p.numel() for p in model.parameters())
    assert report["device"] == "cpu"
    with open(checkpoint, "rb") as f:
        assert report["sha256"] == hashlib.sha256(f.read()).hexdigest()  # every byte, not the first MiB
    assert report["bytes"] == checkpoint.stat().st_size


def test_official_checkpoint_layout_is_accepted():
    """The published sam3.pt is the video model's state_dict (the package's video builder
    loads it with strict=True), so its key set is the video model's: that must pass our
    strict check against the full image model, dropping only the tracker's weights."""
    from engine.sources.sam3 import compat as sam3_compat

    bpe = str(resolve_bpe_path(None))
    with parameter_free():
        video = sam3_compat.import_model_builder().build_sam3_video_model(
            checkpoint_path=None, load_from_HF=False, bpe_path=bpe, device="meta")
    official = {"model": {k: torch.empty(v.shape, device="meta") for k, v in video.state_dict().items()}}
    contents = normalise_checkpoint(Path("sam3.pt"), official)
    expected = expected_shapes(bpe)
    check_state_dict(contents, expected)
    assert set(contents.state) == set(expected)
    tracker = sum(1 for k in official["model"] if k.startswith("tracker."))
    assert contents.ignored_keys == {"tracker": tracker, "tracker_neck": 22}  # 4 scales of the SAM2-style neck


def bad_checkpoints(tiny_state, folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a phrase its error must contain)."""
    torch.save({"model": {f"detector.{k}": v for k, v in tiny_state.items()}}, folder / "good.pt")
    full = (folder / "good.pt").read_bytes()
    cases = {}

    cases["missing_file"] = (folder / "nowhere" / "sam3.pt", "no such file")

    (folder / "truncated.pt").write_bytes(full[: len(full) // 2])
    cases["truncated"] = (folder / "truncated.pt", "truncated or corrupt")

    (folder / "notes.pt").write_text("these are not weights\n")
    cases["not_a_checkpoint"] = (folder / "notes.pt", "not a PyTorch checkpoint")

    marker = folder / "EXECUTED"

    class Payload:  # unpickling this would create `marker`
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model": {"backbone.x": Payload()}}, folder / "pickled_object.pt")
    cases["pickled_object"] = (folder / "pickled_object.pt", "refused: holds pickled Python objects")

    sam2 = {"image_encoder.trunk.blocks.0.attn.qkv.weight": torch.zeros(3, 3),
            "sam_mask_decoder.iou_prediction_head.layers.0.weight": torch.zeros(2, 2)}
    torch.save({"model": sam2}, folder / "sam2.pt")
    cases["another_model"] = (folder / "sam2.pt", "not a SAM3 image model checkpoint")

    torch.save({"epoch": 3, "lr": 0.1}, folder / "no_weights.pt")
    cases["no_weights"] = (folder / "no_weights.pt", "holds no model weights")

    keys = sorted(tiny_state)
    torch.save({k: tiny_state[k] for k in keys if k not in keys[:3]}, folder / "missing_keys.pt")
    cases["missing_keys"] = (folder / "missing_keys.pt", "3 weights missing")

    torch.save({**tiny_state, "transformer.extra.weight": torch.zeros(2)}, folder / "unexpected_keys.pt")
    cases["unexpected_keys"] = (folder / "unexpected_keys.pt", "1 unexpected weight")

    torch.save({**tiny_state, keys[0]: torch.zeros(5)}, folder / "wrong_shape.pt")
    cases["wrong_shape"] = (folder / "wrong_shape.pt", "wrong shape")
    return cases


BAD_CASES = ["missing_file", "truncated", "not_a_checkpoint", "pickled_object", "another_model", "no_weights",
             "missing_keys", "unexpected_keys", "wrong_shape"]


@pytest.fixture(scope="module")
def bad_outcomes(tiny_state, tmp_path_factory) -> dict[str, tuple[Path, str, str | None]]:
    """case -> (file, expected phrase, the CheckpointError message or None if none was raised)."""
    folder = tmp_path_factory.mktemp("bad")
    outcomes = {}
    for case, (path, phrase) in bad_checkpoints(tiny_state, folder).items():
        try:
            load_sam3_model(path, None, "cpu", model_factory=build_tiny_sam3)
            message = None
        except CheckpointError as err:
            message = str(err)
        outcomes[case] = (path, phrase, message)
    assert not (folder / "EXECUTED").exists(), "the pickled payload was executed"
    return outcomes


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_checkpoint_is_one_line_error_naming_the_file(bad_outcomes, case):
    path, phrase, message = bad_outcomes[case]
    assert message is not None, f"{case}: no CheckpointError"
    assert message.startswith(f"checkpoint {path}: ")
    assert phrase in message
    assert "\n" not in message


def test_bad_checkpoint_messages_are_distinct(bad_outcomes):
    reasons = {message.split(": ", 1)[1].split("(")[0] for _, _, message in bad_outcomes.values()}
    assert len(reasons) == len(bad_outcomes) == len(BAD_CASES)


def test_bpe_found_in_open_clip_and_missing_one_reported(tmp_path):
    found = resolve_bpe_path(None)
    assert found.name == "bpe_simple_vocab_16e6.txt.gz"
    assert hashlib.md5(found.read_bytes()).hexdigest() == BPE_MD5
    with pytest.raises(CheckpointError, match=f"BPE vocabulary {tmp_path / 'x.gz'}: no such file"):
        resolve_bpe_path(tmp_path / "x.gz")


def test_device_parsing():
    assert parse_device("cpu") == torch.device("cpu")
    for bad in ("tpu", "cuda:x", "cpu:1", "gpu"):
        with pytest.raises(BackendError, match="device"):
            parse_device(bad)
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        assert parse_device(f"cuda:{n - 1}") == torch.device("cuda", n - 1)
        with pytest.raises(BackendError, match="only"):
            parse_device(f"cuda:{n}")
    else:
        for ask in ("cuda", "cuda:0", "cuda:1"):
            with pytest.raises(BackendError, match="CUDA is not available"):
                parse_device(ask)


def test_config_is_checked():
    with pytest.raises(ConfigError, match="grid_chunk"):
        Sam3Config(checkpoint=None, grid_chunk=0)
    with pytest.raises(ConfigError, match="prompts"):
        Sam3Config(checkpoint=None, prompts=("road", " "))
    with pytest.raises(ConfigError, match="autocast"):
        Sam3Config(checkpoint=None, autocast="fp8")
    with pytest.raises(ConfigError, match="--checkpoint"):
        Sam3Source.from_config(Sam3Config(checkpoint=None))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_source_device_must_match_the_model(model):
    with pytest.raises(BackendError, match="CUDA is not available"):
        Sam3Source(model, Sam3Config(checkpoint=None, device="cuda"))


# ----------------------------------------------------------------------------- running


def test_batch_shapes_dtypes_and_ranges(grid, taus, model, images):
    b, p, q, c = 2, len(PROMPTS), 200, 256
    side, mask_side = TINY_SIDE // 14, 4 * (TINY_SIDE // 14)
    assert grid.features.shape == (b, c, side, side) and grid.features.dtype == torch.float32
    assert not grid.features.is_inference() and not grid.queries.is_inference()  # downstream may update in place
    assert grid.queries.shape == (b, p, q, c) and grid.queries.dtype == torch.float32
    assert grid.scores.shape == (b, p, q) and grid.scores.dtype == torch.float32
    assert grid.query_masks.shape == (b, p, q, side, side) and grid.query_masks.dtype == torch.float16
    assert grid.union_masks.shape == (b, len(taus), p, mask_side, mask_side) and grid.union_masks.dtype == torch.bool
    assert grid.mask_probs.shape == (b, p, q, mask_side, mask_side) and grid.mask_probs.dtype == torch.float16
    for t in (grid.features, grid.queries, grid.scores, grid.query_masks, grid.mask_probs):
        assert torch.isfinite(t.float()).all()
    assert (grid.scores >= 0).all() and (grid.scores <= 1).all()
    # the features are the backbone's vision_features of the normalised images
    from engine.data.preprocess import normalize_for_model

    with torch.inference_mode():
        direct = model.backbone.forward_image(normalize_for_model(images))["vision_features"]
    assert torch.equal(grid.features, direct)


def test_kept_and_union_masks_follow_scores_and_taus(grid, taus):
    probs = grid.mask_probs.float()  # (B, P, Q, M, M)
    assert grid.union_masks[:, 0].any(), "tau = 0 keeps every query: some pixel must be foreground"
    assert not grid.union_masks[:, -1].any(), "tau > 1 keeps no query"
    median_kept = grid.scores >= taus[1]
    assert median_kept.any() and not median_kept.all(), "the median keeps about half"
    for t, tau in enumerate(taus):
        kept = grid.scores >= tau  # (B, P, Q)
        expected = ((probs >= 0.5) & kept[..., None, None]).any(dim=2)
        # mask_probs are float16: a probability within one step of 0.5 may round across it
        near_half = ((probs - 0.5).abs() < 1e-3).any(dim=2)
        agree = (grid.union_masks[:, t] == expected) | near_half
        assert agree.all(), f"tau={tau}: {(~agree).sum().item()} pixels disagree"
    # a lower threshold keeps more: union masks are nested
    for t in range(1, len(taus)):
        assert (grid.union_masks[:, t] <= grid.union_masks[:, t - 1]).all()
    # query masks are the 288 -> 72 (here 64 -> 16) average pooling of the probabilities
    side = grid.query_masks.shape[-1]
    torch.testing.assert_close(grid.query_masks.float(), pool_to_tokens(probs, grid=side), **FP16)


@pytest.mark.parametrize("chunk", [1, 3])
def test_chunk_size_does_not_change_results(model, images, taus, grid, chunk):
    chunked = make_source(model, grid_chunk=chunk).run_batch(images, ["a", "b"], taus, keep_mask_probs=True)
    assert torch.equal(chunked.features, grid.features)  # the backbone does not see the chunking
    for name in ("queries", "scores"):
        torch.testing.assert_close(getattr(chunked, name), getattr(grid, name), **FP32, msg=name)
    for name in ("query_masks", "mask_probs"):
        torch.testing.assert_close(getattr(chunked, name), getattr(grid, name), **FP16, msg=name)
    assert_union_masks_agree(chunked, grid)


def assert_union_masks_agree(a, b):
    differ = a.union_masks != b.union_masks
    if differ.any():  # only where a kept probability is within rounding of 0.5
        near_half = ((b.mask_probs.float() - 0.5).abs() < 1e-3).any(dim=2)  # (B, P, M, M)
        assert (~differ | near_half[:, None]).all()


def test_grid_equals_each_pair_alone(model, images, taus, grid):
    for j, prompt in enumerate(PROMPTS):
        single_prompt = make_source(model, prompts=(prompt,), grid_chunk=1)
        for i in range(images.shape[0]):
            alone = single_prompt.run_batch(images[i:i + 1], ["x"], taus, keep_mask_probs=True)
            torch.testing.assert_close(alone.features[0], grid.features[i], **FP32)
            torch.testing.assert_close(alone.queries[0, 0], grid.queries[i, j], **FP32)
            torch.testing.assert_close(alone.scores[0, 0], grid.scores[i, j], **FP32)
            torch.testing.assert_close(alone.query_masks[0, 0], grid.query_masks[i, j], **FP16)
            differ = alone.union_masks[0, :, 0] != grid.union_masks[i, :, j]
            near_half = ((grid.mask_probs[i, j].float() - 0.5).abs() < 1e-3).any(dim=0)
            assert (~differ | near_half).all(), f"image {i} prompt {prompt!r}"


def test_scores_are_logit_times_presence(model, images, grid):
    """score = sigmoid(pred_logits) * sigmoid(presence_logit_dec), recomputed for one pair."""
    from sam3.model.data_misc import FindStage

    src = make_source(model, prompts=PROMPTS)
    with torch.inference_mode():
        out = model.forward_grounding(
            backbone_out={**src.encode_images(images), **src.text},
            find_input=FindStage(img_ids=torch.tensor([1]), text_ids=torch.tensor([0]), input_boxes=None,
                                 input_boxes_mask=None, input_boxes_label=None, input_points=None,
                                 input_points_mask=None),
            find_target=None, geometric_prompt=model._get_dummy_prompt(1),
        )
    expected = out["pred_logits"][0, :, 0].sigmoid() * out["presence_logit_dec"][0].sigmoid()
    torch.testing.assert_close(grid.scores[1, 0], expected, **FP32)
    torch.testing.assert_close(grid.queries[1, 0], out["queries"][0], **FP32)


def test_prompts_encoded_once_per_run(model, images, monkeypatch):
    calls = []
    original = model.backbone.forward_text

    def counting(*args, **kwargs):
        calls.append(args[0] if args else kwargs.get("captions"))
        return original(*args, **kwargs)

    monkeypatch.setattr(model.backbone, "forward_text", counting)
    src = make_source(model, grid_chunk=4)
    for _ in range(2):
        batch = src.run_batch(images, ["a", "b"], (0.5,))
        assert batch.mask_probs is None
    assert calls == [list(PROMPTS)]


def test_describe_records_the_run(model, checkpoint):
    info = make_source(model, checkpoint=checkpoint).describe()
    assert info["source"] == "sam3" and info["random_weights"] is False
    assert info["checkpoint"]["path"] == str(checkpoint.resolve())
    assert info["checkpoint"]["bytes"] == checkpoint.stat().st_size
    assert info["prompts"] == list(PROMPTS) and info["device"] == "cpu" and info["autocast"] == "off"
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    json.dumps(info)  # goes into run.json as is


def test_encoder_bench_report(tmp_path):
    """The bench JSON contract (machine, device, batch_size, results), on the tiny model."""
    from bench.encoder import EncoderBenchConfig, run_encoder_bench

    lines = []
    cfg = EncoderBenchConfig(random_weights=True, device="cpu", images=2, batch_size=2, image_side=TINY_SIDE,
                             model_factory=build_tiny_sam3)
    report = run_encoder_bench(cfg, echo=lines.append)
    assert report["device"] == "cpu" and report["batch_size"] == 2 and report["images"] == 2
    assert {"platform", "cpu", "torch"} <= set(report["machine"])
    assert [r["name"] for r in report["results"]] == ["backbone", "grounding_5_prompts"]
    for row in report["results"]:
        assert row["ms_per_image"] > 0
        assert row["images_per_s"] == pytest.approx(1000.0 / row["ms_per_image"], rel=1e-2)
    json.dumps(report)
    assert any("grounding_5_prompts" in line for line in lines)
    with pytest.raises(ConfigError, match="exactly one"):
        run_encoder_bench(EncoderBenchConfig(random_weights=True, checkpoint=tmp_path / "sam3.pt"))


# ----------------------------------------------------------------------------- compat


COMPAT_STEPS = textwrap.dedent(
    """
    import json, sys, traceback
    import torch
    torch.set_num_threads(1)
    from engine.sources.sam3 import compat as sam3_compat
    from engine.sources.sam3.checkpoint import resolve_bpe_path
    report = {}

    def attempt(name, fn):
        try:
            fn()
            report[name] = "ok"
        except Exception as err:
            frames = [f.filename for f in traceback.extract_tb(err.__traceback__) if "/sam3/" in f.filename]
            report[name] = f"{type(err).__name__}: {err} @ {frames[-1] if frames else '?'}"

    attempt("import_torchvision_bare", lambda: __import__("torchvision"))
    sam3_compat.ensure_torchvision_importable()
    attempt("import_torchvision_shimmed", lambda: __import__("torchvision"))
    attempt("import_sam3_bare", lambda: __import__("sam3.model_builder"))
    sam3_compat.apply_cpu_compat(skip=("position_encoding", "decoder_coords", "pin_memory"))
    from engine.sources.sam3.tiny import build_tiny_sam3
    bpe = str(resolve_bpe_path(None))
    attempt("build_without_position_fix", lambda: build_tiny_sam3(bpe, image_size=112))
    sam3_compat.apply_cpu_compat(skip=("decoder_coords", "pin_memory"))
    attempt("build_without_decoder_fix", lambda: build_tiny_sam3(bpe, image_size=112))
    sam3_compat.apply_cpu_compat(skip=("pin_memory",))
    model = build_tiny_sam3(bpe, image_size=112)
    sam3_compat.init_empty_text_params(model)
    from sam3.model.data_misc import FindStage

    def ground():
        with torch.inference_mode():
            out = model.backbone.forward_image(torch.zeros(1, 3, 112, 112))
            out.update(model.backbone.forward_text(["road"], device="cpu"))
            find = FindStage(img_ids=torch.tensor([0]), text_ids=torch.tensor([0]), input_boxes=None,
                             input_boxes_mask=None, input_boxes_label=None, input_points=None,
                             input_points_mask=None)
            res = model.forward_grounding(backbone_out=out, find_input=find, find_target=None,
                                          geometric_prompt=model._get_dummy_prompt(1))
            assert torch.isfinite(res["pred_logits"]).all(), "non-finite scores"

    attempt("ground_without_pin_fix", ground)
    report["active_before_last"] = sam3_compat.applied_fixes()
    sam3_compat.apply_cpu_compat()
    attempt("ground_with_all_fixes", ground)
    report["active"] = sam3_compat.apply_cpu_compat()
    print(json.dumps(report))
    """
)


@pytest.mark.slow  # a subprocess that imports sam3 and builds the tiny model five times
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU fixes are inactive where CUDA is present")
def test_each_compat_fix_is_needed_and_works():
    """In a fresh process: each failure reproduces without its fix and goes away with it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", COMPAT_STEPS], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    from engine.sources.sam3.compat import torchvision_extension_loads

    if not torchvision_extension_loads():
        assert "torchvision::nms does not exist" in report["import_torchvision_bare"]
    assert report["import_torchvision_shimmed"] == "ok"
    assert "No module named 'triton'" in report["import_sam3_bare"]
    assert "position_encoding.py" in report["build_without_position_fix"]
    assert "decoder.py" in report["build_without_decoder_fix"]
    assert "pin_memory" not in report["active_before_last"]
    assert "accelerator" in report["ground_without_pin_fix"]
    assert report["ground_with_all_fixes"] == "ok"
    assert set(report["active"]) == {"torchvision_ops", "edt_stub", "position_encoding", "decoder_coords",
                                     "pin_memory"} - ({"torchvision_ops"} if torchvision_extension_loads() else set())


def test_tensor_caches_follow_the_model(model):
    """Caches in plain dicts (not buffers) are moved with the model by move_tensor_caches."""
    import copy

    from sam3.model.decoder import TransformerDecoder
    from sam3.model.position_encoding import PositionEmbeddingSine

    from engine.sources.sam3.compat import move_tensor_caches

    clone = copy.deepcopy(model)
    move_tensor_caches(clone, torch.device("meta"))
    caches = [t for m in clone.modules() if isinstance(m, PositionEmbeddingSine) for t in m.cache.values()]
    caches += [t for m in clone.modules() if isinstance(m, TransformerDecoder) for t in m.compilable_cord_cache]
    assert len(caches) >= 4 and all(t.device.type == "meta" for t in caches)


def test_random_text_params_are_initialised():
    from sam3.model.text_encoder_ve import TextTransformer

    model = build_random_sam3_model(None, "cpu", model_factory=build_tiny_sam3)
    text = [m for m in model.modules() if isinstance(m, TextTransformer)]
    assert len(text) == 1
    assert torch.isfinite(text[0].positional_embedding).all() and torch.isfinite(text[0].text_projection).all()
    assert 0.005 < text[0].positional_embedding.std().item() < 0.02  # std 0.01, as open_clip


# ----------------------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_full_model_bf16_agrees_with_fp32_on_cuda():
    """Full-size random weights on CUDA: a batch of 2 under bf16 autocast vs plain fp32.

    Tolerances: per-image cosine similarity of the features > 0.99, of the queries > 0.98;
    scores within 0.05 (absolute, they lie in [0, 1]).
    """
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (torch.cuda.is_available() is False)")
    model = build_random_sam3_model(None, "cuda", seed=0)
    assert all(p.device == torch.device("cuda", torch.cuda.current_device()) for p in model.parameters())
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 1008, 1008), dtype=torch.uint8, generator=gen)
    prompts = ("vegetation", "road")
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 for the reference
    try:
        runs = {}
        for mode in ("off", "bf16"):
            src = Sam3Source(model, Sam3Config(checkpoint=None, device="cuda", prompts=prompts, autocast=mode))
            runs[mode] = src.run_batch(images, ["a", "b"], (0.5,))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    ref, low = runs["off"], runs["bf16"]
    assert low.features.shape == (2, 256, 72, 72) and low.features.dtype == torch.float32
    assert low.union_masks.shape == (2, 1, 2, 288, 288)
    cos = torch.nn.functional.cosine_similarity
    assert cos(low.features.flatten(1), ref.features.flatten(1)).min() > 0.99
    assert cos(low.queries.flatten(2), ref.queries.flatten(2)).min() > 0.98
    assert (low.scores - ref.scores).abs().max() < 0.05
