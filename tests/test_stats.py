"""playbook.stats: percentiles and clip advice against numpy float64 references; plots."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from playbook import stats
from playbook.stats import AggressiveClippingWarning

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _lognormal(n, seed=0):
    return np.random.default_rng(seed).lognormal(mean=0.0, sigma=1.0, size=n)


def _with_nonfinite(seed=1):
    x = _lognormal(500, seed)
    rng = np.random.default_rng(seed + 100)
    idx = rng.choice(x.size, size=37, replace=False)
    x[idx[:13]] = np.nan
    x[idx[13:25]] = np.inf
    x[idx[25:]] = -np.inf
    return x


# Input containers, as data: list, numpy float32/float64, torch float32/bfloat16 (if installed).
def _containers():
    out = [
        pytest.param(lambda a: [float(v) for v in a], id="list"),
        pytest.param(lambda a: np.asarray(a, dtype=np.float64), id="np64"),
        pytest.param(lambda a: np.asarray(a, dtype=np.float32), id="np32"),
    ]
    try:
        import torch

        out.append(pytest.param(lambda a: torch.tensor(a, dtype=torch.float32), id="torch32"))
        out.append(pytest.param(lambda a: torch.tensor(a, dtype=torch.float64), id="torch64"))
    except ImportError:  # torch is optional for playbook.stats
        pass
    return out


def _held(data):
    """The values a container holds, as float64 (float32 rounding included)."""
    return np.asarray([float(v) for v in data], dtype=np.float64)


@pytest.mark.parametrize("make", _containers())
@pytest.mark.parametrize("q", [0.0, 0.01, 0.25, 0.5, 0.9, 0.99, 1.0])
def test_percentile_matches_numpy(make, q):
    x = _lognormal(1001, seed=3)
    data = make(x)
    x64 = _held(data)
    got = stats.percentile(data, q)
    assert isinstance(got, float)
    assert got == pytest.approx(float(np.quantile(x64, q)), rel=1e-12, abs=0)  # numpy default "linear"
    assert got == pytest.approx(float(np.percentile(x64, 100 * q)), rel=1e-12, abs=0)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 11, 1000])
def test_percentile_linear_interpolation(n):
    x = _lognormal(n, seed=n)
    for q in np.linspace(0, 1, 21):
        assert stats.percentile(x, float(q)) == pytest.approx(float(np.quantile(x, q)), rel=1e-12)


def test_percentile_ignores_nonfinite():
    x = _with_nonfinite()
    fin = x[np.isfinite(x)]
    assert fin.size == 500 - 37
    for q in (0.0, 0.5, 0.9, 1.0):
        assert stats.percentile(x, q) == pytest.approx(float(np.quantile(fin, q)), rel=1e-12)
        assert stats.percentile(x, q) == pytest.approx(float(np.nanquantile(np.where(np.isinf(x), np.nan, x), q)))


def test_percentile_torch_bf16_and_noncpu_layout():
    torch = pytest.importorskip("torch")
    x = torch.tensor(_lognormal(257, seed=5), dtype=torch.bfloat16)
    ref = np.quantile(x.double().numpy(), 0.9)
    assert stats.percentile(x, 0.9) == pytest.approx(float(ref), rel=1e-12)
    # a strided view (e.g. one column of a per-tensor history) works too
    m = torch.tensor(_lognormal(300, seed=6).reshape(100, 3))
    assert stats.percentile(m[:, 1], 0.5) == pytest.approx(float(np.median(m[:, 1].numpy())))


@pytest.mark.parametrize("q", [-0.1, 1.0000001, 90, 50.0, float("nan"), float("inf")])
def test_percentile_bad_q(q):
    with pytest.raises(ValueError, match=r"q must be a fraction in \[0, 1\].*q="):
        stats.percentile([1.0, 2.0], q)


def test_percentile_q_as_percent_hints_fraction():
    with pytest.raises(ValueError, match=r"got q=90 \(did you mean q=0.9\?\)"):
        stats.percentile([1.0, 2.0], 90)


@pytest.mark.parametrize("q", ["0.9", None, True, [0.5]])
def test_percentile_q_not_a_number(q):
    with pytest.raises(ValueError, match="q must be a real number"):
        stats.percentile([1.0, 2.0], q)


@pytest.mark.parametrize("norms", [[], [float("nan")], [float("inf"), float("-inf"), float("nan")]])
def test_percentile_no_finite_values(norms):
    with pytest.raises(ValueError, match="no finite gradient norms"):
        stats.percentile(norms, 0.5)


@pytest.mark.parametrize("bad", [np.ones((3, 3)), 3.0, [[1.0], [2.0]], ["a", "b"]])
def test_bad_norms_shape_or_type(bad):
    with pytest.raises(ValueError, match="norms must be"):
        stats.percentile(bad, 0.5)


def test_suggest_max_grad_norm_is_p90():
    x = _with_nonfinite(seed=7)
    fin = x[np.isfinite(x)]
    assert stats.suggest_max_grad_norm(x) == pytest.approx(float(np.quantile(fin, 0.9)), rel=1e-12)
    assert stats.suggest_max_grad_norm(x, q=0.5) == pytest.approx(float(np.median(fin)), rel=1e-12)
    # By construction about 10% of (finite) steps exceed the suggested threshold.
    frac = stats.clip_fraction(x, stats.suggest_max_grad_norm(x))
    assert 0.09 <= frac <= 0.11


def test_clip_fraction_matches_numpy():
    x = _with_nonfinite(seed=8)
    fin = x[np.isfinite(x)]
    for m in (0.1, 0.5, 1.0, 2.0, 10.0, float(np.median(fin))):
        assert stats.clip_fraction(x, m) == pytest.approx(float(np.mean(fin > m)), rel=1e-15)


def test_clip_fraction_strictly_greater():
    # norm == max_norm is not clipped (the kernels clip when norm > max_norm)
    assert stats.clip_fraction([1.0, 1.0, 2.0, 0.5], 1.0) == 0.25
    assert stats.clip_fraction([1.0, float("nan"), float("inf")], 0.5) == 1.0  # skipped steps left out


@pytest.mark.parametrize("m", [0.0, -1.0, float("nan"), None, "1"])
def test_clip_fraction_bad_max_norm(m):
    with pytest.raises(ValueError, match="max_norm must be a positive number"):
        stats.clip_fraction([1.0, 2.0], m)


def test_clip_fraction_no_finite():
    with pytest.raises(ValueError, match="no finite gradient norms"):
        stats.clip_fraction([float("nan")], 1.0)


# --- check_clipping: the warning fires exactly when MORE than 50% of steps are clipped -------------


@pytest.mark.parametrize(
    "n_clipped, n_total, aggressive",
    [(0, 10, False), (4, 10, False), (5, 10, False), (6, 10, True), (10, 10, True), (50, 100, False), (51, 100, True)],
)
def test_check_clipping_threshold_on_norms(n_clipped, n_total, aggressive):
    norms = [2.0] * n_clipped + [0.5] * (n_total - n_clipped) + [float("nan")] * 7  # NaNs not counted
    if aggressive:
        with pytest.warns(AggressiveClippingWarning, match=r"extremely aggressive.*>50% of the updates"):
            res = stats.check_clipping(norms, max_norm=1.0)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # any warning fails the test
            res = stats.check_clipping(norms, max_norm=1.0)
    assert res.aggressive is aggressive
    assert res.fraction == pytest.approx(n_clipped / n_total)
    assert res.suggested_max_norm == pytest.approx(stats.percentile(norms, 0.9))
    assert ("aggressive" in res.message) and (f"{n_clipped / n_total:.1%}" in res.message)


@pytest.mark.parametrize("fraction, aggressive", [(0.0, False), (0.5, False), (0.5000001, True), (0.9, True), (1, True)])
def test_check_clipping_on_fraction(fraction, aggressive):
    if aggressive:
        with pytest.warns(AggressiveClippingWarning) as rec:
            res = stats.check_clipping(fraction)
        assert len(rec) == 1
        assert issubclass(rec[0].category, UserWarning)
        assert rec[0].filename == __file__  # stacklevel points at the caller
    else:
        res = stats.check_clipping(fraction)
    assert res == stats.ClipCheck(float(fraction), aggressive, res.message, 0.5, None)


def test_check_clipping_message_quotes_playbook():
    with pytest.warns(AggressiveClippingWarning) as rec:
        stats.check_clipping(np.array([3.0, 3.0, 0.1]), max_norm=1.0)
    msg = str(rec[0].message)
    assert 'We would usually consider having >50% of the updates getting clipped somehow as "extremely aggressive".' in msg
    assert "we probably should just cut the learning rate instead" in msg
    assert "66.7%" in msg and "max_norm=1" in msg


def test_check_clipping_custom_threshold_and_no_warn():
    with pytest.warns(AggressiveClippingWarning, match="more than 20%"):
        assert stats.check_clipping(0.25, threshold=0.2).aggressive
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = stats.check_clipping(0.9, warn=False)
    assert res.aggressive


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((0.6,), {"max_norm": 1.0}, "got a clip fraction and max_norm"),
        (([1.0, 2.0],), {}, "needs max_norm"),
        ((1.5,), {}, r"clip fraction must be in \[0, 1\]"),
        ((-0.1,), {}, r"clip fraction must be in \[0, 1\]"),
        ((0.3,), {"threshold": 1.0}, "threshold must be a fraction"),
        ((0.3,), {"threshold": -0.5}, "threshold must be a fraction"),
    ],
)
def test_check_clipping_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        stats.check_clipping(*args, **kwargs)


def test_check_clipping_torch_tensor():
    torch = pytest.importorskip("torch")
    norms = torch.tensor([0.5, 2.0, 3.0, float("nan")])
    with pytest.warns(AggressiveClippingWarning):
        res = stats.check_clipping(norms, max_norm=1.0)
    assert res.fraction == pytest.approx(2 / 3)


# --- summarize ------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", _containers())
def test_summarize_matches_numpy(make):
    x = _with_nonfinite(seed=11)
    data = make(x)
    x64 = _held(data)
    fin = x64[np.isfinite(x64)]
    s = stats.summarize(data)
    assert (s.count, s.finite_count, s.nonfinite_count) == (500, 463, 37)
    assert s.min == fin.min() and s.max == fin.max()
    assert s.mean == pytest.approx(fin.mean(), rel=1e-12)
    assert s.median == pytest.approx(np.median(fin), rel=1e-12)
    assert s.p90 == pytest.approx(np.quantile(fin, 0.9), rel=1e-12)
    assert s.p99 == pytest.approx(np.percentile(fin, 99), rel=1e-12)
    assert "500 steps (37 non-finite)" in str(s)


def test_summarize_all_nonfinite_is_nan():
    s = stats.summarize([float("nan"), float("inf")])
    assert (s.count, s.finite_count) == (2, 0)
    assert all(math.isnan(v) for v in (s.min, s.max, s.mean, s.median, s.p90, s.p99))
    e = stats.summarize([])
    assert (e.count, e.finite_count) == (0, 0)


# --- plots ----------------------------------------------------------------------------------------


def _check_png(path):
    from matplotlib.image import imread

    with open(path, "rb") as f:
        head = f.read(8)
    assert head == PNG_MAGIC
    img = imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert img.shape[0] > 100 and img.shape[1] > 2 * img.shape[0]  # two panels side by side
    assert img[..., :3].std() > 0.01  # not a blank image
    return img


def test_plot_writes_png(tmp_path):
    x = _with_nonfinite(seed=12)
    out = tmp_path / "sub" / "norms.png"
    paths = stats.plot_grad_norms(x, out, max_norm=2.0, title="run 7")
    assert paths == [str(out)]
    assert out.stat().st_size > 1000
    img = _check_png(out)
    assert img.shape[:2] == (450, 1200)  # figsize (12, 4.5) at dpi 100


def test_plot_leaves_pyplot_alone(tmp_path):
    import sys

    import matplotlib

    backend = matplotlib.get_backend()
    had_pyplot = "matplotlib.pyplot" in sys.modules
    stats.plot_grad_norms(_lognormal(50), str(tmp_path / "a.png"))
    assert matplotlib.get_backend() == backend
    if not had_pyplot:
        assert "matplotlib.pyplot" not in sys.modules
    else:
        import matplotlib.pyplot as plt

        assert plt.get_fignums() == []


@pytest.mark.parametrize(
    "norms",
    [
        pytest.param([1.0], id="single"),
        pytest.param([2.0] * 20, id="constant"),
        pytest.param([0.0, 1.0, 2.0, 0.0, 3.0], id="zeros"),
        pytest.param([float("nan")] * 5, id="all-nonfinite"),
        pytest.param(list(_lognormal(3000, seed=2)), id="long"),
    ],
)
def test_plot_edge_cases(tmp_path, norms):
    p = tmp_path / "e.png"
    assert stats.plot_grad_norms(norms, p, max_norm=1.5) == [str(p)]
    _check_png(p)


def test_plot_torch_and_steps(tmp_path):
    torch = pytest.importorskip("torch")
    norms = torch.tensor(_lognormal(100), dtype=torch.bfloat16)
    p = tmp_path / "t.png"
    stats.plot_grad_norms(norms, p, steps=np.arange(1000, 1100))
    _check_png(p)
    with pytest.raises(ValueError, match="one entry per norm"):
        stats.plot_grad_norms(norms, p, steps=np.arange(5))


def test_plot_empty_raises(tmp_path):
    with pytest.raises(ValueError, match="at least one gradient norm"):
        stats.plot_grad_norms([], tmp_path / "x.png")


# --- with the optimizers' history (skipped when the extension is not built) -----------------------


def _playbook_adam():
    try:
        from playbook.optim import Adam
    except (ImportError, AttributeError) as e:
        pytest.skip(f"playbook.optim unavailable: {e}")
    return Adam


def test_optimizer_history_round_trip():
    torch = pytest.importorskip("torch")
    Adam = _playbook_adam()
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(n, generator=gen)) for n in (7, 300, 1000)]
    opt = Adam(params, lr=1e-3, max_grad_norm=10.0)
    expected = []
    for k in range(40):
        scale = 0.05 * (k % 10 + 1)  # norms cycle through 10 levels, some above max_norm
        for p in params:
            p.grad = scale * torch.randn(p.shape, generator=gen)
        expected.append(math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in params)))
        opt.step()
    norms = opt.grad_norms()
    np.testing.assert_allclose(norms.double().numpy(), expected, rtol=1e-5)
    assert stats.clip_fraction(norms, 10.0) == pytest.approx(opt.clip_fraction())
    assert stats.summarize(norms).count == 40
    assert stats.suggest_max_grad_norm(norms) == pytest.approx(float(np.quantile(expected, 0.9)), rel=1e-5)
