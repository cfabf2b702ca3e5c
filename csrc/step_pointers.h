// Per-step pointer lists of the optimizers (param and grad data_ptr()s) and their collection from
// the Python tensors in one C pass (csrc/step_pointers.cpp). Binding code: CPython, no torch.
#pragma once

#include <Python.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <exception>
#include <stdexcept>
#include <vector>

namespace playbook {

// A list of data pointers held in C++ (_C.PtrList): what StepPointers.collect returns, and what
// the plans' step functions read without converting Python ints (StepPtrs in bindings.cpp).
struct PtrList {
  std::vector<int64_t> v;
};

// The param and grad pointers of a step in one C pass (NOTE: [Step pointers] in step_pointers.cpp).
class StepPointers {
 public:
  StepPointers(pybind11::handle grad, pybind11::handle data_ptr, pybind11::handle is_contiguous)
      : grad_descr_(pybind11::reinterpret_borrow<pybind11::object>(grad)),
        data_ptr_descr_(pybind11::reinterpret_borrow<pybind11::object>(data_ptr)),
        is_contiguous_descr_(pybind11::reinterpret_borrow<pybind11::object>(is_contiguous)) {
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
    empty_ = pybind11::reinterpret_steal<pybind11::object>(PyTuple_New(0));
    if (!empty_) throw pybind11::error_already_set();
  }

  // Whether every param of the list has its storage where the plan has it (param_ptrs).
  bool params_in_place(const pybind11::list& params, const PtrList& param_ptrs) {
    PyObject* list = params.ptr();
    const Py_ssize_t n = PyList_GET_SIZE(list);
    if (static_cast<size_t>(n) != param_ptrs.v.size()) return false;
    for (Py_ssize_t i = 0; i < n; ++i) {
      if (pointer_of(PyList_GET_ITEM(list, i)) != param_ptrs.v[static_cast<size_t>(i)]) return false;
    }
    return true;
  }

  // The data pointer of param.grad in *out, or false if the grad is None or not contiguous.
  bool grad_pointer(PyObject* param, int64_t* out) {
    pybind11::object grad = grad_of(param);
    if (grad.is_none()) return false;
    pybind11::object contiguous = call(is_contiguous_, names()[2], grad.ptr());
    if (contiguous.ptr() != Py_True) return false;
    *out = pointer_of(grad.ptr());
    return true;
  }

  // False if a param moved (params_in_place), None if a grad is None or not contiguous, else the
  // grad pointers.
  pybind11::object collect(const pybind11::list& params, const PtrList& param_ptrs) {
    if (!params_in_place(params, param_ptrs)) return pybind11::bool_(false);
    PtrList out;
    out.v.resize(param_ptrs.v.size());
    for (size_t i = 0; i < out.v.size(); ++i) {
      if (!grad_pointer(PyList_GET_ITEM(params.ptr(), static_cast<Py_ssize_t>(i)), &out.v[i])) return pybind11::none();
    }
    return pybind11::cast(std::move(out));
  }

  // Use fn (an address) for data_ptr() of the tensors that take the direct calls: NOTE: [Raw data
  // pointer] in step_pointers.cpp. 0 turns it off.
  void set_raw_data_ptr(int64_t fn) { raw_data_ptr_ = reinterpret_cast<RawDataPtr>(static_cast<intptr_t>(fn)); }
  bool has_raw_data_ptr() const { return raw_data_ptr_ != nullptr; }

  // Whether obj's type takes the direct calls (for the tests).
  bool direct(pybind11::handle obj) { return fast_type(Py_TYPE(obj.ptr())); }

 private:
  // METH_FASTCALL | METH_KEYWORDS (CPython names this type differently across versions).
  using FastWithKeywords = PyObject* (*)(PyObject*, PyObject* const*, Py_ssize_t, PyObject*);

  struct Method {
    PyCFunction fn = nullptr;
    int flags = 0;
  };

  static Method method_of(pybind11::handle descr) {
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
    for (const pybind11::object& t : fast_types_) {
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
      fast_types_.push_back(pybind11::reinterpret_borrow<pybind11::object>(reinterpret_cast<PyObject*>(type)));
    }
    return true;
  }

  // self.<name>() through the descriptor's C function when self's type allows it, else an ordinary
  // method call (which finds a subclass's override).
  pybind11::object call(const Method& m, PyObject* name, PyObject* self) {
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
    if (r == nullptr) throw pybind11::error_already_set();
    return pybind11::reinterpret_steal<pybind11::object>(r);
  }

  pybind11::object grad_of(PyObject* self) {
    PyObject* r = fast_type(Py_TYPE(self)) ? grad_get_(self, grad_closure_) : PyObject_GetAttr(self, names()[0]);
    if (r == nullptr) throw pybind11::error_already_set();
    return pybind11::reinterpret_steal<pybind11::object>(r);
  }

  int64_t pointer_of(PyObject* self) {
    if (raw_data_ptr_ != nullptr && fast_type(Py_TYPE(self))) {
      try {
        return static_cast<int64_t>(reinterpret_cast<intptr_t>(raw_data_ptr_(self)));
      } catch (const std::exception& e) {  // torch's c10::Error (no storage, ...): RuntimeError
        throw std::runtime_error(e.what());
      }
    }
    pybind11::object r = call(data_ptr_, names()[1], self);
    const long x = PyLong_AsLong(r.ptr());  // a pointer is a two-digit int: NOTE in bindings.cpp's StepPtrs
    if (x == -1 && PyErr_Occurred()) throw pybind11::error_already_set();
    return static_cast<int64_t>(x);
  }

  using RawDataPtr = void* (*)(PyObject*);
  RawDataPtr raw_data_ptr_ = nullptr;
  pybind11::object grad_descr_, data_ptr_descr_, is_contiguous_descr_, empty_;
  getter grad_get_ = nullptr;
  void* grad_closure_ = nullptr;
  PyTypeObject* owner_ = nullptr;
  Method data_ptr_, is_contiguous_;
  static constexpr size_t kMaxFastTypes = 8;  // more checked types are looked up on every call
  std::vector<pybind11::object> fast_types_;
};

void init_step_pointers(pybind11::module_& m);

}  // namespace playbook
