// The chunk schedule a plan keeps for its params (NOTE: [Cached chunk schedule] in chunks.h).
#include "cpu/chunks.h"

#include <memory>
#include <vector>

#include "playbook/optim.h"

namespace playbook {
namespace cpu {

std::shared_ptr<const ChunkSchedule> chunk_schedule(const std::vector<TensorDesc>& tensors) {
  return std::make_shared<const ChunkSchedule>(make_schedule(tensors));
}

}  // namespace cpu
}  // namespace playbook
