"""Writes the small-arithmetic prompts (train and held-out) of the GRPO demo (configs/grpo_arithmetic.yaml).

Each row is a short chat prompt (a one-line system message, then the question)
asking for a sum or a difference of two numbers from 1 to 20 (differences never
negative), with the answer in ``solution``: ``{"prompt": [{"role": "system",
"content": "Answer with a number."}, {"role": "user", "content": "What is 17 + 5?
Give only the number."}], "solution": "22"}``. The short system message replaces
the model's long default one, so rollouts stay cheap on a CPU. Held-out rows use number pairs that
never appear in training. Deterministic: ``python generate_arithmetic.py``
rewrites the same two files.
"""
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAIN_ROWS, HELD_OUT_ROWS = 400, 48
SYSTEM = "Answer with a number."


def problems() -> list[tuple[str, int]]:
    """Every ``a + b`` and ``a - b`` (a >= b) with 1 <= a, b <= 20, as (question, answer)."""
    out = []
    for a in range(1, 21):
        for b in range(1, 21):
            out.append((f"{a} + {b}", a + b))
            if a >= b:
                out.append((f"{a} - {b}", a - b))
    return out


def row(question: str, answer: int) -> dict:
    return {"prompt": [{"role": "system", "content": SYSTEM},
                       {"role": "user", "content": f"What is {question}? Give only the number."}],
            "solution": str(answer)}


def main() -> None:
    rng = random.Random(7)
    pool = problems()
    rng.shuffle(pool)
    held_out, train = pool[:HELD_OUT_ROWS], pool[HELD_OUT_ROWS:HELD_OUT_ROWS + TRAIN_ROWS]
    for name, rows in (("arithmetic_train.jsonl", train), ("arithmetic_heldout.jsonl", held_out)):
        with open(HERE / name, "w") as fh:
            for question, answer in rows:
                fh.write(json.dumps(row(question, answer)) + "\n")


if __name__ == "__main__":
    main()
