"""Host side of the Triton backward: the ``split`` and ``atomic`` strategies.

Both recompute logits tile by tile from the saved lse (``logit_grad.logit_grad_tile``)
and accumulate the hidden and weight gradients in fp32. Extra memory stays bounded:
the hidden gradient is accumulated one token chunk at a time (at most
``FP32_CHUNK_BYTES`` of fp32), and ``split`` keeps one ``[tokens, vocab]`` chunk of
``dz`` in the input dtype (at most ``DZ_CHUNK_BYTES``).

- ``split`` (default): per (token chunk, vocab chunk), one kernel writes ``dz``, then
  ``matmul_acc`` adds ``dz @ W_chunk`` into the hidden gradient and ``dz.T @ h_chunk``
  into the weight gradient. No atomics; the matmuls are plain tiled GEMMs.
- ``atomic``: one fused kernel per token chunk; each tile adds its two products into
  the outputs with fp32 atomics (no ``dz`` buffer, but ``N·V·H·(1/BLOCK_N + 1/BLOCK_V)`` atomic adds).

``FUSEDRL_TRITON_BACKWARD`` selects the strategy (read at every call, so benchmarks can compare).
When the problem keeps only some tokens (``token_rows``), the kernels read those hidden rows in place and each
chunk's hidden gradient is scattered back to them.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple

import torch
import triton

from ..stats import LinearVocabProblem, StatsGrad, gradient_buffers
from .launch_config import (
    MatmulConfig, TileConfig, dot_precision, interpreter_active, matmul_config, scalar_args, tile_config,
)
from .logit_grad import logit_grad_store_kernel
from .matmul_acc import matmul_acc_kernel
from .vocab_stats_bwd import vocab_stats_bwd_kernel

BACKWARD_ENV = "FUSEDRL_TRITON_BACKWARD"
BACKWARD_STRATEGIES = ("split", "atomic")
FP32_CHUNK_BYTES = 32 << 20
DZ_CHUNK_BYTES = 32 << 20


def backward_strategy() -> str:
    """The strategy named by ``FUSEDRL_TRITON_BACKWARD`` (default ``split``)."""
    value = os.environ.get(BACKWARD_ENV, "split")
    if value not in BACKWARD_STRATEGIES:
        raise ValueError(f"{BACKWARD_ENV}={value!r}: expected one of {', '.join(BACKWARD_STRATEGIES)}")
    return value


def _round_down(value: int, multiple: int) -> int:
    return max(multiple, value // multiple * multiple)


def _round_up(value: int, multiple: int) -> int:
    return triton.cdiv(value, multiple) * multiple


class ChunkPlan(NamedTuple):
    """Tokens and vocab ids per chunk of the backward."""

    tokens: int
    vocab: int


def chunk_plan(n: int, vocab: int, hidden: int, dtype: torch.dtype, cfg: TileConfig) -> ChunkPlan:
    """Chunks whose fp32 hidden-gradient slice and ``dz`` buffer fit their budgets (two tiles under the
    interpreter, so tests cross chunk borders)."""
    if interpreter_active():
        return ChunkPlan(2 * cfg.block_n, 2 * cfg.block_v)
    tokens = min(_round_up(n, cfg.block_n), _round_down(FP32_CHUNK_BYTES // (4 * hidden), cfg.block_n))
    per_row = tokens * torch.tensor([], dtype=dtype).element_size()
    return ChunkPlan(tokens, min(_round_up(vocab, cfg.block_v), _round_down(DZ_CHUNK_BYTES // per_row, cfg.block_v)))


def row_map_arg(problem: LinearVocabProblem, start: int, stop: int) -> torch.Tensor:
    """The kernels' ``row_map_ptr`` for tokens ``[start, stop)``: their hidden rows, or (no row map) a dummy."""
    return problem.ids if problem.token_rows is None else problem.token_rows[start:stop]


def chunk_hidden_arg(problem: LinearVocabProblem, start: int, stop: int) -> torch.Tensor:
    """The kernels' ``h_ptr`` for tokens ``[start, stop)``: the whole hidden (read through the row map) or the
    chunk's rows."""
    return problem.hidden if problem.token_rows is not None else problem.hidden[start:stop]


class _Launch(NamedTuple):
    """Everything a logit-gradient kernel needs besides its token range."""

    problem: LinearVocabProblem
    lse: torch.Tensor
    grad: StatsGrad
    cfg: TileConfig

    def token_operands(self, start: int, stop: int) -> list:
        """Pointer arguments of the logit-gradient kernels for tokens ``[start, stop)``."""
        p, g = self.problem, self.grad
        dummy = g.coef_a
        return [
            chunk_hidden_arg(p, start, stop), row_map_arg(p, start, stop), p.weight,
            p.bias if p.bias is not None else p.hidden, p.ids[start:stop],
            self.lse[start:stop], g.target[start:stop], g.coef_a[start:stop],
            (g.coef_c if g.coef_c is not None else dummy)[start:stop],
            (g.logit_sum if g.logit_sum is not None else dummy)[start:stop],
        ]

    def options(self) -> dict:
        """Constexpr flags and launch options shared by the logit-gradient kernels."""
        p, cfg = self.problem, self.cfg
        return dict(
            HAS_BIAS=p.bias is not None, HAS_SOFTCAP=p.softcap is not None, HAS_ROW_MAP=p.token_rows is not None,
            HAS_COEF_C=self.grad.coef_c is not None, HAS_LOGIT_SUM_GRAD=self.grad.logit_sum is not None,
            BLOCK_N=cfg.block_n, BLOCK_V=cfg.block_v, BLOCK_H=cfg.block_h,
            DOT_PRECISION=dot_precision(p.hidden.dtype), num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )


def matmul_accumulate(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, cfg: MatmulConfig,
                      b_rows: torch.Tensor | None = None) -> None:
    """``out += a @ B`` with fp32 accumulation into the fp32 ``out`` ``[M, N]``; ``a`` ``[M, K]``; ``B`` is ``b``
    ``[K, N]``, or with ``b_rows`` ``[K]`` (int64) the rows ``b[b_rows]`` of a taller ``b``, read in place."""
    (m, k), n = a.shape, b.shape[1]
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
    matmul_acc_kernel[grid](
        a, b, b_rows if b_rows is not None else out, out, m, n, k,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
        GATHER_B_ROWS=b_rows is not None, DOT_PRECISION=dot_precision(a.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )


def split_vocab_chunks(problem: LinearVocabProblem, start: int, stop: int, plan: ChunkPlan,
                       d_hidden32: torch.Tensor | None, d_weight: torch.Tensor | None, dz_buffer: torch.Tensor,
                       write_dz: Callable[[int, int, torch.Tensor], None]) -> None:
    """``split`` strategy for tokens ``[start, stop)`` of ``problem``: per vocab chunk ``[c0, c1)``,
    ``write_dz(c0, c1, dz)`` fills ``dz [rows, c1 - c0]`` (a view of ``dz_buffer``), then two GEMMs add
    ``dz @ weight[c0:c1]`` into ``d_hidden32`` and ``dz.T @ h`` (the tokens' hidden rows) into ``d_weight``."""
    hidden, weight = problem.hidden, problem.weight
    vocab = weight.shape[0]
    rows = stop - start
    mm_cfg = matmul_config(hidden.dtype)
    b_rows = None if problem.token_rows is None else problem.token_rows[start:stop]
    for col_start in range(0, vocab, plan.vocab):
        col_stop = min(vocab, col_start + plan.vocab)
        dz = dz_buffer[: rows * (col_stop - col_start)].view(rows, col_stop - col_start)
        write_dz(col_start, col_stop, dz)
        if d_hidden32 is not None:
            matmul_accumulate(d_hidden32[:rows], dz, weight[col_start:col_stop], mm_cfg)
        if d_weight is not None:
            matmul_accumulate(d_weight[col_start:col_stop], dz.T, chunk_hidden_arg(problem, start, stop), mm_cfg,
                              b_rows)


def _split_chunk(launch: _Launch, start: int, stop: int, plan: ChunkPlan,
                 d_hidden32: torch.Tensor | None, d_weight: torch.Tensor | None, d_bias: torch.Tensor | None,
                 dz_buffer: torch.Tensor) -> None:
    """``split`` strategy of the vocab statistics for tokens ``[start, stop)``."""
    p, cfg = launch.problem, launch.cfg
    h = p.weight.shape[1]
    rows = stop - start
    operands = launch.token_operands(start, stop)
    inv_t, softcap = scalar_args(p)

    def write_dz(col_start: int, col_stop: int, dz: torch.Tensor) -> None:
        grid = (triton.cdiv(rows, cfg.block_n), triton.cdiv(col_stop - col_start, cfg.block_v))
        logit_grad_store_kernel[grid](
            *operands, dz, d_bias if d_bias is not None else dz,
            rows, col_start, col_stop, h, p.ids.shape[1], inv_t, softcap,
            NEED_DB=d_bias is not None, **launch.options(),
        )

    split_vocab_chunks(p, start, stop, plan, d_hidden32, d_weight, dz_buffer, write_dz)


def _atomic_chunk(launch: _Launch, start: int, stop: int,
                  d_hidden32: torch.Tensor | None, d_weight: torch.Tensor | None, d_bias: torch.Tensor | None) -> None:
    """``atomic`` strategy for tokens ``[start, stop)``: one fused kernel with fp32 atomics."""
    p, cfg = launch.problem, launch.cfg
    vocab, h = p.weight.shape
    rows = stop - start
    dummy = launch.grad.coef_a
    inv_t, softcap = scalar_args(p)
    grid = (triton.cdiv(rows, cfg.block_n), triton.cdiv(vocab, cfg.block_v))
    vocab_stats_bwd_kernel[grid](
        *launch.token_operands(start, stop),
        d_hidden32 if d_hidden32 is not None else dummy,
        d_weight if d_weight is not None else dummy,
        d_bias if d_bias is not None else dummy,
        rows, vocab, h, p.ids.shape[1], inv_t, softcap,
        NEED_DH=d_hidden32 is not None, NEED_DW=d_weight is not None, NEED_DB=d_bias is not None,
        **launch.options(),
    )


def token_chunked_gradients(problem: LinearVocabProblem, need_hidden: bool, need_weight: bool, need_bias: bool,
                            chunk_size: int | None, with_dz_buffer: bool, accumulate: Callable):
    """The host loop both backwards share: allocate the gradients (hidden ``[N, H]`` in its dtype, weight
    ``[V, H]`` and bias ``[V]`` fp32; None where not needed), then per chunk ``[start, stop)`` of the problem's
    tokens call ``accumulate(start, stop, plan, d_hidden32, d_weight, d_bias, dz_buffer)`` with a zeroed fp32
    hidden-gradient slice and copy it out to the tokens' rows. ``chunk_size`` (tokens per chunk) overrides the
    memory-budget plan."""
    hidden, weight = problem.hidden, problem.weight
    n, h, vocab = problem.num_tokens, hidden.shape[1], weight.shape[0]
    dev = hidden.device
    d_hidden, d_weight, d_bias = gradient_buffers(problem, need_hidden, need_weight, need_bias)
    if n == 0:
        return d_hidden, d_weight, d_bias
    plan = chunk_plan(n, vocab, h, hidden.dtype, tile_config(hidden.dtype))
    if chunk_size is not None:
        plan = plan._replace(tokens=max(1, int(chunk_size)))
    d_hidden32 = torch.empty((min(n, plan.tokens), h), dtype=torch.float32, device=dev) if need_hidden else None
    dz_buffer = None
    if with_dz_buffer:
        dz_buffer = torch.empty(min(n, plan.tokens) * min(vocab, plan.vocab), dtype=hidden.dtype, device=dev)
    for start in range(0, n, plan.tokens):
        stop = min(n, start + plan.tokens)
        if d_hidden32 is not None:
            d_hidden32.zero_()
        accumulate(start, stop, plan, d_hidden32, d_weight, d_bias, dz_buffer)
        if d_hidden is not None:
            problem.store_token_rows(d_hidden, start, stop, d_hidden32[: stop - start])
    return d_hidden, d_weight, d_bias


def backward_stats(
    problem: LinearVocabProblem,
    lse: torch.Tensor,
    grad: StatsGrad,
    need_hidden: bool,
    need_weight: bool,
    need_bias: bool,
    chunk_size: int | None = None,
):
    """Gradients (hidden ``[N, H]`` in its dtype, weight ``[V, H]`` fp32, bias ``[V]`` fp32); None where not
    needed. ``chunk_size`` (tokens per chunk) overrides the memory-budget plan."""
    strategy = backward_strategy()
    launch = _Launch(problem, lse, grad, tile_config(problem.hidden.dtype))

    def accumulate(start, stop, plan, d_hidden32, d_weight, d_bias, dz_buffer):
        if strategy == "split":
            _split_chunk(launch, start, stop, plan, d_hidden32, d_weight, d_bias, dz_buffer)
        else:
            _atomic_chunk(launch, start, stop, d_hidden32, d_weight, d_bias)

    return token_chunked_gradients(problem, need_hidden, need_weight, need_bias, chunk_size, strategy == "split",
                                   accumulate)
