import pytest
import torch

CUDA_OK = torch.cuda.is_available()


def _cuda_build() -> bool:
    try:
        import playbook

        return playbook.build_info()["cuda"]
    except Exception:
        return False


requires_cuda = pytest.mark.skipif(
    not (CUDA_OK and _cuda_build()),
    reason="needs a CUDA GPU and a build with the CUDA kernels",
)

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, requires_cuda])]


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
