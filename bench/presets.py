"""Named sweeps, and the cartesian sweep built from explicit ``--n/--h/--v/--dtype`` lists."""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .spec import Case

TARGET = dict(h=4096, v=128256, dtype="bf16")


@dataclass(frozen=True)
class Preset:
    """Cases for every op, with per-op overrides (e.g. DPO's 4 pairs x 1024 tokens).

    ``cpu_threads``: torch CPU threads to use unless ``--threads`` says otherwise (None: torch's default).
    """

    description: str
    cases: tuple[Case, ...]
    per_op: Mapping[str, tuple[Case, ...]] = field(default_factory=dict)
    cpu_threads: int | None = None

    def cases_for(self, op: str) -> tuple[Case, ...]:
        """The cases of ``op``."""
        return self.per_op.get(op, self.cases)


def sweep(ns: Iterable[int], hs: Iterable[int], vs: Iterable[int], dtypes: Iterable[str],
          seq: int = 1024) -> tuple[Case, ...]:
    """Every combination of the given token counts, hidden sizes, vocabularies and dtypes."""
    return tuple(Case(n, h, v, d, seq) for d, v, h, n in itertools.product(dtypes, vs, hs, ns))


def _unique(*groups: tuple[Case, ...]) -> tuple[Case, ...]:
    return tuple(dict.fromkeys(itertools.chain(*groups)))


_GPU_FULL = _unique(
    sweep([1024, 2048, 4096, 8192, 16384, 32768], [4096], [128256], ["bf16"]),
    sweep([8192], [4096], [32000, 128256, 256000], ["bf16"]),
    sweep([8192], [1024, 2048, 4096, 8192], [128256], ["bf16"]),
    sweep([1024, 4096, 16384], [4096], [128256], ["fp32"]),
)

PRESETS: dict[str, Preset] = {
    "gpu-targets": Preset(
        "the headline shape: N=16384, H=4096, V=128256 bf16; DPO 4 pairs x 1024, GRPO 16 x 1024",
        (Case(16384, **TARGET),),
        {"dpo": (Case(8192, **TARGET),)},
    ),
    "gpu-full": Preset(
        "one-factor sweeps around H=4096, V=128256 bf16: N 1k..32k; V 32k/128k/256k and H 1k..8k at N=8192; "
        "fp32 at N 1k/4k/16k",
        _GPU_FULL,
    ),
    "cpu-smoke": Preset(
        "tiny CPU shapes for CI: N 64/128/256, H=32, V=512 fp32, and N=128 bf16",
        _unique(sweep([64, 128, 256], [32], [512], ["fp32"], seq=32), sweep([128], [32], [512], ["bf16"], seq=32)),
        cpu_threads=1,  # tiny ops: one thread avoids oversubscription noise on a shared machine
    ),
    "cpu-small": Preset(
        "CPU shapes where the chunked path's memory shows: N 256/512/1024, H=64, V=32000 fp32 (minutes)",
        sweep([256, 512, 1024], [64], [32000], ["fp32"], seq=256),
    ),
}


def default_preset(device_type: str) -> str:
    """``gpu-full`` on CUDA, ``cpu-smoke`` elsewhere."""
    return "gpu-full" if device_type == "cuda" else "cpu-smoke"
