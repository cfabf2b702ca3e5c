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

// Chunks below this many elements in total run on the calling thread only: below it, the fork and
// join of the (OpenMP) pool cost about what a second thread saves. Measured for a whole Adam + clip
// step on this project's 2-core VM, 2 threads vs 1: 0.88x / 0.99x the time at 32K elements in 8 /
// 400 tensors, 0.74x / 0.84x at 64K, 0.56x / 0.66x at 512K.
constexpr int64_t kMinParallelElements = 1 << 16;

inline int threads_for(int64_t total_elements, int num_threads) {
  return total_elements < kMinParallelElements ? 1 : num_threads;
}

inline int64_t total_numel(const std::vector<TensorDesc>& tensors) {
  int64_t n = 0;
  for (const TensorDesc& t : tensors) n += t.numel;
  return n;
}

// NOTE: [Packed work items]
// Consecutive chunks are packed into one work item until the item holds kChunkSize elements, so
// a list of many small tensors is handed out to the threads in pieces as large as one chunk of
// a large tensor (one small tensor per item made the pool's hand-out cost more than the work).
// Packing changes only which thread runs a chunk, never a chunk's boundaries or its result.
struct ChunkRange {
  std::size_t first, last;  // chunks [first, last)
};

inline std::vector<ChunkRange> pack_chunks(const std::vector<Chunk>& chunks) {
  std::vector<ChunkRange> items;
  std::size_t c = 0;
  while (c < chunks.size()) {
    ChunkRange item{c, c + 1};
    int64_t size = chunks[c].size;
    while (item.last < chunks.size() && size + chunks[item.last].size <= kChunkSize) {
      size += chunks[item.last].size;
      ++item.last;
    }
    items.push_back(item);
    c = item.last;
  }
  return items;
}

// Runs fn(c) for every chunk index c of `chunks` (packed into items) on the pool, or on the
// calling thread for small problems.
template <typename Fn>
void for_each_chunk_index(const std::vector<Chunk>& chunks, int64_t total_elements, int num_threads,
                          const Fn& fn) {
  const int threads = threads_for(total_elements, num_threads);
  if (threads == 1) {
    for (std::size_t c = 0; c < chunks.size(); ++c) fn(c);
    return;
  }
  const std::vector<ChunkRange> items = pack_chunks(chunks);
  parallel_for(static_cast<int64_t>(items.size()), threads, [&](int64_t it) {
    const ChunkRange& item = items[static_cast<std::size_t>(it)];
    for (std::size_t c = item.first; c < item.last; ++c) fn(c);
  });
}

// Runs fn(chunk) for every chunk of `tensors` (NOTE: [Packed work items]).
template <typename Fn>
void for_each_chunk(const std::vector<TensorDesc>& tensors, int num_threads, const Fn& fn) {
  const std::vector<Chunk> chunks = make_chunks(tensors);
  for_each_chunk_index(chunks, total_numel(tensors), num_threads,
                       [&](std::size_t c) { fn(chunks[c]); });
}

}  // namespace cpu
}  // namespace playbook
