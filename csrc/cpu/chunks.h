// Splitting tensor lists into fixed-size chunks (driver side; not compiled per ISA).
#pragma once

#include <cstddef>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/parallel.h"
#include "playbook/tensor.h"

namespace playbook {
namespace cpu {

inline std::vector<Chunk> make_chunks(const std::vector<TensorDesc>& tensors) {
  std::vector<Chunk> chunks;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    for (int64_t b = 0; b < tensors[i].numel; b += kChunkSize) {
      const int64_t size = tensors[i].numel - b < kChunkSize ? tensors[i].numel - b : kChunkSize;
      chunks.push_back(Chunk{static_cast<int32_t>(i), b, size});
    }
  }
  return chunks;
}

// Address of element `offset` of tensor t.
inline void* element_ptr(const TensorDesc& t, int64_t offset) {
  return static_cast<char*>(t.data) + offset * dtype_size(t.dtype);
}

// Chunks below this many elements in total run on the calling thread only: waking the pool
// costs more than the work.
constexpr int64_t kMinParallelElements = 1 << 19;

inline int threads_for(int64_t total_elements, int num_threads) {
  return total_elements < kMinParallelElements ? 1 : num_threads;
}

inline int64_t total_numel(const std::vector<TensorDesc>& tensors) {
  int64_t n = 0;
  for (const TensorDesc& t : tensors) n += t.numel;
  return n;
}

// Runs fn(chunk) for every chunk of `tensors` on the pool (small problems on the calling thread).
template <typename Fn>
void for_each_chunk(const std::vector<TensorDesc>& tensors, int num_threads, const Fn& fn) {
  const std::vector<Chunk> chunks = make_chunks(tensors);
  parallel_for(static_cast<int64_t>(chunks.size()), threads_for(total_numel(tensors), num_threads),
               [&](int64_t c) { fn(chunks[static_cast<size_t>(c)]); });
}

}  // namespace cpu
}  // namespace playbook
