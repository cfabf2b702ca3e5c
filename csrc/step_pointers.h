// Per-step pointer lists of the optimizers (param and grad data_ptr()s) and their collection from
// the Python tensors in one C pass (csrc/step_pointers.cpp). Binding code: CPython, no torch.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <vector>

namespace playbook {

// A list of data pointers held in C++ (_C.PtrList): what StepPointers.collect returns, and what
// the plans' step functions read without converting Python ints (StepPtrs in bindings.cpp).
struct PtrList {
  std::vector<int64_t> v;
};

void init_step_pointers(pybind11::module_& m);

}  // namespace playbook
