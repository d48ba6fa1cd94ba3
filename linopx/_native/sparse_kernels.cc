// Sparse matrix-vector products for linopx's SparseCOOLinearOperator, as an XLA FFI handler for
// the CPU. Built on first use by linopx/_native/__init__.py against the headers of the installed
// jaxlib (`jax.ffi.include_dir()`); when it cannot be built the product stays in XLA.
//
// One handler, `linopx_spmv`, computes y = A x for a matrix with `nnz` stored entries, in one of
// three forms chosen by the attribute `form`:
//
//   0  row-compressed, gather:     `a` = row pointers (m + 1), `b` = column indices (nnz);
//                                   y[i] = sum_{k in a[i] .. a[i+1]} data[k] x[b[k]].
//   1  column-compressed, scatter: `a` = column pointers (n + 1), `b` = row indices (nnz);
//                                   y[b[k]] += data[k] x[j] for k in a[j] .. a[j+1].
//                                   (The transpose of a row-compressed matrix, same arrays.)
//   2  row-compressed, permuted:   as form 0, with the values read through the permutation `c`
//                                   (nnz): y[i] = sum_k data[c[k]] x[b[k]] (entries in no order).
//
// `c` is empty for forms 0 and 1. Batches: `data` has shape (Bd..., nnz) and `x` (Bx..., n); `y`
// has shape (B..., m) with B the batch of the output. Each of `data` and `x` is either unbatched
// (read by every member) or has the output's whole batch. Entries are summed in storage order,
// on one thread, so a result does not depend on the machine's cores.

#include <complex>
#include <cstdint>
#include <cstring>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Complex products written out: without -ffast-math, std::complex's operator* handles infinities
// and NaNs as C99 Annex G asks, through a library call (GCC's __muldc3) when the plain formula
// gives NaN. The written-out product is the plain formula.
template <typename T>
inline T mul(T a, T b) {
  return a * b;
}
template <typename R>
inline std::complex<R> mul(std::complex<R> a, std::complex<R> b) {
  return std::complex<R>(a.real() * b.real() - a.imag() * b.imag(),
                         a.real() * b.imag() + a.imag() * b.real());
}

template <typename T, typename I>
void product(int64_t form, const I* __restrict__ a, const I* __restrict__ b,
             const I* __restrict__ c, const T* __restrict__ data, const T* __restrict__ x,
             T* __restrict__ y, int64_t m, int64_t n) {
  if (form == 0) {
    for (int64_t i = 0; i < m; ++i) {
      T acc = T(0);
      for (I k = a[i]; k < a[i + 1]; ++k) acc += mul(data[k], x[b[k]]);
      y[i] = acc;
    }
  } else if (form == 2) {
    for (int64_t i = 0; i < m; ++i) {
      T acc = T(0);
      for (I k = a[i]; k < a[i + 1]; ++k) acc += mul(data[c[k]], x[b[k]]);
      y[i] = acc;
    }
  } else {
    std::memset(static_cast<void*>(y), 0, sizeof(T) * m);
    for (int64_t j = 0; j < n; ++j) {
      const T xj = x[j];
      for (I k = a[j]; k < a[j + 1]; ++k) y[b[k]] += mul(data[k], xj);
    }
  }
}

template <typename T, typename I>
ffi::Error run(int64_t form, ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::AnyBuffer c,
               ffi::AnyBuffer data,
               ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y, int64_t m, int64_t n) {
  const int64_t nnz = static_cast<int64_t>(b.element_count());
  const int64_t y_count = static_cast<int64_t>(y->element_count());
  if (m == 0 || y_count == 0) return ffi::Error::Success();
  const int64_t batch = y_count / m;
  const int64_t d_count = static_cast<int64_t>(data.element_count());
  const int64_t x_count = static_cast<int64_t>(x.element_count());
  // Each operand is either unbatched or has the whole batch (stride 0 or one member).
  const int64_t d_stride = (d_count == nnz) ? 0 : nnz;
  const int64_t x_stride = (x_count == n) ? 0 : n;
  if (d_count != nnz && d_count != batch * nnz) {
    return ffi::Error::InvalidArgument("linopx_spmv: data's batch does not match the output's");
  }
  if (x_count != n && x_count != batch * n) {
    return ffi::Error::InvalidArgument("linopx_spmv: x's batch does not match the output's");
  }
  const I* pa = static_cast<const I*>(a.untyped_data());
  const I* pb = static_cast<const I*>(b.untyped_data());
  const I* pc = static_cast<const I*>(c.untyped_data());
  const T* pd = static_cast<const T*>(data.untyped_data());
  const T* px = static_cast<const T*>(x.untyped_data());
  T* py = static_cast<T*>(y->untyped_data());
  for (int64_t s = 0; s < batch; ++s) {
    product<T, I>(form, pa, pb, pc, pd + s * d_stride, px + s * x_stride, py + s * m, m, n);
  }
  return ffi::Error::Success();
}

template <typename I>
ffi::Error by_value_type(int64_t form, ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::AnyBuffer c,
                         ffi::AnyBuffer data,
                         ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y, int64_t m, int64_t n) {
  switch (data.element_type()) {
    case ffi::DataType::F32:
      return run<float, I>(form, a, b, c, data, x, y, m, n);
    case ffi::DataType::F64:
      return run<double, I>(form, a, b, c, data, x, y, m, n);
    case ffi::DataType::C64:
      return run<std::complex<float>, I>(form, a, b, c, data, x, y, m, n);
    case ffi::DataType::C128:
      return run<std::complex<double>, I>(form, a, b, c, data, x, y, m, n);
    default:
      return ffi::Error::InvalidArgument(
          "linopx_spmv: values must be float32/64 or complex64/128");
  }
}

ffi::Error spmv(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::AnyBuffer c, ffi::AnyBuffer data,
                ffi::AnyBuffer x,
                ffi::Result<ffi::AnyBuffer> y, int64_t form, int64_t m, int64_t n) {
  if (form < 0 || form > 2) return ffi::Error::InvalidArgument("linopx_spmv: unknown form");
  if (data.element_type() != x.element_type() || data.element_type() != y->element_type()) {
    return ffi::Error::InvalidArgument("linopx_spmv: data, x and y must share one dtype");
  }
  if (a.element_type() != b.element_type()) {
    return ffi::Error::InvalidArgument("linopx_spmv: index arrays must share one dtype");
  }
  switch (a.element_type()) {
    case ffi::DataType::S32:
      return by_value_type<int32_t>(form, a, b, c, data, x, y, m, n);
    case ffi::DataType::S64:
      return by_value_type<int64_t>(form, a, b, c, data, x, y, m, n);
    default:
      return ffi::Error::InvalidArgument("linopx_spmv: indices must be int32 or int64");
  }
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LinopxSpmv, spmv,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // a
                                  .Arg<ffi::AnyBuffer>()  // b
                                  .Arg<ffi::AnyBuffer>()  // c
                                  .Arg<ffi::AnyBuffer>()  // data
                                  .Arg<ffi::AnyBuffer>()  // x
                                  .Ret<ffi::AnyBuffer>()  // y
                                  .Attr<int64_t>("form")
                                  .Attr<int64_t>("m")
                                  .Attr<int64_t>("n"));
