"""`datr parity`: the CPU backends pass against scikit-learn; a breach is reported and exits 1."""

import json

import pytest
import torch
from typer.testing import CliRunner

import bench.parity as parity
from bench.parity import ParityConfig, run_parity
from cli import app
from engine.core.errors import ConfigError
from kernels.backends import resolve_backend
from kernels.kmeans import KMeansResult

SMALL = ParityConfig(images=1, problems=3, side=20, channels=16, d=4, k=3, n_init=2)


@pytest.fixture(autouse=True)
def _one_faiss_thread():
    try:
        import faiss
    except ImportError:
        return
    faiss.omp_set_num_threads(1)


def test_cpu_backends_pass_with_every_figure_inside_its_threshold():
    lines = []
    result = run_parity(device="cpu", echo=lines.append)
    assert result["ok"], "\n".join(lines)
    rows = {(r["backend"], r["dtype"]): r for r in result["rows"]}
    assert {("torch[eigh=torch]", "float32"), ("torch[eigh=torch]", "float64")} <= set(rows)
    for row in result["rows"]:
        if row["status"] == "skipped":
            assert row["reason"]
            continue
        assert row["status"] == "ok", row
        assert row["inertia_ratio_median"] <= parity.INERTIA_RATIO_MEDIAN_MAX
        assert row["shared_init_ari_min"] >= row["shared_init_ari_threshold"]
        assert row["explained_variance_error_max"] <= parity.EXPLAINED_VARIANCE_ERROR_MAX
        assert row["subspace_agreement_min"] >= parity.SUBSPACE_AGREEMENT_MIN
    # float64 torch is the reference algorithm in the reference precision: exact labels
    assert rows[("torch[eigh=torch]", "float64")]["shared_init_ari_min"] == 1.0
    faiss_row = rows.get(("faiss", "float32"))
    assert faiss_row is not None and (faiss_row["status"] == "ok" or "sam3-datr[faiss]" in faiss_row["reason"])
    assert rows[("cuml", "float32")]["status"] == "skipped"  # CUDA only
    json.dumps(result)  # the --json payload is plain JSON
    assert any("thresholds" in line for line in lines) and any(line.startswith("parity:") for line in lines)


class LabelScrambler:
    """A torch backend whose KMeans labels are wrong for a tenth of the tokens (a fake breach)."""

    name = "torch"
    detail = "scrambled for the test"

    def __init__(self):
        self.inner = resolve_backend("torch", "cpu")[0]

    def pca_fit(self, x, n_components, weights=None):
        return self.inner.pca_fit(x, n_components, weights)

    def kmeans(self, x, k, **kw):
        out = self.inner.kmeans(x, k, **kw)
        labels = out.labels.clone()
        labels[:, ::10] = (labels[:, ::10] + 1) % k
        return KMeansResult(labels=labels, centres=out.centres, inertia=out.inertia, n_iter=out.n_iter)


def test_a_breach_sets_ok_false_and_names_the_figure(monkeypatch):
    monkeypatch.setattr(parity, "resolve_backend", lambda name, device, eigh="auto": (LabelScrambler(), "test"))
    monkeypatch.setattr(parity, "candidates_for", lambda device: [parity.Candidate("torch", device, torch.float64, "torch")])
    result = run_parity(device="cpu", echo=lambda s: None, cfg=SMALL)
    assert not result["ok"]
    (row,) = result["rows"]
    assert row["status"] == "breach" and any("shared-init ARI" in b for b in row["breaches"])


def test_cuda_asked_for_without_cuda_is_a_user_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        run_parity(device="cuda", echo=lambda s: None, cfg=SMALL)


def test_cli_writes_json_and_exits_1_on_a_breach(monkeypatch, tmp_path):
    runner = CliRunner()
    monkeypatch.setattr(parity, "candidates_for", lambda device: [parity.Candidate("torch", device, torch.float64, "torch")])
    real = parity.run_parity
    monkeypatch.setattr(parity, "run_parity", lambda device=None, echo=print: real(device=device, echo=echo, cfg=SMALL))
    path = tmp_path / "parity.json"
    ok = runner.invoke(app, ["parity", "--device", "cpu", "--json", str(path)])
    assert ok.exit_code == 0, ok.output
    assert json.loads(path.read_text())["ok"] is True
    monkeypatch.setattr(parity, "resolve_backend", lambda name, device, eigh="auto": (LabelScrambler(), "test"))
    bad = runner.invoke(app, ["parity", "--device", "cpu"])
    assert bad.exit_code == 1 and "parity breach" in bad.output


@pytest.mark.gpu
def test_gpu_backends_pass():
    lines = []
    result = run_parity(device="cuda", echo=lines.append)
    assert result["ok"], "\n".join(lines)
    assert any(r["status"] == "ok" and r["backend"].startswith("torch") for r in result["rows"])
