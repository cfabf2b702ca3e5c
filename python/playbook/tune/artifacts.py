"""Where a study keeps files (checkpoints, logs): its artifacts directory.

Default: beside the SQLite file, ``<db stem>_artifacts/<study>/`` (``sqlite:///runs/studies.db``
-> ``runs/studies_artifacts/<study>/``); ``Study.create(..., artifacts=PATH)`` chooses another
place and stores it in the study config. Trial ``i`` owns ``<artifacts>/trial_<i:05d>/``, kept
when the trial is re-run so that it resumes from its checkpoints.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

__all__ = ["artifacts_dir", "trial_dir", "check_artifacts"]


def _study_subdir(name: str) -> Path:
    parts = name.split("/")
    if any(p in ("", ".", "..") or "\0" in p for p in parts):
        raise ValueError(
            f"Study name {name!r} cannot name an artifacts sub-directory (empty, '.' or '..' path component); "
            "rename the study or pass Study.create(..., artifacts=PATH)."
        )
    return Path(*parts)


def check_artifacts(path: Any) -> str:
    """The absolute path stored in the config for ``Study.create(..., artifacts=path)``."""
    try:
        text = os.fspath(path)
    except TypeError:
        raise ValueError(f"Invalid artifacts={path!r}: it needs to be a path.") from None
    if not isinstance(text, str) or not text:
        raise ValueError(f"Invalid artifacts={path!r}: it needs to be a non-empty path.")
    return os.path.abspath(text)


def artifacts_dir(study_name: str, config: Mapping[str, Any], storage: Any) -> Path:
    """The study's artifacts directory (not created here)."""
    stored = config.get("artifacts")
    if stored:
        return Path(stored)
    db_path = getattr(storage, "path", None)
    if not isinstance(db_path, str):
        raise ValueError(
            f"Study {study_name!r} has no artifacts directory: its storage {getattr(storage, 'url', storage)!r} is "
            "not an SQLite file to put one beside. Create the study with Study.create(..., artifacts=PATH)."
        )
    db = Path(os.path.abspath(db_path))
    return db.with_name(f"{db.stem}_artifacts") / _study_subdir(study_name)


def trial_dir(root: Path, index: int) -> Path:
    """Directory of trial ``index`` under the study's artifacts directory ``root``."""
    return Path(root) / f"trial_{int(index):05d}"
