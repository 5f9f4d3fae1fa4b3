"""docs/config.md: every config key described once, and the committed file matches the generator."""
import dataclasses
from pathlib import Path

from fusedrl.engine.config import OFFLINE_ALGORITHMS, ONLINE_ALGORITHMS, TrainConfig
from fusedrl.engine.config_reference import DESCRIPTIONS, SECTIONS, markdown

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"
FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]


def _row(key: str) -> str:
    """The table row of ``key`` in the generated Markdown."""
    rows = [line for line in markdown().splitlines() if line.startswith(f"| `{key}` |")]
    assert len(rows) == 1, f"{key}: expected one table row, got {len(rows)}"
    return rows[0]


def test_every_field_described_and_in_one_section():
    assert set(DESCRIPTIONS) == set(FIELDS)
    assert all(text.strip() for text in DESCRIPTIONS.values())
    assert [name for _, names in SECTIONS for name in names] == FIELDS  # each field once, in the dataclass's order


def test_docs_file_is_current():
    assert DOC.is_file() and DOC.read_text() == markdown(), (
        "docs/config.md is out of date: run `python -m fusedrl.engine.config_reference > docs/config.md`")


def test_rendered_rows():
    assert all(f"`{rl}`" in _row("rl").split(" | ")[2] for rl in OFFLINE_ALGORITHMS + ONLINE_ALGORITHMS)
    assert _row("base_model").startswith("| `base_model` | required |  |")
    assert _row("max_grad_norm").startswith("| `max_grad_norm` | `1.0` | >= 0 |")
    assert _row("top_p").startswith("| `top_p` | `1.0` | (0, 1] |")
    assert _row("val_set_size").startswith("| `val_set_size` | `0.0` | [0, 0.9] |")
    assert _row("attn_implementation").split(" | ")[2].startswith("`null`, `eager`")
    beta = _row("beta")
    assert "2.0 for `simpo`" in beta and "0.04 for `grpo`" in beta
    assert "list[float \\| None]" in _row("reward_funcs")  # a pipe inside a cell is escaped
