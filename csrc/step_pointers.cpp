// Collecting the param and grad pointers of an optimizer step in one C pass (NOTE: [Step pointers]).
#include "step_pointers.h"

#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

namespace py = pybind11;

namespace playbook {

// NOTE: [Step pointers]
// Every step needs, for each param of a plan, proof that its storage has not moved (the plan holds
// its data pointer and state pointers) and the data pointer of its grad, with proof that the grad
// is contiguous. In Python that is four calls into torch per param (p.data_ptr(), p.grad,
// g.is_contiguous(), g.data_ptr()), ~40 ns each on this project's CI machine, most of it the
// interpreter's attribute lookup and call dispatch rather than torch's work: for 400 small tensors
// about half of the whole step.
//
// StepPointers makes those calls from C, through the C functions behind torch's descriptors: the
// Python layer passes the descriptors themselves (torch.Tensor.__dict__ lookups of `grad`,
// `data_ptr`, `is_contiguous`; csrc knows no torch), and each call is the descriptor's own getter
// or method function applied to the tensor, exactly what `p.grad` or `g.data_ptr()` run, minus the
// lookup. Only objects whose type resolves all three names to these very descriptors take this
// path (torch.Tensor, nn.Parameter, and any subclass that does not override them; checked once per
// type); anything else goes through the ordinary Python call. Errors raised by torch propagate
// unchanged.
//
// collect() returns False if a param's data pointer differs from the plan's (its storage moved:
// the plan must be rebuilt), None if a grad is missing or not contiguous (the caller's checked
// path then rejects or handles it), and otherwise the grad pointers as a PtrList.

// NOTE: [Raw data pointer]
// torch exports, for the C++ code torch.compile generates for the CPU, a C function that returns a
// tensor's data pointer from its Python object without the Python call machinery:
// torch._C._dynamo.guards._torchinductor_pyobject_tensor_data_ptr is its address, a
// `void* (*)(PyObject*)` (torch/_inductor/codecache.py declares and calls it so, catching the
// std::exception it throws for a tensor without storage). The Python layer hands that address to
// StepPointers when this torch has it and a probe agrees with data_ptr() (optim/_base.py,
// _use_raw_data_ptr); it is then used for the param check and the grad pointers of the tensors
// that take the direct calls (a subclass overriding data_ptr still gets its override). That is
// half of the four torch calls per param: 51 -> 28 us for 400 params. Without it (an older or
// newer torch without the function), StepPointers calls data_ptr's own C function as before.
void init_step_pointers(py::module_& m) {
  static_assert(sizeof(long) == sizeof(int64_t), "pointers are read with PyLong_AsLong");
  py::class_<PtrList>(m, "PtrList", "Data pointers held in C++ (NOTE: [Step pointers] in csrc/step_pointers.cpp)")
      .def(py::init([](const std::vector<int64_t>& v) { return PtrList{v}; }), py::arg("ptrs"))
      .def("__len__", [](const PtrList& p) { return p.v.size(); })
      .def("__getitem__", [](const PtrList& p, py::ssize_t i) {
        const py::ssize_t n = static_cast<py::ssize_t>(p.v.size());
        if (i < 0) i += n;
        if (i < 0 || i >= n) throw py::index_error("PtrList index out of range");
        return p.v[static_cast<size_t>(i)];
      })
      .def("__iter__", [](const PtrList& p) { return py::make_iterator(p.v.begin(), p.v.end()); },
           py::keep_alive<0, 1>())
      .def("tolist", [](const PtrList& p) { return p.v; })
      .def("__repr__", [](const PtrList& p) { return "PtrList(" + std::to_string(p.v.size()) + " pointers)"; });
  py::class_<StepPointers>(m, "StepPointers", "Param and grad pointers of a step in one C pass (NOTE: [Step pointers])")
      .def(py::init<py::handle, py::handle, py::handle>(), py::arg("grad"), py::arg("data_ptr"),
           py::arg("is_contiguous"))
      .def("collect", &StepPointers::collect, py::arg("params"), py::arg("param_ptrs"),
           "False if a param's data pointer is not param_ptrs[i]; None if a grad is None or not "
           "contiguous; else the grads' data pointers (PtrList)")
      .def("direct", &StepPointers::direct, py::arg("obj"))
      .def("set_raw_data_ptr", &StepPointers::set_raw_data_ptr, py::arg("fn"))
      .def_property_readonly("has_raw_data_ptr", &StepPointers::has_raw_data_ptr);
}

}  // namespace playbook
