"""Triton matmul that accumulates into an fp32 output in place: ``C += A @ B``.

Used by the ``split`` backward to add ``dz @ W`` and ``dz.T @ h`` into fp32 gradient
buffers without an fp32 copy of the operands and without atomics: every program owns
one ``BLOCK_M x BLOCK_N`` tile of ``C``, loads it, adds its dot products in fp32
and stores it back. Programs are grouped along M so neighbouring tiles reuse the
same ``B`` panel from L2. Operands may be any strided views (``dz.T`` is one). With ``GATHER_B_ROWS``, row
``k`` of ``B`` is row ``b_rows[k]`` of the ``b`` tensor (the hidden rows of kept tokens, for ``dz.T @ h``).
"""
import triton
import triton.language as tl

from .vocab_stats_fwd import tile_dot


@triton.jit
def matmul_acc_kernel(
    a_ptr, b_ptr, b_rows_ptr, c_ptr,
    M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    GATHER_B_ROWS: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    group_size = GROUP_M * tiles_n
    first_m = (pid // group_size) * GROUP_M
    rows_in_group = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group_size) % rows_in_group
    pid_n = (pid % group_size) // rows_in_group

    rm = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rn = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    m_mask = rm < M
    n_mask = rn < N
    c_ptrs = c_ptr + rm[:, None] * stride_cm + rn[None, :] * stride_cn
    c_mask = m_mask[:, None] & n_mask[None, :]
    acc = tl.load(c_ptrs, mask=c_mask, other=0.0)
    next_b_rows = tl.arange(0, BLOCK_K)
    if GATHER_B_ROWS:
        next_b_rows = tl.load(b_rows_ptr + next_b_rows, mask=next_b_rows < K, other=0)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_mask = rk < K
        a = tl.load(a_ptr + rm[:, None] * stride_am + rk[None, :] * stride_ak,
                    mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        b_rk = rk
        if GATHER_B_ROWS:
            b_rk = next_b_rows
            # the next tile's rows, loaded an iteration ahead: B's address then depends on no load of its own
            # iteration, and the software pipeline keeps all its stages (as without the gather)
            next_b_rows = tl.load(b_rows_ptr + rk + BLOCK_K, mask=rk + BLOCK_K < K, other=0)
        b = tl.load(b_ptr + b_rk[:, None] * stride_bk + rn[None, :] * stride_bn,
                    mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc = tile_dot(a, b, acc, DOT_PRECISION)
    tl.store(c_ptrs, acc, mask=c_mask)
