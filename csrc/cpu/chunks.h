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
  chunks.reserve(tensors.size());
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
  items.reserve(chunks.size());
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

// NOTE: [Cached chunk schedule]
// A step over a tensor list first cuts it into chunks and packs them into work items, for the norm
// and again for the update: for 400 small tensors, vectors grown element by element on every step.
// It depends only on the numels, which a
// plan (csrc/bindings.cpp) fixes for its lifetime, so a plan builds the schedule of its params once
// (chunk_schedule) and passes it with every step in which all its params have a grad. The
// drivers check that a schedule they are given was built for the same numels, and build one
// themselves when none is given: the chunks, items and results are the same either way.
struct ChunkSchedule {
  std::vector<int64_t> numels;      // of the tensor list it was built for
  std::vector<Chunk> chunks;
  std::vector<ChunkRange> items;    // NOTE: [Packed work items]
  int64_t total = 0;                // elements
};

inline ChunkSchedule make_schedule(const std::vector<TensorDesc>& tensors) {
  ChunkSchedule s;
  s.numels.reserve(tensors.size());
  for (const TensorDesc& t : tensors) s.numels.push_back(t.numel);
  s.chunks = make_chunks(tensors);
  s.items = pack_chunks(s.chunks);
  s.total = total_numel(tensors);
  return s;
}

inline bool schedule_matches(const ChunkSchedule& s, const std::vector<TensorDesc>& tensors) {
  if (s.numels.size() != tensors.size()) return false;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    if (s.numels[i] != tensors[i].numel) return false;
  }
  return true;
}

// `cached` if it was built for these tensors (else a fresh schedule in *fresh).
inline const ChunkSchedule& schedule_for(const std::vector<TensorDesc>& tensors, const ChunkSchedule* cached,
                                         ChunkSchedule* fresh) {
  if (cached != nullptr && schedule_matches(*cached, tensors)) return *cached;
  *fresh = make_schedule(tensors);
  return *fresh;
}

// Runs fn(c) for every chunk index c of the schedule (its packed items) on the pool, or on the
// calling thread for small problems.
template <typename Fn>
void for_each_chunk_index(const ChunkSchedule& s, int num_threads, const Fn& fn) {
  const int threads = threads_for(s.total, num_threads);
  if (threads == 1) {
    for (std::size_t c = 0; c < s.chunks.size(); ++c) fn(c);
    return;
  }
  parallel_for(static_cast<int64_t>(s.items.size()), threads, [&](int64_t it) {
    const ChunkRange& item = s.items[static_cast<std::size_t>(it)];
    for (std::size_t c = item.first; c < item.last; ++c) fn(c);
  });
}

// Runs fn(chunk) for every chunk of `tensors` (NOTE: [Packed work items]), with the plan's
// schedule when it has one for them (NOTE: [Cached chunk schedule]).
template <typename Fn>
void for_each_chunk(const std::vector<TensorDesc>& tensors, const ChunkSchedule* cached, int num_threads,
                    const Fn& fn) {
  ChunkSchedule fresh;
  const ChunkSchedule& s = schedule_for(tensors, cached, &fresh);
  for_each_chunk_index(s, num_threads, [&](std::size_t c) { fn(s.chunks[c]); });
}

}  // namespace cpu
}  // namespace playbook
