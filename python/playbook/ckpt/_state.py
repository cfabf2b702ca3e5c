"""What goes into a checkpoint: resolving ``state_dict()`` objects, the weights-only check, host copies.

Three walks over the (nested) state, each keeping container types (``OrderedDict`` with its
``_metadata``, named tuples, ...) so that what is checked is what is saved:

- :func:`collect` turns every top-level value with ``state_dict()`` into that dict;
- :func:`check_weights_only` proves, before anything is written, that ``torch.load(...,
  weights_only=True)`` can read the state back (tensors are replaced by empty ones of the same
  dtype, so the check costs microseconds per tensor, not a copy); on failure it names the key;
- :class:`HostCopier` copies tensors to CPU memory storage by storage, so that tensors sharing a
  storage (views, tied weights) still share one in the copy and the file has the same bytes as a
  synchronous save of the original tensors.
"""

from __future__ import annotations

import copy
import io
from typing import Any, Callable, Mapping

import torch

__all__ = ["collect", "check_weights_only", "HostCopier"]

_IMMUTABLE = (int, float, complex, bool, str, bytes, type(None), torch.dtype, torch.device, torch.Size)


def collect(state: Mapping[str, Any]) -> dict[str, Any]:
    """``{key: value}`` with every value that has ``state_dict()`` replaced by its state dict."""
    if not isinstance(state, Mapping):
        raise TypeError(f"Checkpoint state must be a dict of name -> value, got {type(state).__name__}.")
    out: dict[str, Any] = {}
    for key, value in state.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"Invalid checkpoint state key {key!r}: keys must be non-empty strings.")
        if not isinstance(value, torch.Tensor) and callable(getattr(value, "state_dict", None)):
            value = value.state_dict()
        out[key] = value
    return out


def _plain_tensor(t: torch.Tensor) -> bool:
    """A dense tensor that torch.save pickles by storage only (no Python attributes)."""
    return (
        type(t) in (torch.Tensor, torch.nn.Parameter)
        and t.layout == torch.strided
        and not t.is_quantized
        and not getattr(t, "__dict__", None)
    )


def _walk(obj: Any, leaf: Callable[[torch.Tensor], Any], other: Callable[[Any], Any]) -> Any:
    """Rebuild ``obj`` with ``leaf`` applied to tensors and ``other`` to unknown leaves."""
    if isinstance(obj, torch.Tensor):
        return leaf(obj)
    if isinstance(obj, _IMMUTABLE):
        return obj
    if type(obj) is dict:
        return {k: _walk(v, leaf, other) for k, v in obj.items()}
    if isinstance(obj, dict):  # OrderedDict (state dicts carry ``_metadata``), defaultdict, ...
        new = copy.copy(obj)
        new.clear()
        for k, v in obj.items():
            new[k] = _walk(v, leaf, other)
        return new
    if type(obj) is list:
        return [_walk(v, leaf, other) for v in obj]
    if type(obj) is tuple:
        return tuple(_walk(v, leaf, other) for v in obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # named tuple
        return type(obj)(*(_walk(v, leaf, other) for v in obj))
    return other(obj)


def _placeholder(t: torch.Tensor) -> torch.Tensor:
    if not _plain_tensor(t):
        return t
    p = torch.empty(0, dtype=t.dtype)
    if isinstance(t, torch.nn.Parameter):
        return torch.nn.Parameter(p, requires_grad=t.requires_grad)
    return p


def _roundtrip_error(obj: Any) -> BaseException | None:
    buf = io.BytesIO()
    try:
        torch.save(obj, buf)
    except Exception as exc:  # not even picklable (lambda, open file, ...)
        return exc
    buf.seek(0)
    try:
        torch.load(buf, weights_only=True)
    except Exception as exc:
        return exc
    return None


def _children(obj: Any) -> list[tuple[Any, Any]]:
    if isinstance(obj, dict):
        return list(obj.items())
    if isinstance(obj, (list, tuple)):
        return list(enumerate(obj))
    return []


def _locate(obj: Any, path: tuple[Any, ...]) -> tuple[tuple[Any, ...], Any]:
    """The deepest path under ``obj`` whose value alone fails the weights-only round trip."""
    for key, child in _children(obj):
        if _roundtrip_error(child) is not None:
            return _locate(child, path + (key,))
    return path, obj


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        if "Unsupported global" in line or "Can't" in line or "cannot" in line.lower():
            return line.strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _short(reason: str) -> str:
    return reason.split(" Please use", 1)[0].rstrip(".")


def check_weights_only(state: Mapping[str, Any]) -> None:
    """Raise ``TypeError`` naming the key if ``torch.load(weights_only=True)`` could not read ``state``.

    Uses torch's own weights-only unpickler on a skeleton of the state (tensors replaced by empty
    ones of the same dtype), so the answer is exactly torch's, including any globals registered
    with ``torch.serialization.add_safe_globals``.
    """
    skeleton = _walk(state, _placeholder, lambda x: x)
    err = _roundtrip_error(skeleton)
    if err is None:
        return
    path, value = _locate(skeleton, ())
    key = ".".join(str(p) for p in path) or "<state>"
    reason = _short(_first_line(_roundtrip_error(value) or err))
    raise TypeError(
        f"Checkpoint state key {key!r} holds a {type(value).__module__}.{type(value).__qualname__} that "
        f"torch.load(weights_only=True) cannot read back ({reason}). Checkpoints hold only tensors, "
        "plain containers, numbers and strings (and objects with state_dict()), so loading one never "
        "executes code: convert the value (e.g. numpy array -> torch.from_numpy) or register its type "
        "with torch.serialization.add_safe_globals."
    )


class HostCopier:
    """Copies the tensors of a state to CPU memory, one copy per storage (views stay views).

    Args:
        reuse: Keep the copy buffers of a finished save (:meth:`release`) and reuse them for the
            next state with storages of the same sizes: no allocation and no page faults in
            steady state (the async-save path).
    """

    def __init__(self, reuse: bool = False) -> None:
        self.reuse = reuse
        self._pool: dict[int, list[torch.UntypedStorage]] = {}

    def _buffer(self, nbytes: int) -> torch.UntypedStorage:
        bucket = self._pool.get(nbytes)
        if bucket:
            return bucket.pop()
        return torch.empty(nbytes, dtype=torch.uint8).untyped_storage()

    def copy(self, state: Any, *, clone_cpu: bool) -> tuple[Any, list[torch.UntypedStorage]]:
        """A copy of ``state`` whose tensors live in CPU storages owned by the copy.

        Args:
            state: The collected state.
            clone_cpu: Also copy CPU tensors (async saves: training goes on mutating them). When
                False, CPU tensors are used as they are and only device tensors are copied.

        Returns:
            ``(copy, buffers)``: buffers are the storages allocated here (give them back with
            :meth:`release` once written).
        """
        memo: dict[int, torch.UntypedStorage] = {}
        buffers: list[torch.UntypedStorage] = []

        def leaf(t: torch.Tensor) -> torch.Tensor:
            if not _plain_tensor(t):
                if clone_cpu or t.device.type != "cpu":
                    return copy.deepcopy(t.detach()).cpu()
                return t
            if t.device.type == "cpu" and not clone_cpu:
                return t
            src = t.untyped_storage()
            key = src._cdata
            dst = memo.get(key)
            if dst is None:
                dst = self._buffer(src.nbytes())
                dst.copy_(src)
                memo[key] = dst
                buffers.append(dst)
            new = torch.empty(0, dtype=t.dtype).set_(dst, t.storage_offset(), t.size(), t.stride())
            if isinstance(t, torch.nn.Parameter):
                return torch.nn.Parameter(new, requires_grad=t.requires_grad)
            if t.requires_grad and new.is_floating_point():
                new.requires_grad_(True)
            return new

        def other(x: Any) -> Any:
            return copy.deepcopy(x) if clone_cpu else x

        return _walk(state, leaf, other), buffers

    def release(self, buffers: list[torch.UntypedStorage]) -> None:
        """Return the buffers of a written copy to the pool (when ``reuse``)."""
        if not self.reuse:
            return
        for b in buffers:
            self._pool.setdefault(b.nbytes(), []).append(b)

    def clear(self) -> None:
        self._pool.clear()

