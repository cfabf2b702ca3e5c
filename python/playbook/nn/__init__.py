"""Neural-network modules: ghost batch norm (playbook, "Batch normalization implementation details").

- ``GhostBatchNorm1d/2d/3d``: drop-in subclasses of ``nn.BatchNorm1d/2d/3d`` whose training-mode
  statistics run over ghost batches of ``virtual_batch_size`` samples.
- ``convert_to_ghost_bn``: swap every batch norm of a model in place.
- ``sync_running_stats``: average running statistics over ranks before eval / checkpointing.
"""

from playbook.nn.ghost_bn import (
    GhostBatchNorm1d,
    GhostBatchNorm2d,
    GhostBatchNorm3d,
    convert_to_ghost_bn,
    sync_running_stats,
)

__all__ = [
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "GhostBatchNorm3d",
    "convert_to_ghost_bn",
    "sync_running_stats",
]
