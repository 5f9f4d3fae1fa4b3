"""Bitonic sorting networks over the last dim of a ``[ROWS, COLS]`` Triton tensor (COLS a power of two).

Built from reshape / permute / split / join and elementwise min / max only, so they
vectorise under the CPU interpreter (``tl.sort`` reduces with a Python combine
function there, one element at a time) and need nothing newer than Triton 3.0.
A compare-exchange step costs ``O(ROWS * COLS)``; a full sort takes
``log2(COLS) * (log2(COLS) + 1) / 2`` steps, a merge of a bitonic row ``log2(COLS)``.
"""
import triton
import triton.language as tl


@triton.jit
def bitonic_step(x, ROWS: tl.constexpr, COLS: tl.constexpr, STRIDE: tl.constexpr, SIZE: tl.constexpr,
                 DESCENDING: tl.constexpr):
    """Compare-exchange columns ``i`` and ``i + STRIDE`` (bit ``STRIDE`` of ``i`` clear); a pair is ordered
    descending when bit ``SIZE`` of ``i`` is clear, ascending otherwise (reversed if not ``DESCENDING``)."""
    GROUPS: tl.constexpr = COLS // (2 * STRIDE)
    a, b = tl.split(tl.permute(tl.reshape(x, (ROWS * GROUPS, 2, STRIDE)), (0, 2, 1)))
    group = tl.arange(0, ROWS * GROUPS) % GROUPS
    bit = (group * (2 * STRIDE)) & SIZE
    if DESCENDING:
        ascending = (bit != 0)[:, None]
    else:
        ascending = (bit == 0)[:, None]
    big = tl.maximum(a, b)
    small = tl.minimum(a, b)
    pairs = tl.join(tl.where(ascending, small, big), tl.where(ascending, big, small))
    return tl.reshape(tl.permute(pairs, (0, 2, 1)), (ROWS, COLS))


@triton.jit
def bitonic_merge(x, ROWS: tl.constexpr, COLS: tl.constexpr, LOG_COLS: tl.constexpr, DESCENDING: tl.constexpr):
    """Sort rows that are bitonic (rise then fall, or fall then rise) along the last dim."""
    for level in tl.static_range(LOG_COLS):
        x = bitonic_step(x, ROWS, COLS, COLS >> (level + 1), COLS, DESCENDING)
    return x


@triton.jit
def bitonic_sort(x, ROWS: tl.constexpr, COLS: tl.constexpr, LOG_COLS: tl.constexpr, DESCENDING: tl.constexpr):
    """Sort every row of ``x[ROWS, COLS]`` along the last dim."""
    for stage in tl.static_range(1, LOG_COLS + 1):
        for level in tl.static_range(stage):
            x = bitonic_step(x, ROWS, COLS, 1 << (stage - 1 - level), 1 << stage, DESCENDING)
    return x
