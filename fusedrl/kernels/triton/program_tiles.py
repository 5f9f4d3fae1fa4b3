"""Which tokens and vocab ids one Triton program owns, on the two grids the kernels launch.

- ``(token blocks, vocab splits)`` (the forward kernels): ``BLOCK_N`` tokens and one contiguous vocab range,
  streamed ``BLOCK_V`` ids at a time;
- ``(token blocks, vocab blocks)`` (the backward kernels): one ``BLOCK_N x BLOCK_V`` tile.

Indices are int64, so offsets such as ``row * V`` cannot overflow for large ``N x V``. When the launcher
skipped tokens (all ids ignored), a program's token indices count the kept tokens, and ``hidden_rows`` maps
them to the rows of the hidden states they read.
"""
import triton
import triton.language as tl


@triton.jit
def split_program(N, V, v_per_split, BLOCK_N: tl.constexpr):
    """This program's split index, token rows ``[BLOCK_N]`` and their mask, and its split's vocab range
    ``[v_begin, v_end)`` (``v_per_split`` ids, the last split cut at ``V``)."""
    split = tl.program_id(1)
    rows = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    v_begin = split * v_per_split
    return split, rows, rows < N, v_begin, tl.minimum(v_begin + v_per_split, V)


@triton.jit
def vocab_block(v0, v_end, BLOCK_V: tl.constexpr):
    """Vocab ids ``[BLOCK_V]`` from ``v0`` and their mask (``< v_end``): one step of a split's stream."""
    cols = (v0 + tl.arange(0, BLOCK_V)).to(tl.int64)
    return cols, cols < v_end


@triton.jit
def hidden_rows(rows, row_mask, row_map_ptr, HAS_ROW_MAP: tl.constexpr):
    """The hidden-state rows ``[BLOCK_N]`` of tokens ``rows``: ``row_map[rows]`` when the launcher kept only some
    tokens (``HAS_ROW_MAP``), else ``rows`` themselves."""
    h_rows = rows
    if HAS_ROW_MAP:
        h_rows = tl.load(row_map_ptr + rows, mask=row_mask, other=0)
    return h_rows


@triton.jit
def tile_program(N, col_start, col_stop, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr):
    """This program's tile of tokens ``rows [BLOCK_N]`` and vocab ids ``cols [BLOCK_V]`` (vocab blocks counted
    from ``col_start``) and their masks (``rows < N``, ``cols < col_stop``)."""
    rows = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    cols = (col_start + tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)).to(tl.int64)
    return rows, cols, rows < N, cols < col_stop
