"""The micro-batch stream and the fixed evaluation batches."""
import pytest

from fusedrl.engine.batches import BatchStream, fixed_batches


def _rows(batch: list) -> list:
    return batch


@pytest.mark.parametrize("n, min_rows, sizes", [
    (7, 1, [3, 3, 1]),
    (7, 2, [3, 4]),  # a 1-row tail joins the batch before it (KTO needs 2 rows for its KL pairs)
    (6, 2, [3, 3]),
    (2, 2, [2]),
    (0, 2, []),
])
def test_fixed_batches_keep_every_row(n, min_rows, sizes):
    batches = fixed_batches(list(range(n)), 3, _rows, min_rows)
    assert [len(b) for b in batches] == sizes
    assert [i for b in batches for i in b] == list(range(n))


def test_fixed_batches_refuse_fewer_rows_than_a_batch_needs():
    with pytest.raises(ValueError, match="1 rows: batches here need at least 2"):
        fixed_batches([0], 3, _rows, 2)


def test_batch_stream_resumes_where_it_stopped():
    """Seven rows in batches of 3: two batches an epoch, a different tail row left out each epoch."""
    full = BatchStream(list(range(7)), 3, _rows, seed=5)
    seen = [full.next() for _ in range(6)]
    assert all(len(b) == 3 for b in seen)
    assert {i for b in seen[:2] for i in b} != {i for b in seen[2:4] for i in b}
    resumed = BatchStream(list(range(7)), 3, _rows, seed=5)
    partial = BatchStream(list(range(7)), 3, _rows, seed=5)
    [partial.next() for _ in range(3)]
    resumed.restore(partial.state())
    assert [resumed.next() for _ in range(3)] == seen[3:]


def test_kto_evaluation_keeps_a_one_row_tail(tmp_path):
    """Four held-out KTO rows in batches of 3: the lone last row joins the first batch (it used to fail)."""
    from engine_fixtures import save_tiny_model, train_config
    from fusedrl.engine.config import config_from_dict
    from fusedrl.engine.trainer import train

    raw = train_config(save_tiny_model(tmp_path / "model"), tmp_path / "run", "kto", max_steps=1, eval_batch_size=3)
    result = train(config_from_dict(raw))
    assert {"logps/chosen", "logps/rejected"} <= set(result.eval_before)
    assert result.eval_before["loss"] == 0.5  # policy == reference at step 0: 1 - sigmoid(0) on both sides
