"""Writes the demo preference data (train and held-out) shipped with fusedrl.

Every pair asks a short question (``sft_train.jsonl`` holds the same training
questions with their good answers as prompt / completion rows); the chosen reply answers it correctly and
politely, the rejected reply states a wrong fact in the same words or refuses rudely. Held-out rows use
subjects that never appear in training, and rude refusals never seen in training, so held-out accuracy
measures what was learnt rather than recognised strings. Deterministic: ``python generate.py``
rewrites the same three files.
"""
import json
import random
from pathlib import Path

SYSTEM = "You are a helpful assistant. Answer briefly."

CAPITALS = [
    ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"),
    ("Canada", "Ottawa"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Chile", "Santiago"),
    ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Greece", "Athens"), ("Portugal", "Lisbon"),
    ("Austria", "Vienna"), ("Poland", "Warsaw"), ("Ireland", "Dublin"), ("Cuba", "Havana"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Russia", "Moscow"), ("China", "Beijing"),
    ("India", "New Delhi"), ("Mexico", "Mexico City"), ("Argentina", "Buenos Aires"), ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"), ("Hungary", "Budapest"), ("Belgium", "Brussels"), ("Turkey", "Ankara"),
]
COLORS = [
    ("the sky on a clear day", "blue"), ("fresh grass", "green"), ("a ripe banana", "yellow"), ("snow", "white"),
    ("coal", "black"), ("a ripe tomato", "red"), ("an orange", "orange"), ("a lemon", "yellow"),
    ("milk", "white"), ("a carrot", "orange"), ("a strawberry", "red"), ("a crow", "black"),
]
OPPOSITES = [
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("up", "down"), ("light", "dark"), ("happy", "sad"),
    ("early", "late"), ("open", "closed"), ("full", "empty"), ("old", "young"), ("hard", "soft"), ("wet", "dry"),
    ("loud", "quiet"), ("rich", "poor"), ("strong", "weak"), ("thick", "thin"),
]
ANIMALS = [
    ("cow", "moo"), ("dog", "woof"), ("cat", "meow"), ("duck", "quack"), ("sheep", "baa"), ("lion", "roar"),
    ("owl", "hoot"), ("pig", "oink"), ("horse", "neigh"), ("bee", "buzz"),
]
RUDE = {
    "train": [
        "Look it up yourself. I am not your servant.",
        "Ugh, what a boring question. Go away.",
        "No. Stop bothering me with this nonsense.",
        "Why would I tell you? Figure it out.",
        "That is a stupid question and I refuse to answer it.",
        "Whatever. I do not care, and neither should you.",
    ],
    "heldout": [
        "I have better things to do than answer you.",
        "Ask someone else, I am busy.",
        "Not my problem. Leave me alone.",
    ],
}


def _other(value: str, values: list[str], rng: random.Random) -> str:
    return rng.choice([v for v in values if v != value])


def questions(rng: random.Random) -> list[tuple[str, str, str, str]]:
    """(subject, question, correct answer, wrong answer in the same words) tuples, one subject per fact."""
    capitals, colors = [cap for _, cap in CAPITALS], sorted({col for _, col in COLORS})
    opposites, sounds = [o for _, o in OPPOSITES], [s for _, s in ANIMALS]
    out = [(f"capital:{c}", f"What is the capital of {c}?", f"The capital of {c} is {cap}.",
            f"The capital of {c} is {_other(cap, capitals, rng)}.") for c, cap in CAPITALS]
    out += [(f"color:{t}", f"What color is {t}?", f"It is {col}.", f"It is {_other(col, colors, rng)}.")
            for t, col in COLORS]
    out += [(f"opposite:{w}", f"What is the opposite of {w}?", f"The opposite of {w} is {o}.",
             f"The opposite of {w} is {_other(o, opposites, rng)}.") for w, o in OPPOSITES]
    out += [(f"animal:{a}", f"What sound does a {a} make?", f"A {a} says {s}.",
             f"A {a} says {_other(s, sounds, rng)}.") for a, s in ANIMALS]
    for a in range(2, 22):
        for b in rng.sample(range(2, 30), 7):
            wrong = a + b + rng.choice([-3, -2, -1, 1, 2, 3])
            out.append((f"sum:{a}", f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.", f"{a} plus {b} is {wrong}."))
    return out


def pair(question: str, answer: str, rejected: str) -> dict:
    """One conversational preference row (TRL format: prompt / chosen / rejected message lists)."""
    return {
        "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        "chosen": [{"role": "assistant", "content": answer}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def sft_row(question: str, answer: str) -> dict:
    """One conversational prompt / completion row (TRL format) for SFT."""
    return {
        "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        "completion": [{"role": "assistant", "content": answer}],
    }


def main() -> None:
    rng = random.Random(7)
    rows = questions(rng)
    subjects = sorted({s for s, _, _, _ in rows})
    held_out = set(rng.sample(subjects, 14))
    here = Path(__file__).parent
    for name, keep in (("train", lambda s: s not in held_out), ("heldout", lambda s: s in held_out)):
        picked = [pair(q, a, wrong if rng.random() < 0.5 else rng.choice(RUDE[name]))
                  for s, q, a, wrong in rows if keep(s)]
        rng.shuffle(picked)
        with (here / f"preferences_{name}.jsonl").open("w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in picked)
        print(name, len(picked))
    with (here / "sft_train.jsonl").open("w") as fh:
        fh.writelines(json.dumps(sft_row(q, a)) + "\n" for s, q, a, _ in rows if s not in held_out)


if __name__ == "__main__":
    main()
