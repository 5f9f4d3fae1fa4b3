"""The learning-rate schedule: warmup, then cosine (to a floor), linear or constant."""
import math

import pytest

from fusedrl.engine.config import ConfigError, config_from_dict
from fusedrl.engine.optim import lr_factor


@pytest.mark.parametrize("kind, min_ratio, expected", [
    ("cosine", 0.0, [1 / 3, 2 / 3, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4)),
                     0.0]),
    ("cosine", 0.1, [1 / 3, 2 / 3, 1.0, 0.1 + 0.45 * (1 + math.cos(math.pi / 4)), 0.55,
                     0.1 + 0.45 * (1 + math.cos(3 * math.pi / 4)), 0.1]),
    ("linear", 0.0, [1 / 3, 2 / 3, 1.0, 0.75, 0.5, 0.25, 0.0]),
    ("constant", 0.0, [1 / 3, 2 / 3, 1.0, 1.0, 1.0, 1.0, 1.0]),
])
def test_schedule_after_two_warmup_steps(kind, min_ratio, expected):
    """Six steps, two of warmup: factors of steps 0..6 (the last one past the end stays at the floor)."""
    factors = [lr_factor(step, 6, 2, kind, min_ratio) for step in range(7)]
    assert factors == pytest.approx(expected)


def test_min_lr_ratio_is_only_for_cosine():
    raw = {"base_model": "m", "datasets": [{"path": "d.jsonl"}], "lr_scheduler": "linear", "cosine_min_lr_ratio": 0.1}
    with pytest.raises(ConfigError, match=r"cosine_min_lr_ratio: only read with lr_scheduler: cosine \(lr_scheduler "
                                          r"is linear here\), got 0.1"):
        config_from_dict(raw)
    assert config_from_dict({**raw, "lr_scheduler": "cosine"}).cosine_min_lr_ratio == 0.1
