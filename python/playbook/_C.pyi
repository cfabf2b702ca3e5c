# Type stub of the compiled core (csrc/bindings.cpp). Pointers are ints (tensor.data_ptr()),
# device is -1 for the CPU or a CUDA ordinal, stream is torch's cudaStream_t as an int (0 on CPU).

from typing import Any

kStepValues: int
kCounters: int
kNormIdx: int
kGradFactorIdx: int
kSkipIdx: int
kStepsSeenIdx: int
kSkippedIdx: int
kClippedIdx: int

class CoreValueError(ValueError): ...

def version() -> str: ...
def cuda_compiled() -> bool: ...
def cuda_archs() -> str: ...
def cuda_toolkit_version() -> str: ...
def cuda_runtime_status() -> dict[str, Any]: ...
def _device_guard_plan(previous: int, context_known: bool, had_context: bool, target: int) -> tuple[bool, int]: ...
def simd_level() -> str: ...
def simd_levels() -> list[str]: ...
def set_simd_level(level: str) -> bool: ...

class GradNormPlan:
    def __init__(self, device: int, numels: list[int], dtypes: list[int]) -> None: ...
    def scratch_bytes(self) -> int: ...
    def sumsq(
        self, grad_ptrs: list[int], per_tensor_ptr: int, total_ptr: int, num_threads: int,
        scratch_ptr: int, scratch_bytes: int, stream: int,
    ) -> None: ...

def finalize_grad_norm(
    device: int, total_ptr: int, max_norm: float, skip_nonfinite: bool, grad_scale_ptr: int,
    found_inf_ptr: int, values_ptr: int, counters_ptr: int, history_ptr: int, history_size: int,
    stream: int,
) -> None: ...

class AdamPlan:
    def __init__(
        self, device: int, numels: list[int], dtypes: list[int], exp_avgs: list[int],
        exp_avg_sqs: list[int], max_exp_avg_sqs: list[int], steps: list[int],
    ) -> None: ...
    def step(
        self, param_ptrs: list[int], grad_ptrs: list[int], lr: float, lr_ptr: int, beta1: float,
        beta2: float, eps: float, weight_decay: float, decoupled: bool, amsgrad: bool, maximize: bool,
        variant: int, step_values_ptr: int, num_threads: int, stream: int,
    ) -> None: ...

class NAdamPlan:
    def __init__(
        self, device: int, numels: list[int], dtypes: list[int], exp_avgs: list[int],
        exp_avg_sqs: list[int], mu_products: list[int], steps: list[int],
    ) -> None: ...
    def step(
        self, param_ptrs: list[int], grad_ptrs: list[int], lr: float, lr_ptr: int, beta1: float,
        beta2: float, eps: float, weight_decay: float, momentum_decay: float, decoupled: bool,
        maximize: bool, variant: int, step_values_ptr: int, num_threads: int, stream: int,
    ) -> None: ...

class SGDPlan:
    def __init__(
        self, device: int, numels: list[int], dtypes: list[int], momentum_buffers: list[int],
        steps: list[int],
    ) -> None: ...
    def step(
        self, param_ptrs: list[int], grad_ptrs: list[int], lr: float, lr_ptr: int, momentum: float,
        dampening: float, weight_decay: float, nesterov: bool, maximize: bool, step_values_ptr: int,
        num_threads: int, stream: int,
    ) -> None: ...

# Ghost batch norm (csrc/include/playbook/ghost_bn.h; called by python/playbook/nn/ghost_bn.py).
# (n, c, s, vbs, channels_last) describe the input (NOTE: [Ghost batch norm layout]); mean/m2/
# sdy/sdyx are [G, C] float64, save_mean [2, G, C] float32 (hi, lo), save_invstd [G, C] float32.
def ghost_bn_stats(
    device: int, n: int, c: int, s: int, vbs: int, channels_last: bool, dtype: int, x: int,
    mean: int, m2: int, num_threads: int, stream: int,
) -> None: ...
def ghost_bn_finalize(
    device: int, num_ghost: int, c: int, mean: int, m2: int, count: int, count_last: int,
    eps: float, momentum: float, num_batches_tracked: int, running_mean: int, running_var: int,
    save_mean: int, save_invstd: int, stream: int,
) -> None: ...
def ghost_bn_apply(
    device: int, n: int, c: int, s: int, vbs: int, channels_last: bool, dtype: int, x: int, y: int,
    save_mean: int, save_invstd: int, weight: int, bias: int, num_threads: int, stream: int,
) -> None: ...
def ghost_bn_backward_reduce(
    device: int, n: int, c: int, s: int, vbs: int, channels_last: bool, dtype: int, dy: int, x: int,
    save_mean: int, sdy: int, sdyx: int, num_threads: int, stream: int,
) -> None: ...
def ghost_bn_backward_apply(
    device: int, n: int, c: int, s: int, vbs: int, channels_last: bool, dtype: int, dy: int, x: int,
    save_mean: int, save_invstd: int, weight: int, sdy: int, sdyx: int, count: int,
    count_last: int, coefs: int, dx: int, num_threads: int, stream: int,
) -> None: ...
def ghost_bn_param_grads(
    device: int, num_ghost: int, c: int, sdy: int, sdyx: int, save_invstd: int, grad_weight: int,
    grad_bias: int, stream: int,
) -> None: ...
def ghost_bn_forward_train(
    device: int, n: int, c: int, s: int, vbs: int, channels_last: bool, dtype: int, x: int, y: int,
    weight: int, bias: int, eps: float, momentum: float, num_batches_tracked: int,
    running_mean: int, running_var: int, mean: int, m2: int, save_mean: int, save_invstd: int,
    num_threads: int, stream: int,
) -> None: ...
def ghost_bn_backward_train(
    device: int, n: int, c: int, s: int, vbs: int, channels_last: bool, dtype: int, dy: int, x: int,
    save_mean: int, save_invstd: int, weight: int, sdy: int, sdyx: int, dx: int, grad_weight: int,
    grad_bias: int, num_threads: int, stream: int,
) -> None: ...
def ghost_bn_merge(num_rows: int, c: int, rows: int, mean: int, m2: int) -> int: ...
