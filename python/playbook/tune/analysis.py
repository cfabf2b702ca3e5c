"""Post-hoc analysis of a tuning study (playbook "Extracting insight from experimental results").

Work in progress: the full implementation follows.
"""

from __future__ import annotations

from typing import Any


class Analysis:
    """Analysis of one study; see the module docstring."""

    def __init__(self, study: Any) -> None:
        self.study = study
