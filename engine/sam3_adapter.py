"""SAM3 as a FeatureSource: a local checkpoint, batched image x prompt grounding.

Loading (`load_sam3_model`) never touches the network and treats the checkpoint as
untrusted input: `torch.load(weights_only=True)`, then a strict check of every key and
shape against the model the package builds -- done on a parameter-free skeleton of the
model, so a bad file is reported in about a second, before the 840M-parameter build.

Running (`Sam3Source.run_batch`): the prompts are encoded once (`forward_text`) when the
source is made; each batch runs `backbone.forward_image` once, then `forward_grounding`
over the B x P grid of (image, prompt) pairs in chunks of `grid_chunk` pairs, and each
chunk is reduced on the device right away (scores, pooled mask weights, union masks), so
the 288x288 mask logits of only one chunk are alive at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from engine import sam3_compat
from engine.devices import parse_device
from engine.errors import CheckpointError, ConfigError
from engine.preprocess import MODEL_SIDE, normalize_for_model
from engine.source import MASK_GRID, NUM_QUERIES, TOKEN_GRID, SourceBatch
from kernels.grid import pool_to_tokens

BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
DEFAULT_PROMPTS = ("vegetation", "building", "road", "vehicle", "other")
MASK_THRESHOLD = 0.5  # a mask pixel is foreground at probability >= 0.5 (DESIGN: union of kept masks)
AUTOCAST_CHOICES = ("auto", "bf16", "off")

ModelFactory = Callable[[str], torch.nn.Module]  # bpe path -> un-loaded model on the CPU


@dataclass(frozen=True)
class Sam3Config:
    checkpoint: Path | None
    bpe_path: Path | None = None
    device: str = "cpu"
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    grid_chunk: int = 8  # image x prompt pairs per forward_grounding call
    encoder_memory: bool = False  # also hand on the text-fused encoder memory
    autocast: str = "auto"  # "auto" (bf16 on CUDA, off on CPU), "bf16", "off"

    def __post_init__(self) -> None:
        if self.grid_chunk < 1:
            raise ConfigError(f"grid_chunk must be >= 1, got {self.grid_chunk}")
        if not self.prompts or any(not isinstance(p, str) or not p.strip() for p in self.prompts):
            raise ConfigError(f"prompts must be non-empty strings, got {self.prompts!r}")
        if self.autocast not in AUTOCAST_CHOICES:
            raise ConfigError(f"autocast must be one of {', '.join(AUTOCAST_CHOICES)}, got {self.autocast!r}")


# ----------------------------------------------------------------------------- devices


def assert_on_device(model: torch.nn.Module, device: torch.device) -> None:
    """Every parameter and buffer of `model` must be on `device` (index included)."""
    stray = [(n, t.device) for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device != device]
    assert not stray, f"{len(stray)} tensors not on {device}, e.g. {stray[:3]}"


def autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype a run uses: bf16 on CUDA under "auto", none on the CPU."""
    if setting == "off" or (setting == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


# ----------------------------------------------------------------------------- files


def resolve_bpe_path(bpe_path: str | Path | None) -> Path:
    """The BPE vocabulary: the path given, or the copy shipped in the open_clip wheel."""
    if bpe_path is not None:
        path = Path(bpe_path)
        if not path.is_file():
            raise CheckpointError(f"BPE vocabulary {path}: no such file; pass the path of {BPE_NAME}")
        return path
    candidates = []
    for package, rel in (("open_clip", BPE_NAME), ("sam3", os.path.join("..", "assets", BPE_NAME))):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            candidates.append(Path(spec.submodule_search_locations[0]) / rel)
    for path in candidates:
        if path.is_file():
            return path.resolve()
    raise CheckpointError(
        f"BPE vocabulary {BPE_NAME} not found (looked in the open_clip and sam3 packages): "
        "pip install open_clip_torch, which ships it, or pass --bpe PATH"
    )


@dataclass
class CheckpointContents:
    """A checkpoint read and normalised to the image model's state_dict keys."""

    path: Path
    state: dict[str, torch.Tensor]
    layout: str  # "official" ({"model": {"detector.*", "tracker.*"}}) or "plain" (a state_dict)
    ignored_keys: dict[str, int]  # what of the file the image model does not use, by reason


def _fail(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path}: {what}")


def _examples(keys, n: int = 3) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:n])
    return shown + (", ..." if len(keys) > n else "")


def _count(items, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def read_checkpoint(path: str | Path) -> CheckpointContents:
    """Read a checkpoint without unpickling arbitrary objects; map every failure to one line."""
    path = Path(path)
    if not path.exists():
        raise _fail(path, "no such file; pass the path of SAM3's sam3.pt (gated download: huggingface.co/facebook/sam3)")
    if path.is_dir():
        raise _fail(path, "is a directory; pass the sam3.pt file itself")
    size = path.stat().st_size
    if size == 0:
        raise _fail(path, "empty file (0 bytes); download it again")
    with path.open("rb") as f:
        head = f.read(4)
    is_zip = head == b"PK\x03\x04"
    is_pickle = head[:1] == b"\x80"  # pickle protocol >= 2: torch's legacy format or a raw pickle
    if not (is_zip or is_pickle):
        raise _fail(path, f"not a PyTorch checkpoint (starts with {head!r}, neither zip nor pickle); pass SAM3's sam3.pt")
    if is_zip and not zipfile.is_zipfile(path):
        raise _fail(path, f"truncated or corrupt ({size} bytes, the zip archive has no central directory); download it again")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        text = str(err)
        refused = re.search(r"Unsupported (global: GLOBAL \S+|operand \S+)", text)
        if refused:
            raise _fail(
                path,
                f"refused: holds pickled Python objects, not only tensors ({refused.group(0)}); nothing was "
                "executed. Use a weights-only checkpoint such as SAM3's sam3.pt",
            ) from None
        first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
        raise _fail(path, f"truncated or corrupt ({type(err).__name__}: {first[:120]}); download it again") from None
    return normalise_checkpoint(path, obj)


def normalise_checkpoint(path: Path, obj) -> CheckpointContents:
    """Accept {"model": state_dict} (the official layout) or a plain state_dict."""
    if not isinstance(obj, dict):
        raise _fail(path, f"holds a {type(obj).__name__}, not a state_dict; expected a dict of tensors or {{'model': ...}}")
    layout = "plain"
    if "model" in obj and isinstance(obj["model"], dict):
        obj, layout = obj["model"], "official"
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not obj or len(not_tensors) == len(obj):
        raise _fail(path, f"holds no model weights (a dict with keys {_examples(map(str, obj))}); expected a state_dict")
    if not_tensors:
        raise _fail(path, f"{len(not_tensors)} entries are not tensors (e.g. {_examples(map(str, not_tensors))})")
    ignored = {}
    if any("detector" in k for k in obj):
        # the same key mapping as sam3.model_builder._load_checkpoint: keep "detector" keys,
        # prefix stripped; the "tracker" keys belong to the video model
        state = {k.replace("detector.", ""): v for k, v in obj.items() if "detector" in k}
        rest = [k for k in obj if "detector" not in k]
        ignored["tracker"] = sum(1 for k in rest if k.startswith("tracker."))
        state.update({k: obj[k] for k in rest if not k.startswith("tracker.")})  # left in: reported as unexpected
        layout = "official"
    else:
        state = dict(obj)
    return CheckpointContents(path=path, state=state, layout=layout, ignored_keys=ignored)


# The official sam3.pt is the video model's state_dict (it loads into
# build_sam3_video_model strictly). Its detector carries a second, SAM2-style neck for the
# tracker that the image model built without instance interactivity does not have; sam3's
# own image loader drops those weights silently (strict=False). We drop exactly these.
TRACKER_NECK_PREFIX = "backbone.vision_backbone.sam2_convs."


def check_state_dict(contents: CheckpointContents, expected: dict[str, torch.Size]) -> None:
    """load_state_dict(strict=True), as one-line errors: foreign model, missing, unexpected, shapes.

    Removes from `contents.state` the tracker-neck weights the model lacks (counted in
    `contents.ignored_keys`); everything else must match exactly.
    """
    path, state = contents.path, contents.state
    neck = [k for k in state if k.startswith(TRACKER_NECK_PREFIX) and k not in expected]
    for k in neck:
        del state[k]
    if neck:
        contents.ignored_keys["tracker_neck"] = len(neck)
    have, want = set(state), set(expected)
    common = have & want
    if 2 * len(common) < min(len(have), len(want)):  # most names foreign: another model entirely
        hint = " (looks like a SAM 2 checkpoint)" if any("sam_mask_decoder" in k or "memory_attention" in k for k in have) else ""
        raise _fail(
            path,
            f"not a SAM3 image model checkpoint{hint}: only {len(common)} of its {len(want)} weights found; "
            f"the file has e.g. {_examples(have - want)}",
        )
    missing = want - have
    if missing:
        raise _fail(path, f"{_count(missing, 'weight')} missing (e.g. {_examples(missing)}); the file is incomplete or from another SAM3 version")
    unexpected = have - want
    if unexpected:
        raise _fail(path, f"{_count(unexpected, 'unexpected weight')} (e.g. {_examples(unexpected)}); not the SAM3 image model this package builds")
    wrong = sorted(k for k in common if tuple(state[k].shape) != tuple(expected[k]))
    if wrong:
        k = wrong[0]
        raise _fail(
            path,
            f"{_count(wrong, 'weight')} with the wrong shape (e.g. {k}: file {tuple(state[k].shape)} vs model "
            f"{tuple(expected[k])}); a checkpoint of another model size or variant",
        )


# ----------------------------------------------------------------------------- building


def build_official_model(bpe_path: str) -> torch.nn.Module:
    """The package's own image-model builder, on the CPU, no weights, no network."""
    sam3_compat.apply_cpu_compat()
    build_sam3_image_model = sam3_compat.import_model_builder().build_sam3_image_model
    return build_sam3_image_model(
        bpe_path=str(bpe_path), device="cpu", eval_mode=True, checkpoint_path=None, load_from_HF=False,
        enable_segmentation=True, enable_inst_interactivity=False, compile=False,
    )


@contextlib.contextmanager
def parameter_free():
    """Within: every parameter and buffer a module registers is swapped for a meta tensor.

    Gives the model's exact keys and shapes in about a second without allocating or
    initialising its weights (a plain `torch.device("meta")` build fails: the ViT calls
    `.item()` while building).
    """
    from torch.nn.modules import module as nn_module

    def to_meta_param(module, name, param):
        if param is not None and param.device.type != "meta":
            return torch.nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        return None

    def to_meta_buffer(module, name, buffer):
        if buffer is not None and buffer.device.type != "meta":
            return buffer.to("meta")
        return None

    handles = [
        nn_module.register_module_parameter_registration_hook(to_meta_param),
        nn_module.register_module_buffer_registration_hook(to_meta_buffer),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def expected_shapes(bpe_path: str | Path, model_factory: ModelFactory | None = None) -> dict[str, torch.Size]:
    """The state_dict keys and shapes of the model the factory builds, from a parameter-free build."""
    factory = model_factory or build_official_model
    with parameter_free():
        skeleton = factory(str(bpe_path))
    return {k: v.shape for k, v in skeleton.state_dict().items()}


def _place(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move to `device`, caches included, and check that everything landed there."""
    model = model.to(device).eval()
    sam3_compat.move_tensor_caches(model, device)
    assert_on_device(model, device)
    return model


def _load(
    checkpoint: str | Path, bpe_path, device: str, model_factory: ModelFactory | None
) -> tuple[torch.nn.Module, CheckpointContents]:
    dev = parse_device(device)
    bpe = resolve_bpe_path(bpe_path)
    contents = read_checkpoint(checkpoint)
    sam3_compat.apply_cpu_compat()
    check_state_dict(contents, expected_shapes(bpe, model_factory))
    model = (model_factory or build_official_model)(str(bpe))
    model.load_state_dict(contents.state, strict=True)  # cannot fail after check_state_dict
    return _place(model, dev), contents


def load_sam3_model(
    checkpoint: str | Path,
    bpe_path: str | Path | None = None,
    device: str = "cpu",
    *,
    model_factory: ModelFactory | None = None,
) -> torch.nn.Module:
    """Build the SAM3 image model and load a local checkpoint into it, strictly.

    Every file problem (missing, truncated, not a checkpoint, pickled objects, another
    model, missing / unexpected keys, wrong shapes) raises a CheckpointError naming the
    file before the model is built. Accepts the official sam3.pt ({"model": ...} with
    "detector."/"tracker." keys; the video tracker's weights are left out) and a plain
    state_dict of the image model. `model_factory(bpe_path)` replaces the package's
    builder (tests use it for a tiny model); it must return an un-loaded CPU model.
    """
    model, _ = _load(checkpoint, bpe_path, device, model_factory)
    return model


def build_random_sam3_model(
    bpe_path: str | Path | None = None,
    device: str = "cpu",
    *,
    seed: int = 0,
    model_factory: ModelFactory | None = None,
) -> torch.nn.Module:
    """The model with random weights (benchmarks, tests): seeded, text params initialised."""
    dev = parse_device(device)
    bpe = resolve_bpe_path(bpe_path)
    sam3_compat.apply_cpu_compat()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = (model_factory or build_official_model)(str(bpe))
    sam3_compat.init_empty_text_params(model, seed=seed)
    return _place(model, dev)


def checkpoint_fingerprint(path: str | Path) -> dict:
    """Cheap identity of a (multi-GB) checkpoint: sha256 of its first MiB, size, mtime."""
    path = Path(path)
    with path.open("rb") as f:
        digest = hashlib.sha256(f.read(1 << 20)).hexdigest()
    stat = path.stat()
    return {
        "path": str(path.resolve()),
        "sha256_first_mib": digest,
        "bytes": stat.st_size,
        "mtime": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(stat.st_mtime)),
    }


def verify_checkpoint(
    path: str | Path,
    bpe_path: str | Path | None = None,
    device: str = "cpu",
    *,
    model_factory: ModelFactory | None = None,
) -> dict:
    """Load a checkpoint the way a run would and report what was loaded (for `datr env`)."""
    start = time.perf_counter()
    model, contents = _load(path, bpe_path, device, model_factory)
    seconds = time.perf_counter() - start
    return {
        **checkpoint_fingerprint(path),
        "layout": contents.layout,
        "keys_loaded": len(contents.state),
        "keys_ignored": contents.ignored_keys,
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": str(next(model.parameters()).device),
        "bpe_path": str(resolve_bpe_path(bpe_path)),
        "load_seconds": round(seconds, 2),
    }


# ----------------------------------------------------------------------------- the source


class Sam3Source:
    """SAM3 image model behind the FeatureSource contract (engine.source)."""

    name = "sam3"

    def __init__(self, model: torch.nn.Module, config: Sam3Config):
        self.model = model.eval()
        self.config = config
        self.prompts = tuple(config.prompts)
        self.device = next(model.parameters()).device
        assert_on_device(model, self.device)
        if parse_device(config.device) != self.device:
            raise ConfigError(f"the model is on {self.device} but the config asks for device {config.device!r}")
        self.autocast = autocast_dtype(config.autocast, self.device)
        self.random_weights = config.checkpoint is None
        # the prompts do not depend on the image: encode them once for the whole run
        with self._context():
            text = model.backbone.forward_text(list(self.prompts), device=self.device)
        self.text = {k: text[k] for k in ("language_features", "language_mask", "language_embeds")}
        assert self.text["language_features"].shape[1] == len(self.prompts), (
            f"language_features: got {tuple(self.text['language_features'].shape)} for {len(self.prompts)} prompts"
        )

    @classmethod
    def from_config(cls, config: Sam3Config, *, random_weights: bool = False) -> Sam3Source:
        """Load the checkpoint named in `config` (or, asked explicitly, random weights)."""
        if config.checkpoint is None:
            if not random_weights:
                raise ConfigError("the sam3 model needs --checkpoint PATH (sam3.pt)")
            return cls(build_random_sam3_model(config.bpe_path, config.device), config)
        return cls(load_sam3_model(config.checkpoint, config.bpe_path, config.device), config)

    def _context(self):
        # no_grad rather than inference_mode: what we hand on must allow in-place updates
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        if self.autocast is not None:
            stack.enter_context(torch.autocast(device_type=self.device.type, dtype=self.autocast))
        return stack

    # -- the two stages, public so the benchmark can time them apart

    def encode_images(self, images: torch.Tensor) -> dict:
        """(B, 3, S, S) uint8 -> the backbone's output dict (vision features, FPN, pos. enc.)."""
        assert images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] == 3, (
            f"images must be (B, 3, S, S) uint8, got {images.dtype} {tuple(images.shape)}"
        )
        x = normalize_for_model(images.to(self.device, non_blocking=True))
        with self._context():
            return self.model.backbone.forward_image(x)

    def ground(
        self,
        backbone_out: dict,
        taus: tuple[float, ...],
        keep_mask_probs: bool = False,
    ) -> dict[str, torch.Tensor]:
        """forward_grounding over the B x P grid in chunks; each chunk reduced on the device.

        Returns tensors indexed by pair k = b * P + p: queries (K, Q, C) float32, scores
        (K, Q) float32, query_masks (K, Q, h, w) float16, union_masks (K, T, M, M) bool,
        and mask_probs (K, Q, M, M) float16 / encoder_memory (K, h*w, C) float32 on request.
        """
        from sam3.model.data_misc import FindStage

        b = backbone_out["vision_features"].shape[0]
        p = len(self.prompts)
        side = backbone_out["vision_features"].shape[-1]
        pairs = b * p
        img_ids = torch.arange(b, device=self.device).repeat_interleave(p)  # image-major pair order
        text_ids = torch.arange(p, device=self.device).repeat(b)
        out: dict[str, torch.Tensor] = {}
        chunk = self.config.grid_chunk
        for start in range(0, pairs, chunk):
            stop = min(start + chunk, pairs)
            find = FindStage(
                img_ids=img_ids[start:stop], text_ids=text_ids[start:stop], input_boxes=None,
                input_boxes_mask=None, input_boxes_label=None, input_points=None, input_points_mask=None,
            )
            with self._context():
                result = self.model.forward_grounding(
                    backbone_out={**backbone_out, **self.text}, find_input=find, find_target=None,
                    geometric_prompt=self.model._get_dummy_prompt(num_prompts=stop - start),
                )
            with torch.no_grad():  # outside autocast: the reduction runs in float32
                reduced = self._reduce(result, taus, keep_mask_probs, side)
            del result
            for key, value in reduced.items():
                if key not in out:
                    out[key] = torch.empty((pairs, *value.shape[1:]), dtype=value.dtype, device=value.device)
                out[key][start:stop] = value
        return out

    def _reduce(self, result: dict, taus: tuple[float, ...], keep_mask_probs: bool, side: int) -> dict:
        n = result["queries"].shape[0]
        queries = result["queries"].float()  # (n, Q, C)
        presence = result["presence_logit_dec"].float().sigmoid()  # (n, 1)
        scores = result["pred_logits"].float()[..., 0].sigmoid() * presence  # (n, Q)
        probs = result["pred_masks"].float().sigmoid()  # (n, Q, M, M)
        assert probs.shape[:2] == scores.shape, f"pred_masks: got {tuple(probs.shape)} for scores {tuple(scores.shape)}"
        foreground = probs >= MASK_THRESHOLD
        union = torch.stack(
            [(foreground & (scores >= tau)[:, :, None, None]).any(dim=1) for tau in taus], dim=1
        ) if taus else torch.zeros((n, 0, *probs.shape[-2:]), dtype=torch.bool, device=probs.device)
        reduced = {
            "queries": queries,
            "scores": scores,
            "query_masks": pool_to_tokens(probs, grid=side).half(),
            "union_masks": union,
        }
        if keep_mask_probs:
            reduced["mask_probs"] = probs.half()
        if self.config.encoder_memory:
            reduced["encoder_memory"] = result["encoder_hidden_states"].float().transpose(0, 1)  # (n, h*w, C)
        return reduced

    def run_batch(
        self,
        images: torch.Tensor,
        image_ids: list[str],
        taus: tuple[float, ...],
        gt_mask: torch.Tensor | None = None,
        gt_tokens: torch.Tensor | None = None,
        keep_mask_probs: bool = False,
    ) -> SourceBatch:
        """(B, 3, S, S) uint8 images -> SourceBatch. The ground truth is not used.

        Besides the contract's fields, `extra` holds "kept" (B, T, P, Q) bool = scores >= taus[t]
        and the grid sides ("token_grid", "mask_grid": 72 and 288 for the full model).
        `encoder_memory`, when asked for, is per prompt: (B, P, h*w, C) float32 -- the
        encoder fuses the text into the image tokens, so each prompt has its own memory.
        """
        b = images.shape[0]
        assert len(image_ids) == b, f"{len(image_ids)} image ids for {b} images"
        taus = tuple(float(t) for t in taus)
        backbone_out = self.encode_images(images)
        features = backbone_out["vision_features"].float()  # (B, C, h, w)
        grid = self.ground(backbone_out, taus, keep_mask_probs)
        del backbone_out
        p, q = len(self.prompts), grid["queries"].shape[1]
        mask_side = grid["union_masks"].shape[-1]
        if images.shape[-1] == MODEL_SIDE:  # the full model: the contract's fixed sizes
            assert features.shape[-2:] == (TOKEN_GRID, TOKEN_GRID), f"features: got {tuple(features.shape)}"
            assert mask_side == MASK_GRID and q == NUM_QUERIES, f"masks: got {mask_side}, queries: got {q}"

        def per_image(t: torch.Tensor) -> torch.Tensor:  # (B*P, ...) -> (B, P, ...)
            return t.view(b, p, *t.shape[1:])

        scores = per_image(grid["scores"])
        tau_column = torch.tensor(taus, dtype=scores.dtype, device=scores.device).view(1, -1, 1, 1)

        return SourceBatch(
            image_ids=list(image_ids),
            features=features,
            queries=per_image(grid["queries"]),
            scores=scores,
            query_masks=per_image(grid["query_masks"]),
            union_masks=per_image(grid["union_masks"]).transpose(1, 2).contiguous(),  # (B, T, P, M, M)
            taus=taus,
            mask_probs=per_image(grid["mask_probs"]) if keep_mask_probs else None,
            encoder_memory=per_image(grid["encoder_memory"]) if self.config.encoder_memory else None,
            extra={
                "kept": scores[:, None] >= tau_column,  # (B, T, P, Q)
                "token_grid": features.shape[-1],
                "mask_grid": mask_side,
            },
        )

    def describe(self) -> dict:
        """What run.json records about this source."""
        cfg = self.config
        return {
            "source": self.name,
            "checkpoint": checkpoint_fingerprint(cfg.checkpoint) if cfg.checkpoint is not None else None,
            "random_weights": self.random_weights,
            "bpe_path": str(resolve_bpe_path(cfg.bpe_path)),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "device": str(self.device),
            "param_dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
            "autocast": str(self.autocast).replace("torch.", "") if self.autocast is not None else "off",
            "outputs_dtype": "float32 (query_masks, mask_probs: float16)",
            "prompts": list(self.prompts),
            "grid_chunk": cfg.grid_chunk,
            "encoder_memory": cfg.encoder_memory,
            "compat_fixes": sam3_compat.applied_fixes(),
            "sam3_version": _package_version("sam3"),
        }


def _package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None
