"""The one place that turns torch tensors into what the compiled core takes.

The core (csrc/) never sees a torch tensor: it takes data pointers, element counts, dtype codes
(`playbook::DType`), a device ordinal (-1 for the CPU) and, on CUDA, torch's current stream.
"""

from __future__ import annotations

import torch

# Must match playbook::DType in csrc/include/playbook/tensor.h.
DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 0,
    torch.bfloat16: 1,
    torch.float16: 2,
}

CPU_DEVICE = -1


def dtype_code(dtype: torch.dtype, what: str) -> int:
    """The core's code for ``dtype``; TypeError naming ``what`` if the kernels do not take it."""
    code = DTYPE_CODES.get(dtype)
    if code is None:
        valid = ", ".join(str(d) for d in DTYPE_CODES)
        if dtype.is_complex:
            raise TypeError(f"{what} has complex dtype {dtype}; playbook's kernels take {valid}")
        raise TypeError(f"{what} has dtype {dtype}; playbook's kernels take {valid}")
    return code


def device_index(device: torch.device) -> int:
    """-1 for the CPU, the CUDA ordinal for a CUDA device; TypeError for anything else."""
    if device.type == "cpu":
        return CPU_DEVICE
    if device.type == "cuda":
        return device.index if device.index is not None else torch.cuda.current_device()
    raise TypeError(f"playbook's kernels run on cpu and cuda tensors, got a tensor on {device}")


def stream_handle(device: torch.device) -> int:
    """torch's current CUDA stream on ``device`` as an integer handle (0 on the CPU)."""
    if device.type == "cuda":
        return torch.cuda.current_stream(device).cuda_stream
    return 0


def ptr(t: torch.Tensor | None) -> int:
    """data_ptr() of ``t``, or 0 for None."""
    return 0 if t is None else t.data_ptr()
