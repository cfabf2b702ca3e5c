"""Checkpoints that survive a kill at any instant (playbook "Saving checkpoints and retrospectively
selecting the best checkpoint").

- :class:`CheckpointManager`: atomic commits (temporary directory, fsync, rename), a JSON
  manifest with the size and SHA-256 of every file, retention of the N best by a metric plus the
  latest, verified restores that skip corrupt checkpoints, ``torch.load(weights_only=True)`` only,
  optional background writes, rank-0-only writes under ``torch.distributed``.
- :func:`rng_state`: the torch / CUDA / numpy / Python generators as one checkpointable object.

Example:
    >>> from playbook import ckpt
    >>> mgr = ckpt.CheckpointManager("runs/exp1", metric="val_error", keep_best=3)  # doctest: +SKIP
    >>> start = mgr.restore_into(model=model, optimizer=opt, rng=ckpt.rng_state())  # doctest: +SKIP
"""

from __future__ import annotations

from playbook.ckpt._format import CorruptCheckpointError
from playbook.ckpt.manager import CheckpointManager, CheckpointWarning
from playbook.ckpt.rng import RNGState, rng_state

__all__ = ["CheckpointManager", "CheckpointWarning", "CorruptCheckpointError", "RNGState", "rng_state"]
