# Compile the CPU kernels once per SIMD level; csrc/cpu/dispatch.cpp picks one at run time.
#
# Each kernel source is compiled three times into namespaces playbook::cpu::{portable,avx2,avx512}
# (macro PLAYBOOK_CPU_ISA). No native-arch flag: the wheel must run on any x86-64, so only the
# kernels compiled for a level the CPU reports are ever called. No fast-math flag: it deletes NaN
# checks. -fno-math-errno lets sqrtf vectorize; -ffp-contract=off keeps every level bit-identical.
set(PLAYBOOK_SIMD_COMMON_FLAGS -O3 -fno-math-errno -ffp-contract=off -fno-trapping-math)

# Adds the per-level objects of `sources` to the sources of the existing target `target`.
function(playbook_add_simd_kernels target sources)
  set(_levels portable)
  if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64|amd64")
    list(APPEND _levels avx2 avx512)
  endif()
  foreach(level IN LISTS _levels)
    set(_lib ${target}_${level})
    add_library(${_lib} OBJECT ${sources})
    target_include_directories(${_lib} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/csrc/include ${CMAKE_CURRENT_SOURCE_DIR}/csrc)
    target_compile_definitions(${_lib} PRIVATE PLAYBOOK_CPU_ISA=${level})
    target_compile_options(${_lib} PRIVATE ${PLAYBOOK_SIMD_COMMON_FLAGS})
    set_target_properties(${_lib} PROPERTIES POSITION_INDEPENDENT_CODE ON CXX_STANDARD 17)
    if(level STREQUAL "avx2")
      target_compile_options(${_lib} PRIVATE -mavx2 -mfma -mf16c)
    elseif(level STREQUAL "avx512")
      target_compile_options(${_lib} PRIVATE -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx2 -mfma -mf16c -mprefer-vector-width=512)
    endif()
    target_sources(${target} PRIVATE $<TARGET_OBJECTS:${_lib}>)
  endforeach()
endfunction()
