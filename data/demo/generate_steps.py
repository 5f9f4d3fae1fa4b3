"""Writes the stepwise-supervised arithmetic of the process reward model demo (configs/prm.yaml).

Each row is TRL's stepwise supervision: a prompt asking for ``a + b + c`` (1 to 20 each), the reply's steps
(``a + b = s``, ``s + c = t``, ``The answer is t.``) and whether each step is correct. Half of the rows make
one mistake, in the first or the second sum (off by 10, 12 or 15), and carry the wrong value on; every step
from the first mistake on is labelled false, as Math-Shepherd labels a step by whether the reply can still
reach the right answer. Mistakes of 1 to 3 would be more natural, but SmolLM2-135M's features do not show
them: a logistic probe on its frozen hidden states at the step ends stays below the majority label on
held-out rows with them (0.58 against 0.62), and reaches 0.78 with these. Held-out rows use number triples
that never appear in training. Deterministic: ``python generate_steps.py`` rewrites the same two files.
"""
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAIN_ROWS, HELD_OUT_ROWS = 400, 48


def row(a: int, b: int, c: int, mistake: int | None, offset: int) -> dict:
    """The steps of ``a + b + c`` with ``offset`` added to the result of step ``mistake`` (0 or 1; None: none)."""
    first = a + b + (offset if mistake == 0 else 0)
    second = first + c + (offset if mistake == 1 else 0)
    steps = [f"{a} + {b} = {first}", f"{first} + {c} = {second}", f"The answer is {second}."]
    labels = [mistake is None or i < mistake for i in range(3)]
    return {"prompt": f"What is {a} + {b} + {c}? Solve it step by step.", "completions": steps, "labels": labels}


def main() -> None:
    rng = random.Random(11)
    triples = rng.sample([(a, b, c) for a in range(1, 21) for b in range(1, 21) for c in range(1, 21)],
                         TRAIN_ROWS + HELD_OUT_ROWS)
    rows = []
    for a, b, c in triples:
        mistake = rng.choice([None, None, 0, 1])
        rows.append(row(a, b, c, mistake, rng.choice([-15, -12, -10, 10, 12, 15])))
    for name, part in (("steps_train.jsonl", rows[:TRAIN_ROWS]), ("steps_heldout.jsonl", rows[TRAIN_ROWS:])):
        with open(HERE / name, "w") as fh:
            for r in part:
                fh.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
