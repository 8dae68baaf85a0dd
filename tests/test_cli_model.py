"""`datr env` and `datr bench encoder` through the CLI: bad checkpoints exit 2 with one line.

Every bad-checkpoint case is checked against the real SAM3 image model: the loader checks
keys and shapes on a parameter-free build (about a second), so no 840M-parameter model is
built here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli import app
from engine.sources.sam3.build import expected_shapes
from engine.sources.sam3.checkpoint import resolve_bpe_path
from engine.sources.sam3.tiny import build_tiny_sam3

runner = CliRunner()


@pytest.fixture(scope="module")
def full_shapes() -> dict[str, torch.Size]:
    return expected_shapes(resolve_bpe_path(None))


def stand_in_weights(shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """The full model's key names with one-element tensors (key checks come before shapes)."""
    return {k: torch.zeros(1) for k in shapes}


@pytest.fixture(scope="module")
def bad_files(full_shapes, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    folder = tmp_path_factory.mktemp("cli_bad")
    cases: dict[str, tuple[Path, str]] = {"missing_file": (folder / "absent" / "sam3.pt", "no such file")}

    torch.save({"model": {"detector.a": torch.zeros(1000)}}, folder / "whole.pt")
    data = (folder / "whole.pt").read_bytes()
    (folder / "truncated.pt").write_bytes(data[: len(data) // 2])
    cases["truncated"] = (folder / "truncated.pt", "truncated or corrupt")

    (folder / "readme.pt").write_text("# not weights\n")
    cases["not_a_checkpoint"] = (folder / "readme.pt", "not a PyTorch checkpoint")

    marker = folder / "EXECUTED"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model": {"x": Payload()}}, folder / "pickled.pt")
    cases["pickled_object"] = (folder / "pickled.pt", "refused: holds pickled Python objects")

    sam2 = {"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(2),
            "memory_attention.layers.0.self_attn.q_proj.weight": torch.zeros(2)}
    torch.save({"model": sam2}, folder / "sam2.pt")
    cases["another_model"] = (folder / "sam2.pt", "not a SAM3 image model checkpoint (looks like a SAM 2 checkpoint)")

    weights = {f"detector.{k}": v for k, v in stand_in_weights(full_shapes).items()}
    some = sorted(weights)[:4]
    torch.save({"model": {k: v for k, v in weights.items() if k not in some}}, folder / "missing_keys.pt")
    cases["missing_keys"] = (folder / "missing_keys.pt", "4 weights missing")

    torch.save({"model": {**weights, "detector.extra_head.weight": torch.zeros(1)}}, folder / "unexpected.pt")
    cases["unexpected_keys"] = (folder / "unexpected.pt", "1 unexpected weight (e.g. extra_head.weight)")

    torch.save({"model": weights}, folder / "wrong_shapes.pt")
    wrong = sum(1 for shape in full_shapes.values() if tuple(shape) != (1,))
    cases["wrong_shape"] = (folder / "wrong_shapes.pt", f"{wrong} weights with the wrong shape")

    # a real SAM3-architecture checkpoint, but the tiny one: most of the full model's layers absent
    from engine.sources.sam3.build import build_random_sam3_model

    tiny = build_random_sam3_model(None, "cpu", model_factory=build_tiny_sam3)
    torch.save({"model": {f"detector.{k}": v for k, v in tiny.state_dict().items()}}, folder / "tiny.pt")
    cases["smaller_model"] = (folder / "tiny.pt", "weights missing")
    yield cases
    assert not marker.exists(), "the pickled payload was executed"


CASES = ["missing_file", "truncated", "not_a_checkpoint", "pickled_object", "another_model", "missing_keys",
         "unexpected_keys", "wrong_shape", "smaller_model"]


@pytest.mark.parametrize("case", CASES)
def test_env_with_bad_checkpoint_exits_2_with_one_line(bad_files, case):
    path, phrase = bad_files[case]
    result = runner.invoke(app, ["env", "--checkpoint", str(path)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"datr: error: checkpoint {path}: ")
    assert phrase in lines[0]
    assert "Traceback" not in result.output


def test_bench_encoder_with_bad_checkpoint_exits_2(bad_files):
    path, phrase = bad_files["truncated"]
    result = runner.invoke(app, ["bench", "encoder", "--checkpoint", str(path)])
    assert result.exit_code == 2
    assert result.stderr.strip() == result.stderr.strip().splitlines()[0]
    assert str(path) in result.stderr and phrase in result.stderr


def test_bench_encoder_needs_weights_or_random():
    result = runner.invoke(app, ["bench", "encoder"])
    assert result.exit_code == 2
    assert "--random-weights or --checkpoint" in result.stderr


def test_missing_bpe_is_reported(tmp_path, bad_files):
    path, _ = bad_files["wrong_shape"]
    result = runner.invoke(app, ["env", "--checkpoint", str(path), "--bpe", str(tmp_path / "vocab.txt.gz")])
    assert result.exit_code == 2
    assert f"BPE vocabulary {tmp_path / 'vocab.txt.gz'}: no such file" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_device_without_cuda_exits_2(bad_files):
    path, _ = bad_files["wrong_shape"]
    result = runner.invoke(app, ["env", "--checkpoint", str(path), "--device", "cuda:1"])
    assert result.exit_code == 2
    assert "device 'cuda:1'" in result.stderr and "CUDA is not available" in result.stderr


def test_env_lists_torch_and_packages():
    result = runner.invoke(app, ["env"])
    assert result.exit_code == 0, result.output
    fields = dict(line.split(": ", 1) for line in result.stdout.strip().splitlines())
    assert torch.__version__ in fields["torch"]
    for package in ("sam3", "faiss", "cuml", "cupy", "dask", "matplotlib"):
        assert f'"{package}"' in fields["packages"]
    assert "bpe_simple_vocab_16e6.txt.gz" in fields["bpe_vocabulary"]
