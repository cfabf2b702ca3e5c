# Decide whether the CUDA kernels are compiled (PLAYBOOK_CUDA=AUTO|ON|OFF) and for which archs.
#
# AUTO compiles them whenever nvcc is found (on PATH, CUDACXX, or /usr/local/cuda/bin/nvcc), which
# needs no GPU and no CUDA build of torch. The arch list is sm_80 and sm_90 plus PTX for sm_90 (so
# newer GPUs JIT), unless the user set CMAKE_CUDA_ARCHITECTURES.
set(PLAYBOOK_WITH_CUDA OFF)
if(NOT PLAYBOOK_CUDA STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX})
    find_program(PLAYBOOK_NVCC nvcc HINTS /usr/local/cuda/bin)
    if(PLAYBOOK_NVCC)
      set(CMAKE_CUDA_COMPILER "${PLAYBOOK_NVCC}")
    endif()
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "")
      set(CMAKE_CUDA_ARCHITECTURES "80-real;90-real;90-virtual")
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(PLAYBOOK_WITH_CUDA ON)
    message(STATUS "playbook: compiling CUDA kernels with ${CMAKE_CUDA_COMPILER} for ${CMAKE_CUDA_ARCHITECTURES}")
  elseif(PLAYBOOK_CUDA STREQUAL "ON")
    message(FATAL_ERROR "PLAYBOOK_CUDA=ON but no CUDA compiler (nvcc) was found")
  else()
    message(STATUS "playbook: nvcc not found, building the CPU path only")
  endif()
endif()
