"""Log-determinants read off factorizations: the pieces that the solvers' `logdet` methods share."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def slogdet_from_diagonal(d: jax.Array, sign: jax.Array | None = None):
    """`(sign, log|det|)` of a triangular factor with diagonal `d`, times a permutation's `sign`
    (±1). A zero on the diagonal gives `(0, -inf)`, as `jnp.linalg.slogdet` does; a NaN gives NaN."""
    d = jnp.asarray(d)
    absd = jnp.abs(d)
    logabsdet = jnp.sum(jnp.log(absd))
    if jnp.iscomplexobj(d):
        phase = jnp.prod(d / jnp.where(absd == 0, 1, absd).astype(d.dtype))
        # Back onto the unit circle after many products.
        phase = phase / jnp.abs(phase).astype(phase.dtype)
    else:
        phase = jnp.prod(jnp.sign(d))
    if sign is not None:
        phase = phase * sign.astype(phase.dtype)
    singular = jnp.any(absd == 0)
    phase = jnp.where(singular, 0, phase).astype(d.dtype)
    return phase, logabsdet


def pivot_sign(pivots: jax.Array, dtype) -> jax.Array:
    """The determinant (±1) of the row interchanges `pivots` of LAPACK's `getrf` (row `i` swapped
    with row `pivots[i]`): each actual swap flips the sign."""
    swaps = jnp.sum(pivots != jnp.arange(pivots.shape[0], dtype=pivots.dtype))
    return jnp.where(swaps % 2 == 0, 1, -1).astype(dtype)


def tridiagonal_slogdet(d: jax.Array, lower: jax.Array, upper: jax.Array):
    """`(sign, log|det|)` of the tridiagonal matrix with diagonal `d` (n,), subdiagonal `lower`
    (n-1,) and superdiagonal `upper` (n-1,), in O(n) work and O(log n) depth, never overflowing.

    The leading principal minors obey the continuant recurrence
    `θ_k = d_k θ_{k-1} - lower_{k-1} upper_{k-1} θ_{k-2}` (θ_{-1} = 1, θ_{-2} = 0), that is
    `(θ_k, θ_{k-1}) = T_k (θ_{k-1}, θ_{k-2})` with `T_k = [[d_k, -lower_{k-1} upper_{k-1}], [1, 0]]`,
    and `det A = θ_{n-1}`. The product `T_{n-1} ⋯ T_0` is formed by pairwise products (a tree), each
    2 x 2 partial product rescaled by a power of two so that its largest entry is about 1, with the
    logarithms of the scales summed aside. Unlike a `lax.scan` this is a few vectorised passes, and
    unlike the plain recurrence it cannot overflow (a zero pivot is no problem either: the minors are
    formed, not their ratios). Differentiable; the derivative costs O(n) too."""
    n = d.shape[0]
    dtype = jnp.result_type(d, lower, upper)
    real = jnp.finfo(dtype).dtype
    off = -(lower * upper).astype(dtype)
    top_right = jnp.concatenate([jnp.zeros((1,), dtype), off])
    one, zero = jnp.ones((n,), dtype), jnp.zeros((n,), dtype)
    # (n, 2, 2): the transfer matrices T_0 .. T_{n-1}.
    mats = jnp.stack([jnp.stack([d.astype(dtype), top_right], -1), jnp.stack([one, zero], -1)], -2)
    logscale = jnp.zeros((), real)
    mats, logscale = _rescale(mats, logscale)
    while mats.shape[0] > 1:
        if mats.shape[0] % 2:
            mats = jnp.concatenate([mats, jnp.eye(2, dtype=dtype)[None]])
        # T_{2i+1} @ T_{2i}: later factors on the left.
        mats = jnp.einsum("kij,kjl->kil", mats[1::2], mats[0::2])
        mats, logscale = _rescale(mats, logscale)
    theta = mats[0, 0, 0]
    absd = jnp.abs(theta)
    logabsdet = logscale + jnp.log(absd)
    if jnp.iscomplexobj(theta):
        sign = theta / jnp.where(absd == 0, 1, absd).astype(dtype)
    else:
        sign = jnp.sign(theta)
    return sign.astype(dtype), logabsdet.astype(real)


def _rescale(mats: jax.Array, logscale: jax.Array):
    """Divide each 2 x 2 matrix by the power of two nearest its largest entry (exactly, so no
    rounding), adding the total of the logarithms to `logscale`. The scales are constants for
    differentiation: the product they multiply back is what is differentiated."""
    big = jnp.max(jnp.abs(mats), axis=(-2, -1))
    exponent = jnp.where(
        (big > 0) & jnp.isfinite(big), jnp.round(jnp.log2(jnp.where(big > 0, big, 1))), 0
    )
    exponent = jax.lax.stop_gradient(exponent)
    # `ldexp` makes the power of two exactly (XLA's `exp2` is not exact on every platform), so
    # the rescaling adds no rounding, however many levels there are.
    real = jnp.finfo(mats.dtype).dtype
    scale = jnp.ldexp(jnp.ones_like(big, dtype=real), (-exponent).astype(jnp.int32))
    scale = scale.astype(mats.dtype)
    return mats * scale[:, None, None], logscale + jnp.sum(exponent).astype(
        logscale.dtype
    ) * jnp.log(jnp.asarray(2, logscale.dtype))


def inverse_transpose(solver, state, operator, options) -> jax.Array:
    """`A⁻ᵀ` as an `(out_size, in_size)` matrix (the layout of `operator.as_matrix()`), from one
    batched solve with the identity's columns through the solve primitive: it reuses `state`, and
    its derivative with respect to the operator is the pseudoinverse derivative, so a tangent
    built on it can be differentiated again."""
    from ..autodiff.primitive import bind_solve
    from ._misc import flat, unflat

    out_structure = operator.out_structure()
    dtype = jnp.result_type(*(s.dtype for s in jax.tree_util.tree_leaves(out_structure)))
    eye = jnp.eye(operator.out_size(), dtype=dtype)

    def column(e):  # A⁻¹ e
        value = bind_solve(operator, state, unflat(e, out_structure), options, solver, False)[0]
        return flat(value)

    return jax.vmap(column, out_axes=0)(eye)  # row j is (A⁻¹ e_j)ᵀ: the matrix is (A⁻¹)ᵀ


def pair(inverse_transpose: jax.Array, a_dot: jax.Array) -> jax.Array:
    """`tr(A⁻¹ A') = Σ_ij (A⁻ᵀ)_ij A'_ij` (no conjugation: the derivative of `log det` is
    holomorphic)."""
    dtype = jnp.result_type(inverse_transpose, a_dot)
    return jnp.sum(inverse_transpose.astype(dtype) * a_dot.astype(dtype))
