"""Drop-in ``torch.optim`` optimizers with the playbook's global-norm clipping fused in.

``Adam``, ``AdamW``, ``NAdam`` and ``SGD`` take torch's arguments plus keyword-only
``max_grad_norm``, ``variant`` (Adam/NAdam), ``skip_nonfinite``, ``history`` and ``process_group``
(see ``playbook.optim._distributed``).
"""

from playbook.optim._base import FusedOptimizer
from playbook.optim.adam import Adam, AdamW
from playbook.optim.nadam import NAdam
from playbook.optim.sgd import SGD

__all__ = ["Adam", "AdamW", "NAdam", "SGD", "FusedOptimizer"]
