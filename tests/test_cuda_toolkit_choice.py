"""The build picks the CUDA toolkit as NOTE: [CUDA toolkit choice] says (cmake/PlaybookCUDA.cmake).

Each case configures the real CMakeLists.txt (configure only, no compile) in a temporary build
directory; needs cmake and an nvcc on the machine, as CI has.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
CMAKE = shutil.which("cmake")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(NVCC is None or CMAKE is None, reason="needs cmake and a CUDA toolkit (nvcc)"),
]


def _configure(tmp_path, env_extra, *defines):
    pybind11 = pytest.importorskip("pybind11", reason="configuring the project needs pybind11's CMake files")

    env = {k: v for k, v in os.environ.items() if k not in ("CUDACXX", "PLAYBOOK_CUDA_HOME")}
    env.update(env_extra)
    cmd = [
        CMAKE, "-S", str(ROOT), "-B", str(tmp_path / "build"),
        "-DSKBUILD_PROJECT_NAME=playbook", "-DSKBUILD_PROJECT_VERSION=0.1.0",
        f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", f"-DPython_EXECUTABLE={sys.executable}",
        *defines,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _toolkit_home():
    return str(Path(os.path.realpath(NVCC)).parent.parent)


def test_playbook_cuda_home_picks_that_toolkit(tmp_path):
    home = _toolkit_home()
    r = _configure(tmp_path, {"PLAYBOOK_CUDA_HOME": home}, f"-DPLAYBOOK_CUDA_HOME={home}")
    assert r.returncode == 0, r.stderr
    version = subprocess.run([f"{home}/bin/nvcc", "--version"], capture_output=True, text=True).stdout
    line = next(ln for ln in r.stdout.splitlines() if "playbook: compiling CUDA kernels" in ln)
    assert f"{home}/bin/nvcc" in line
    # "release 13.0, V13.0.88" -> the build records 13.0.88
    full = version.split(", V")[-1].split()[0]
    assert f"(CUDA {full})" in line and "75-real;80-real;90-real;90-virtual" in line


def test_playbook_cuda_home_without_nvcc_is_a_clear_error(tmp_path):
    bogus = tmp_path / "no-toolkit"
    bogus.mkdir()
    r = _configure(tmp_path, {}, f"-DPLAYBOOK_CUDA_HOME={bogus}")
    assert r.returncode != 0
    assert f"PLAYBOOK_CUDA_HOME={bogus} has no bin/nvcc" in " ".join(r.stderr.split())  # CMake wraps lines


def test_cuda_off_ignores_the_toolkit(tmp_path):
    r = _configure(tmp_path, {}, "-DPLAYBOOK_CUDA=OFF", f"-DPLAYBOOK_CUDA_HOME={tmp_path}")
    assert r.returncode == 0, r.stderr
    assert "compiling CUDA kernels" not in r.stdout
