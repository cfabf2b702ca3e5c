# Decide whether the CUDA kernels are compiled (PLAYBOOK_CUDA=AUTO|ON|OFF) and for which archs.
#
# AUTO compiles them whenever nvcc is found, which needs no GPU and no CUDA build of torch.
#
# NOTE: [CUDA toolkit choice]
# The kernels run on a driver only if it supports the CUDA major version of the toolkit that built
# them (CUDA 13.x needs driver >= 580, CUDA 12.x >= 525: NVIDIA's minor-version compatibility
# table); cudart is linked statically, so the toolkit alone decides. To serve the drivers the
# user's torch runs on, build with the toolkit of torch's CUDA major. It is picked, first match:
#   1. PLAYBOOK_CUDA_HOME (environment or -D): <dir>/bin/nvcc, headers and cudart from <dir>;
#   2. CUDACXX or -DCMAKE_CUDA_COMPILER (CMake's own variables);
#   3. nvcc on PATH, then /usr/local/cuda/bin/nvcc.
# PyPI's nvidia-cuda-nvcc-cu12 wheels hold only ptxas/libnvvm (no nvcc driver, cicc, cudafe++), so a
# CUDA 12 build needs a system CUDA 12 toolkit. python/playbook/_cuda.py checks at run time whether
# this build can serve a device and driver, and says how to fix it when not.
#
# Archs: SASS for sm_75 (T4), sm_80 (A100; also runs on sm_86/87/89) and sm_90 (H100), plus PTX for
# compute_90 (JIT on newer GPUs when the driver is at least as new as the toolkit), unless the user
# set CMAKE_CUDA_ARCHITECTURES.
set(PLAYBOOK_WITH_CUDA OFF)
set(PLAYBOOK_CUDA_HOME "$ENV{PLAYBOOK_CUDA_HOME}" CACHE PATH "CUDA toolkit to build the kernels with (bin/nvcc inside)")
if(NOT PLAYBOOK_CUDA STREQUAL "OFF")
  if(PLAYBOOK_CUDA_HOME)
    if(NOT EXISTS "${PLAYBOOK_CUDA_HOME}/bin/nvcc")
      message(FATAL_ERROR "PLAYBOOK_CUDA_HOME=${PLAYBOOK_CUDA_HOME} has no bin/nvcc; point it at a CUDA toolkit (the directory holding bin/nvcc)")
    endif()
    if(CMAKE_CUDA_COMPILER AND NOT CMAKE_CUDA_COMPILER STREQUAL "${PLAYBOOK_CUDA_HOME}/bin/nvcc")
      message(FATAL_ERROR "PLAYBOOK_CUDA_HOME=${PLAYBOOK_CUDA_HOME}, but this build directory was configured with ${CMAKE_CUDA_COMPILER}; delete the build directory (build/) and build again")
    endif()
    set(CMAKE_CUDA_COMPILER "${PLAYBOOK_CUDA_HOME}/bin/nvcc")
    set(CUDAToolkit_ROOT "${PLAYBOOK_CUDA_HOME}")
    if(NOT EXISTS "${PLAYBOOK_CUDA_HOME}/lib64" AND EXISTS "${PLAYBOOK_CUDA_HOME}/lib/libcudart_static.a")
      # The pip wheels' layout (site-packages/nvidia/cu13): lib/, where nvcc.profile says lib64/.
      # No unversioned libcudart.so either: name the versioned one for FindCUDAToolkit (the
      # extension links cudart_static; the shared library is only looked for).
      string(APPEND CMAKE_CUDA_FLAGS " -L${PLAYBOOK_CUDA_HOME}/lib")
      file(GLOB _playbook_cudart_so "${PLAYBOOK_CUDA_HOME}/lib/libcudart.so.*")
      if(_playbook_cudart_so AND NOT CUDA_CUDART)
        list(GET _playbook_cudart_so 0 _playbook_cudart_so)
        set(CUDA_CUDART "${_playbook_cudart_so}" CACHE FILEPATH "cudart (pip wheel layout)")
      endif()
    endif()
  elseif(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX})
    find_program(PLAYBOOK_NVCC nvcc HINTS /usr/local/cuda/bin)
    if(PLAYBOOK_NVCC)
      set(CMAKE_CUDA_COMPILER "${PLAYBOOK_NVCC}")
    endif()
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "")
      set(CMAKE_CUDA_ARCHITECTURES "75-real;80-real;90-real;90-virtual")
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(PLAYBOOK_WITH_CUDA ON)
    set(PLAYBOOK_CUDA_TOOLKIT_VERSION "${CMAKE_CUDA_COMPILER_VERSION}")
    message(STATUS "playbook: compiling CUDA kernels with ${CMAKE_CUDA_COMPILER} (CUDA ${CMAKE_CUDA_COMPILER_VERSION}) for ${CMAKE_CUDA_ARCHITECTURES}")
  elseif(PLAYBOOK_CUDA STREQUAL "ON")
    message(FATAL_ERROR "PLAYBOOK_CUDA=ON but no CUDA compiler (nvcc) was found")
  else()
    message(STATUS "playbook: nvcc not found, building the CPU path only")
  endif()
endif()
