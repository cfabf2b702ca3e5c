// playbook/check.h: PLAYBOOK_CHECK(cond, msg...) throws with file:line and the message.
//
// pybind11 maps playbook::ValueError to Python's ValueError and std::runtime_error to
// RuntimeError, so a failed check surfaces as a clear Python exception.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace playbook {

class ValueError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {
inline void stream_all(std::ostringstream&) {}
template <typename T, typename... Rest>
inline void stream_all(std::ostringstream& os, const T& first, const Rest&... rest) {
  os << first;
  stream_all(os, rest...);
}
template <typename... Args>
[[noreturn]] inline void throw_value_error(const char* file, int line, const char* cond, const Args&... args) {
  std::ostringstream os;
  stream_all(os, args...);
  os << " [" << file << ":" << line << ", check '" << cond << "' failed]";
  throw ValueError(os.str());
}
}  // namespace detail

}  // namespace playbook

#define PLAYBOOK_CHECK(cond, ...)                                                   \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      ::playbook::detail::throw_value_error(__FILE__, __LINE__, #cond, __VA_ARGS__); \
    }                                                                               \
  } while (0)
