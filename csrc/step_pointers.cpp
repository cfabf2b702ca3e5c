// Collecting the param and grad pointers of an optimizer step in one C pass (NOTE: [Step pointers]).
#include "step_pointers.h"

#include <Python.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

namespace py = pybind11;

namespace playbook {
namespace {

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
class StepPointers {
 public:
  StepPointers(py::handle grad, py::handle data_ptr, py::handle is_contiguous)
      : grad_descr_(py::reinterpret_borrow<py::object>(grad)),
        data_ptr_descr_(py::reinterpret_borrow<py::object>(data_ptr)),
        is_contiguous_descr_(py::reinterpret_borrow<py::object>(is_contiguous)) {
    if (PyObject_TypeCheck(grad.ptr(), &PyGetSetDescr_Type)) {
      auto* d = reinterpret_cast<PyGetSetDescrObject*>(grad.ptr());
      if (d->d_getset != nullptr && d->d_getset->get != nullptr) {
        grad_get_ = d->d_getset->get;
        grad_closure_ = d->d_getset->closure;
        owner_ = d->d_common.d_type;
      }
    }
    data_ptr_ = method_of(data_ptr);
    is_contiguous_ = method_of(is_contiguous);
    empty_ = py::reinterpret_steal<py::object>(PyTuple_New(0));
    if (!empty_) throw py::error_already_set();
  }

  py::object collect(const py::list& params, const PtrList& param_ptrs) {
    PyObject* list = params.ptr();
    const Py_ssize_t n = PyList_GET_SIZE(list);
    if (static_cast<size_t>(n) != param_ptrs.v.size()) return py::bool_(false);
    for (Py_ssize_t i = 0; i < n; ++i) {  // storage of every param where the plan has it
      if (pointer_of(PyList_GET_ITEM(list, i)) != param_ptrs.v[static_cast<size_t>(i)]) return py::bool_(false);
    }
    PtrList out;
    out.v.resize(static_cast<size_t>(n));
    for (Py_ssize_t i = 0; i < n; ++i) {
      py::object grad = grad_of(PyList_GET_ITEM(list, i));
      if (grad.is_none()) return py::none();
      py::object contiguous = call(is_contiguous_, names()[2], grad.ptr());
      if (contiguous.ptr() != Py_True) return py::none();
      out.v[static_cast<size_t>(i)] = pointer_of(grad.ptr());
    }
    return py::cast(std::move(out));
  }

  // Whether obj's type takes the direct calls (for the tests).
  bool direct(py::handle obj) { return fast_type(Py_TYPE(obj.ptr())); }

 private:
  // METH_FASTCALL | METH_KEYWORDS (CPython names this type differently across versions).
  using FastWithKeywords = PyObject* (*)(PyObject*, PyObject* const*, Py_ssize_t, PyObject*);

  struct Method {
    PyCFunction fn = nullptr;
    int flags = 0;
  };

  static Method method_of(py::handle descr) {
    Method m;
    if (!PyObject_TypeCheck(descr.ptr(), &PyMethodDescr_Type)) return m;
    const PyMethodDef* def = reinterpret_cast<PyMethodDescrObject*>(descr.ptr())->d_method;
    const int flags = def->ml_flags & ~(METH_CLASS | METH_STATIC | METH_COEXIST);
    if (flags == METH_NOARGS || flags == (METH_VARARGS | METH_KEYWORDS) ||
        flags == (METH_FASTCALL | METH_KEYWORDS)) {
      m.fn = def->ml_meth;
      m.flags = flags;
    }
    return m;
  }

  // "grad", "data_ptr", "is_contiguous", interned.
  static PyObject* const* names() {
    static PyObject* const n[3] = {PyUnicode_InternFromString("grad"), PyUnicode_InternFromString("data_ptr"),
                                   PyUnicode_InternFromString("is_contiguous")};
    return n;
  }

  // Whether objects of this type may be handed to the descriptors' C functions directly.
  bool fast_type(PyTypeObject* type) {
    for (const py::object& t : fast_types_) {
      if (t.ptr() == reinterpret_cast<PyObject*>(type)) return true;
    }
    if (grad_get_ == nullptr || data_ptr_.fn == nullptr || is_contiguous_.fn == nullptr) return false;
    if (!PyType_IsSubtype(type, owner_)) return false;
    PyObject* const* name = names();
    PyObject* descrs[3] = {grad_descr_.ptr(), data_ptr_descr_.ptr(), is_contiguous_descr_.ptr()};
    for (int k = 0; k < 3; ++k) {
      if (_PyType_Lookup(type, name[k]) != descrs[k]) return false;  // overridden: ordinary calls
    }
    if (fast_types_.size() < kMaxFastTypes) {
      fast_types_.push_back(py::reinterpret_borrow<py::object>(reinterpret_cast<PyObject*>(type)));
    }
    return true;
  }

  // self.<name>() through the descriptor's C function when self's type allows it, else an ordinary
  // method call (which finds a subclass's override).
  py::object call(const Method& m, PyObject* name, PyObject* self) {
    PyObject* r;
    if (fast_type(Py_TYPE(self))) {
      if (m.flags == METH_NOARGS) {
        r = m.fn(self, nullptr);
      } else if (m.flags == (METH_VARARGS | METH_KEYWORDS)) {
        r = reinterpret_cast<PyCFunctionWithKeywords>(reinterpret_cast<void (*)(void)>(m.fn))(self, empty_.ptr(), nullptr);
      } else {
        r = reinterpret_cast<FastWithKeywords>(reinterpret_cast<void (*)(void)>(m.fn))(self, nullptr, 0, nullptr);
      }
    } else {
      r = PyObject_CallMethodNoArgs(self, name);
    }
    if (r == nullptr) throw py::error_already_set();
    return py::reinterpret_steal<py::object>(r);
  }

  py::object grad_of(PyObject* self) {
    PyObject* r = fast_type(Py_TYPE(self)) ? grad_get_(self, grad_closure_) : PyObject_GetAttr(self, names()[0]);
    if (r == nullptr) throw py::error_already_set();
    return py::reinterpret_steal<py::object>(r);
  }

  int64_t pointer_of(PyObject* self) {
    py::object r = call(data_ptr_, names()[1], self);
    const long x = PyLong_AsLong(r.ptr());  // a pointer is a two-digit int: NOTE in bindings.cpp's StepPtrs
    if (x == -1 && PyErr_Occurred()) throw py::error_already_set();
    return static_cast<int64_t>(x);
  }

  py::object grad_descr_, data_ptr_descr_, is_contiguous_descr_, empty_;
  getter grad_get_ = nullptr;
  void* grad_closure_ = nullptr;
  PyTypeObject* owner_ = nullptr;
  Method data_ptr_, is_contiguous_;
  static constexpr size_t kMaxFastTypes = 8;  // more checked types are looked up on every call
  std::vector<py::object> fast_types_;
};

}  // namespace

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
      .def("__eq__", [](const PtrList& a, const PtrList& b) { return a.v == b.v; })
      .def("tolist", [](const PtrList& p) { return p.v; })
      .def("__repr__", [](const PtrList& p) { return "PtrList(" + std::to_string(p.v.size()) + " pointers)"; })
      .def_static("concat", [](const std::vector<const PtrList*>& parts) {
        PtrList out;
        for (const PtrList* p : parts) out.v.insert(out.v.end(), p->v.begin(), p->v.end());
        return out;
      }, py::arg("parts"));
  py::class_<StepPointers>(m, "StepPointers", "Param and grad pointers of a step in one C pass (NOTE: [Step pointers])")
      .def(py::init<py::handle, py::handle, py::handle>(), py::arg("grad"), py::arg("data_ptr"),
           py::arg("is_contiguous"))
      .def("collect", &StepPointers::collect, py::arg("params"), py::arg("param_ptrs"),
           "False if a param's data pointer is not param_ptrs[i]; None if a grad is None or not "
           "contiguous; else the grads' data pointers (PtrList)")
      .def("direct", &StepPointers::direct, py::arg("obj"));
}

}  // namespace playbook
