// The run-time check of a solve with `throw=True`, as an XLA FFI handler for the CPU (built with
// sparse_kernels.cc into one library; see linopx/_native/__init__.py). It does what
// linopx/autodiff/_checks.py does with a `cond` and a Python callback elsewhere, without either:
// no Python, no GIL and no branch in the compiled program.
//
// Operands: `code` and `solver_code` (int32, the batch shape B of the solve: one leading axis per
// `vmap` level), then the inspected input arrays, each with one leading axis per level (of size 1
// where it is unbatched at that level) followed by the member's own `member_ndims[i]` axes. The
// first `n_operator` arrays belong to the operator, the rest to the right-hand side.
//
// When every member's `code` is `successful` (0) it returns at once: the inputs are not read. Else
// it classifies the first failed member (in row-major order), as `_diagnosis` in _checks.py does,
// and fails the program with "LinearSolveError: <message>", the message of that `RESULTS` code
// taken from `messages` (all of them, in code order, separated by '\x1e').

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Whether an IEEE value, read as its bits, is finite: its exponent is not all ones.
template <typename Bits>
bool all_finite_bits(const void* data, int64_t count, Bits exponent_mask) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  for (int64_t i = 0; i < count; ++i) {
    Bits v;
    std::memcpy(&v, p + i * sizeof(Bits), sizeof(Bits));
    if ((v & exponent_mask) == exponent_mask) return false;
  }
  return true;
}

// Whether `count` entries (of `type`) starting at entry `offset` are all finite. A complex entry is
// two reals. Types the check cannot read are never lowered to this handler (see _checks.py).
bool all_finite(ffi::DataType type, const void* data, int64_t offset, int64_t count) {
  const char* base = static_cast<const char*>(data);
  switch (type) {
    case ffi::DataType::F16:
      return all_finite_bits<uint16_t>(base + 2 * offset, count, 0x7C00u);
    case ffi::DataType::BF16:
      return all_finite_bits<uint16_t>(base + 2 * offset, count, 0x7F80u);
    case ffi::DataType::F32:
      return all_finite_bits<uint32_t>(base + 4 * offset, count, 0x7F800000u);
    case ffi::DataType::F64:
      return all_finite_bits<uint64_t>(base + 8 * offset, count, 0x7FF0000000000000ull);
    case ffi::DataType::C64:
      return all_finite_bits<uint32_t>(base + 8 * offset, 2 * count, 0x7F800000u);
    case ffi::DataType::C128:
      return all_finite_bits<uint64_t>(base + 16 * offset, 2 * count, 0x7FF0000000000000ull);
    default:
      return true;
  }
}

// The `index`-th message of `messages` ('\x1e'-separated).
std::string message_of(std::string_view messages, int64_t index) {
  size_t start = 0;
  for (int64_t i = 0; i < index; ++i) {
    size_t next = messages.find('\x1e', start);
    if (next == std::string_view::npos) return "failed with result code " + std::to_string(index);
    start = next + 1;
  }
  size_t end = messages.find('\x1e', start);
  return std::string(messages.substr(start, end == std::string_view::npos ? end : end - start));
}

ffi::Error check(ffi::Buffer<ffi::S32> code, ffi::Buffer<ffi::S32> solver_code,
                 ffi::RemainingArgs arrays, ffi::Result<ffi::Buffer<ffi::S32>> token,
                 int64_t n_operator, int64_t successful, int64_t nonfinite, int64_t singular,
                 ffi::Span<const int64_t> member_ndims, std::string_view messages) {
  token->typed_data()[0] = 0;
  const int32_t* c = code.typed_data();
  const int64_t members = static_cast<int64_t>(code.element_count());
  int64_t first = 0;
  while (first < members && c[first] == successful) ++first;
  if (first == members) return ffi::Error::Success();

  // The failed member's position along each batch axis.
  const auto batch = code.dimensions();
  const int64_t levels = static_cast<int64_t>(batch.size());
  int64_t position[64];
  if (levels > 64) return ffi::Error::InvalidArgument("linopx_check: too many batch levels");
  for (int64_t l = levels - 1, rest = first; l >= 0; --l) {
    position[l] = rest % batch[l];
    rest /= batch[l];
  }

  bool operator_ok = true, vector_ok = true;
  if (static_cast<int64_t>(arrays.size()) != static_cast<int64_t>(member_ndims.size())) {
    return ffi::Error::InvalidArgument("linopx_check: one member rank per inspected array");
  }
  for (size_t i = 0; i < arrays.size(); ++i) {
    auto array = arrays.get<ffi::AnyBuffer>(i);
    if (!array) return array.error();
    const auto dims = array->dimensions();
    const int64_t rank = static_cast<int64_t>(dims.size());
    if (rank != levels + member_ndims[i]) {
      return ffi::Error::InvalidArgument("linopx_check: an array's rank does not match");
    }
    int64_t block = 1;
    for (int64_t d = levels; d < rank; ++d) block *= dims[d];
    // The member's block: axes of size 1 are shared by every member at that level.
    int64_t offset = 0;
    for (int64_t l = 0; l < levels; ++l) offset = offset * dims[l] + (dims[l] == 1 ? 0 : position[l]);
    const bool ok = all_finite(array->element_type(), array->untyped_data(), offset * block, block);
    (static_cast<int64_t>(i) < n_operator ? operator_ok : vector_ok) &= ok;
  }

  const int32_t result = c[first];
  const int32_t solver_result = solver_code.typed_data()[first];
  const bool blames_matrix = solver_result != successful && solver_result != nonfinite;
  const bool nonfinite_input = !operator_ok || (!vector_ok && !blames_matrix);
  const int64_t diagnosis =
      nonfinite_input ? nonfinite : (result == nonfinite ? singular : result);
  return ffi::Error(ffi::ErrorCode::kFailedPrecondition,
                    "LinearSolveError: " + message_of(messages, diagnosis));
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LinopxCheck, check,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::S32>>()  // code
                                  .Arg<ffi::Buffer<ffi::S32>>()  // solver_code
                                  .RemainingArgs()               // the inspected arrays
                                  .Ret<ffi::Buffer<ffi::S32>>()  // token (0)
                                  .Attr<int64_t>("n_operator")
                                  .Attr<int64_t>("successful")
                                  .Attr<int64_t>("nonfinite")
                                  .Attr<int64_t>("singular")
                                  .Attr<ffi::Span<const int64_t>>("member_ndims")
                                  .Attr<std::string_view>("messages"));
