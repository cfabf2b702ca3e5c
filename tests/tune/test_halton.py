"""Scrambled Halton (playbook FAQ 7.5-7.6) against scipy.stats.qmc and uniform random."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import qmc

from playbook.tune import Halton
from playbook.tune.halton import first_primes


def test_first_primes():
    assert first_primes(10) == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
    assert first_primes(0) == []


def test_unscrambled_first_points():
    pts = Halton(2, scramble=False).random(4)
    np.testing.assert_array_equal(pts, [[0, 0], [1 / 2, 1 / 3], [1 / 4, 2 / 3], [3 / 4, 1 / 9]])


@pytest.mark.parametrize("d", range(1, 11))
def test_unscrambled_equals_scipy_exactly(d):
    ours = Halton(d, scramble=False).random(1000)
    ref = qmc.Halton(d, scramble=False).random(1000)
    np.testing.assert_array_equal(ours, ref)


def test_unscrambled_equals_scipy_after_fast_forward():
    ours = Halton(4, scramble=False).fast_forward(777).random(100)
    ref = qmc.Halton(4, scramble=False).fast_forward(777).random(100)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**62])
def test_point_is_random_prefix(seed):
    full = Halton(5, seed=seed).random(300)
    h = Halton(5, seed=seed)
    for i in (0, 1, 2, 63, 64, 299):
        np.testing.assert_array_equal(h.point(i), full[i])
    assert h.num_generated == 0  # point() is pure: it does not advance the sequence
    np.testing.assert_array_equal(h.points([299, 0, 17]), full[[299, 0, 17]])


def test_point_far_index_does_not_generate_prefix():
    h = Halton(3, seed=7)
    far = h.point(10**12)
    assert far.shape == (3,) and np.all((far >= 0) & (far < 1))
    np.testing.assert_array_equal(far, Halton(3, seed=7).fast_forward(10**12).random(1)[0])


def test_fast_forward_and_reset_invariants():
    ref = Halton(3, seed=3).random(40)
    h = Halton(3, seed=3)
    assert h.fast_forward(10) is h
    assert h.num_generated == 10
    np.testing.assert_array_equal(h.random(5), ref[10:15])
    assert h.num_generated == 15
    np.testing.assert_array_equal(h.random(0), np.empty((0, 3)))
    assert h.reset() is h
    assert h.num_generated == 0
    np.testing.assert_array_equal(h.random(40), ref)
    # Chunked generation equals one call.
    h.reset()
    np.testing.assert_array_equal(np.vstack([h.random(7), h.random(33)]), ref)


def test_points_in_unit_interval():
    pts = Halton(10, seed=0).random(2000)
    assert pts.min() >= 0.0 and pts.max() < 1.0


def test_seed_none_is_recorded_and_reproducible():
    h = Halton(4)
    assert isinstance(h.seed, int) and 0 <= h.seed < 2**63
    np.testing.assert_array_equal(h.random(20), Halton(4, seed=h.seed).random(20))
    assert Halton(4).seed != Halton(4).seed  # drawn afresh (collision odds 2**-63)


def test_different_seeds_differ_and_columns_do_not_depend_on_d():
    a = Halton(3, seed=1).random(50)
    assert not np.array_equal(a, Halton(3, seed=2).random(50))
    # Permutations are drawn base by base: adding dimensions keeps the earlier columns.
    np.testing.assert_array_equal(a, Halton(6, seed=1).random(50)[:, :3])


@pytest.mark.parametrize("column,base", [(0, 2), (1, 3), (2, 5)])
def test_scrambled_columns_stay_stratified(column, base):
    # A digit permutation keeps the van der Corput property: base**k consecutive points put
    # exactly one point in each interval [m / base**k, (m + 1) / base**k).
    n = base**4
    x = Halton(3, seed=11).random(n)[:, column]
    cells = np.floor(x * n).astype(int)
    np.testing.assert_array_equal(np.sort(cells), np.arange(n))


def _mean_cd(samples) -> float:
    return float(np.mean([qmc.discrepancy(s, method="CD") for s in samples]))


@pytest.mark.parametrize("n,min_ratio", [(16, 4.0), (64, 8.0), (256, 20.0)])
def test_scrambled_discrepancy(n, min_ratio):
    seeds = range(20)
    ours = _mean_cd(Halton(2, seed=s).random(n) for s in seeds)
    scipy_ref = _mean_cd(qmc.Halton(2, seed=s).random(n) for s in seeds)
    uniform = _mean_cd(np.random.default_rng(1000 + s).random((n, 2)) for s in seeds)
    assert ours <= 1.5 * scipy_ref
    assert uniform / ours >= min_ratio


def test_scrambled_discrepancy_5d():
    seeds = range(10)
    ours = _mean_cd(Halton(5, seed=s).random(128) for s in seeds)
    uniform = _mean_cd(np.random.default_rng(s).random((128, 5)) for s in seeds)
    assert uniform / ours >= 3.0


_CHILD = """
import json, sys
from playbook.tune import Halton
h = Halton(6, seed=int(sys.argv[1]))
print(json.dumps({"random": h.random(50).tolist(), "point": h.point(12345).tolist()}))
"""


def test_same_points_in_another_process():
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, "42"], capture_output=True, text=True, check=True, timeout=60
    )
    child = json.loads(out.stdout)
    h = Halton(6, seed=42)
    assert child["random"] == h.random(50).tolist()
    assert child["point"] == h.point(12345).tolist()


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: Halton(0), "d=0"),
        (lambda: Halton(2.5), "d=2.5"),
        (lambda: Halton(2, seed=-1), "-1"),
        (lambda: Halton(2, seed="abc"), "'abc'"),
        (lambda: Halton(2, seed=2**63), str(2**63)),
        (lambda: Halton(2, seed=0).random(-1), "n=-1"),
        (lambda: Halton(2, seed=0).point(-3), "i=-3"),
        (lambda: Halton(2, seed=0).fast_forward(-2), "n=-2"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()
