"""Scrambled Halton sequence with random-access points (playbook FAQ 7.5-7.6).

Quasi-random search (playbook FAQ 7.5) samples the search space with a low-discrepancy sequence
instead of independent uniform draws: the points cover the unit cube more evenly ("jittered,
shuffled grid search"), and because the sequence is non-adaptive, trial ``i`` can be computed by
any worker without knowing anything about trials ``0..i-1``.

The generator follows ``scipy.stats.qmc.Halton``: dimension ``j`` is the van der Corput sequence in
base ``p_j`` (the ``j``-th prime). With ``scramble=True`` each digit position of each base gets its
own random permutation of ``{0, ..., p_j - 1}`` (Owen 2017, algorithm 1), drawn from a
``numpy.random.Generator`` seeded with ``seed``:

    x_j(i) = sum_{k >= 0} perm_{j,k}(digit_k(i, p_j)) * p_j^-(k+1)

with enough digit positions ``k`` for double precision. ``scramble=False`` uses the identity
permutation on the digits of ``i`` only and reproduces ``scipy.stats.qmc.Halton(scramble=False)``
bit for bit.

References:
    Owen, A. B. (2017). A randomized Halton algorithm in R. arXiv:1706.03200.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

__all__ = ["Halton", "first_primes", "new_seed"]

_MAX_SEED = 2**63


def first_primes(d: int) -> list[int]:
    """Return the first ``d`` primes (the Halton bases).

    Args:
        d: How many primes (``d >= 0``).

    Returns:
        ``[2, 3, 5, ...]`` of length ``d``.
    """
    primes: list[int] = []
    candidate = 2
    while len(primes) < d:
        if all(candidate % p for p in primes if p * p <= candidate):
            primes.append(candidate)
        candidate += 1
    return primes


def new_seed() -> int:
    """Draw a fresh seed in ``[0, 2**63)`` from operating-system entropy."""
    return int(np.random.default_rng().integers(_MAX_SEED))


def _num_digits(base: int) -> int:
    """Digit positions needed so that ``base**-k`` falls below double precision (as scipy)."""
    return math.ceil(54 / math.log2(base)) - 1


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"Invalid Halton seed: {seed!r}. It needs to be an int in [0, 2**63) or None.")
    if not 0 <= int(seed) < _MAX_SEED:
        raise ValueError(f"Invalid Halton seed: {seed!r}. It needs to be an int in [0, 2**63) or None.")
    return int(seed)


@lru_cache(maxsize=64)
def _permutations(d: int, seed: int) -> tuple[np.ndarray, ...]:
    """Digit permutations for each of the ``d`` bases: a ``(num_digits, base)`` array per base.

    Drawn dimension by dimension, digit by digit, from ``numpy.random.default_rng(seed)``, so the
    permutations of dimension ``j`` do not depend on ``d`` (a space with one more hyperparameter
    keeps the earlier columns). Cached: a pure function of ``(d, seed)``.
    """
    rng = np.random.default_rng(seed)
    perms = []
    for base in first_primes(d):
        table = np.empty((_num_digits(base), base), dtype=np.int64)
        for k in range(table.shape[0]):
            table[k] = rng.permutation(base)
        table.setflags(write=False)
        perms.append(table)
    return tuple(perms)


def _radical_inverse(indices: np.ndarray, base: int) -> np.ndarray:
    """Plain van der Corput radical inverse, same float operations as scipy's Cython loop."""
    quotient = indices.astype(np.int64, copy=True)
    out = np.zeros(quotient.shape, dtype=np.float64)
    b2r = 1.0 / base
    while np.any(quotient > 0):
        remainder = quotient % base
        out += remainder * b2r
        b2r /= base
        quotient //= base
    return out


def _scrambled_radical_inverse(indices: np.ndarray, base: int, perms: np.ndarray) -> np.ndarray:
    """Radical inverse with digit ``k`` replaced by ``perms[k, digit]`` (all digit positions)."""
    quotient = indices.astype(np.int64, copy=True)
    out = np.zeros(quotient.shape, dtype=np.float64)
    b2r = 1.0 / base
    for k in range(perms.shape[0]):
        remainder = quotient % base
        out += perms[k, remainder] * b2r
        b2r /= base
        quotient //= base
    return out


def halton_points(indices: np.ndarray, d: int, *, scramble: bool, seed: int | None) -> np.ndarray:
    """Halton points at arbitrary integer indices: a pure function of ``(d, scramble, seed, i)``.

    Args:
        indices: Non-negative integer indices, shape ``(n,)``.
        d: Dimension.
        scramble: Whether to apply the random digit permutations.
        seed: Seed of the permutations (ignored when ``scramble`` is False).

    Returns:
        Array of shape ``(n, d)`` in ``[0, 1)``.
    """
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and idx.min() < 0:
        raise ValueError(f"Halton indices must be >= 0, got {int(idx.min())}")
    out = np.empty((idx.size, d), dtype=np.float64)
    if scramble:
        assert seed is not None
        for j, (base, perms) in enumerate(zip(first_primes(d), _permutations(d, seed))):
            out[:, j] = _scrambled_radical_inverse(idx, base, perms)
    else:
        for j, base in enumerate(first_primes(d)):
            out[:, j] = _radical_inverse(idx, base)
    return out


class Halton:
    """Scrambled Halton sequence in ``[0, 1)^d``, ``scipy.stats.qmc.Halton`` style.

    Implements the quasi-random search of playbook FAQ 7.5-7.6: bases are the first ``d`` primes,
    and with ``scramble=True`` every digit position of every base is permuted by its own random
    permutation drawn from ``numpy.random.default_rng(seed)``. Point ``i`` is a pure function of
    ``(d, scramble, seed, i)`` (see :meth:`point`), so trial ``i`` of a study is the same on any
    machine and with any number of workers.

    Args:
        d: Dimension (``d >= 1``).
        scramble: Apply random digit permutations (default). ``False`` reproduces
            ``scipy.stats.qmc.Halton(d, scramble=False)`` exactly.
        seed: Seed of the scrambling permutations. ``None`` draws one from OS entropy and records
            it in :attr:`seed`, so the sequence can be reproduced later.

    Attributes:
        d: Dimension.
        scramble: Whether digits are scrambled.
        seed: The seed in use (an int, also when drawn), or ``None`` when ``scramble`` is False and
            no seed was given.
        num_generated: How many points :meth:`random` has produced (or skipped) so far.

    Example:
        >>> h = Halton(2, scramble=False)
        >>> h.random(4).tolist()
        [[0.0, 0.0], [0.5, 0.3333333333333333], [0.25, 0.6666666666666666], [0.75, 0.1111111111111111]]
        >>> bool((Halton(3, seed=0).point(10) == Halton(3, seed=0).random(11)[10]).all())
        True

    References:
        Owen, A. B. (2017). A randomized Halton algorithm in R. arXiv:1706.03200.
    """

    def __init__(self, d: int, *, scramble: bool = True, seed: int | None = None) -> None:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
            raise ValueError(f"Invalid Halton dimension d={d!r}. It needs to be an int >= 1.")
        self.d = int(d)
        self.scramble = bool(scramble)
        if seed is None:
            self.seed: int | None = new_seed() if self.scramble else None
        else:
            self.seed = _check_seed(seed)
        self.num_generated = 0

    def __repr__(self) -> str:
        return f"Halton(d={self.d}, scramble={self.scramble}, seed={self.seed})"

    def _random(self, n: int) -> np.ndarray:
        indices = np.arange(self.num_generated, self.num_generated + n, dtype=np.int64)
        return halton_points(indices, self.d, scramble=self.scramble, seed=self.seed)

    def random(self, n: int = 1) -> np.ndarray:
        """Draw the next ``n`` points.

        Args:
            n: Number of points (``n >= 0``).

        Returns:
            Array of shape ``(n, d)`` in ``[0, 1)``; advances :attr:`num_generated` by ``n``.
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"Invalid number of points n={n!r}. It needs to be an int >= 0.")
        sample = self._random(int(n))
        self.num_generated += int(n)
        return sample

    def point(self, i: int) -> np.ndarray:
        """Point ``i`` of the sequence, without generating points ``0..i-1``.

        A pure function of ``(d, scramble, seed, i)``; does not change :attr:`num_generated`.
        ``point(i) == random(i + 1)[i]`` on a fresh generator.

        Args:
            i: Index (``i >= 0``).

        Returns:
            Array of shape ``(d,)``.
        """
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0:
            raise ValueError(f"Invalid Halton index i={i!r}. It needs to be an int >= 0.")
        return halton_points(np.array([i]), self.d, scramble=self.scramble, seed=self.seed)[0]

    def points(self, indices: np.ndarray | list[int]) -> np.ndarray:
        """Points at the given indices (vectorized :meth:`point`); shape ``(len(indices), d)``."""
        return halton_points(np.asarray(indices), self.d, scramble=self.scramble, seed=self.seed)

    def fast_forward(self, n: int) -> Halton:
        """Skip ``n`` points; returns ``self``."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"Invalid fast_forward n={n!r}. It needs to be an int >= 0.")
        self.num_generated += int(n)
        return self

    def reset(self) -> Halton:
        """Go back to point 0 (same permutations); returns ``self``."""
        self.num_generated = 0
        return self
