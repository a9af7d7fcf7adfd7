"""Ragged batches: the context length of each sequence of a batch, from a scenario's ``sweep.lengths``.

Serving engines batch sequences of different lengths. A length mix gives each sequence of a batch its
own context; ``context_len`` is always the longest: sequence 0 holds exactly ``context_len`` tokens and
the others at most that many, so a static cache is sized as before and a paged one holds only what each
sequence needs. Pure functions, no torch.

- ``same``: every sequence at ``context_len`` (the default: a batch as it was before).
- ``uniform``: the others uniform over 1 .. context_len.
- ``long-tail``: the others log-uniform over context_len / 64 .. context_len (at least 1): most sequences
  are short, a few long, the median about context_len / 8, as in chat serving traces.
- a list of fractions in (0, 1], one of them 1: sequence b at round(fractions[b mod n] · context_len)
  (at least 1); sequence 0 takes fraction 1 whatever the list's order.

Draws come from a generator seeded with the mix's seed, one draw per sequence in batch order, so a batch
of B sequences is the first B of one stream: a larger batch adds sequences without changing the others,
and the max-batch prediction can add sequences one at a time.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

KINDS: tuple[str, ...] = ("same", "uniform", "long-tail")
# Most sequences a ragged batch may have: one length is drawn, recorded and summed per sequence.
MAX_RAGGED_BATCH = 2**20
# long-tail: the shortest draw is this fraction of context_len
LONG_TAIL_SPAN = 64


@dataclass(frozen=True)
class LengthMix:
    """How a batch's context lengths are spread: a kind, or fixed fractions of context_len, and the seed."""

    kind: str  # "same", "uniform", "long-tail" or "fixed"
    fractions: tuple[float, ...] = ()  # for "fixed"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind == "fixed":
            if not self.fractions or any(not 0 < f <= 1 for f in self.fractions) or max(self.fractions) != 1:
                raise ValueError(f"fixed length fractions lie in (0, 1] and include 1, got {list(self.fractions)}")
        elif self.kind not in KINDS:
            raise ValueError(f"length mix {self.kind!r} is not one of {', '.join(KINDS)} or a list of fractions")

    @property
    def ragged(self) -> bool:
        return self.kind != "same"

    @property
    def label(self) -> str:
        """How the mix appears in a variant's name: ``longtail``, ``uniform``, ``fixed(1,0.5)``."""
        if self.kind == "fixed":
            return "fixed(" + ",".join(f"{f:g}" for f in self.fractions) + ")"
        return self.kind.replace("-", "")


def iter_lengths(mix: LengthMix | None, context_len: int) -> Iterator[int]:
    """Each sequence's context length in batch order, without end: sequence 0 at context_len, the rest by the mix."""
    yield context_len
    rng = random.Random(0 if mix is None else mix.seed)
    b = 1
    while True:
        if mix is None or mix.kind == "same":
            length = context_len
        elif mix.kind == "uniform":
            length = rng.randint(1, context_len)
        elif mix.kind == "long-tail":
            low = math.log(max(1.0, context_len / LONG_TAIL_SPAN))
            length = round(math.exp(rng.uniform(low, math.log(context_len))))
        else:
            length = round(mix.fractions[b % len(mix.fractions)] * context_len)
        yield min(context_len, max(1, length))
        b += 1


def sequence_lengths(mix: LengthMix | None, context_len: int, batch_size: int) -> list[int]:
    """The context length of each of ``batch_size`` sequences: the first ``batch_size`` of :func:`iter_lengths`."""
    if mix is None or mix.kind == "same":
        return [context_len] * batch_size
    return list(itertools.islice(iter_lengths(mix, context_len), batch_size))


def mean_length(mix: LengthMix | None, context_len: int, batch_size: int) -> float:
    """The batch's mean context length (context_len is its longest)."""
    lengths = sequence_lengths(mix, context_len, batch_size)
    return sum(lengths) / len(lengths)
