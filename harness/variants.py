"""Attention variants: the CLA paper's names, per-layer KV sharing maps, and the resolved form.

A *variant* fixes how many query and key/value heads each layer has and which layers own a K/V
projection and cache (*producers*) and which re-use an earlier layer's (*consumers*). Everything
downstream (model building, accounting, reports) reads the resolved :class:`Variant`; nothing
else needs to know how it was spelled in a scenario file. No torch import here.

Naming follows Brandon et al. 2024, "Reducing Transformer Key-Value Cache Size with Cross-Layer
Attention" (arXiv 2405.12981), section 3: ``H<head_dim>-{MHA|MQA|GQA<g>}[-CLA<s>]``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# H128-MHA, H64-MQA, H128-GQA4, H128-MQA-CLA2, H256-GQA4-CLA2, H64-MHA-CLA3. Numbers have at most
# 9 digits: a longer one is no width or count, and Python refuses to convert thousands of digits.
PAPER_NAME_RE = re.compile(
    r"^H(?P<head_dim>\d{1,9})-(?P<kind>MHA|MQA|GQA(?P<groups>\d{1,9}))(?:-CLA(?P<sharing>\d{1,9}))?$"
)
PAPER_NAME_SPELLING = "H<head_dim>-{MHA|MQA|GQA<n_kv_heads>}[-CLA<sharing>]"


@dataclass(frozen=True)
class PaperName:
    """What a CLA-paper name implies. ``n_kv_heads`` is None for MHA (it equals ``n_heads``)."""

    head_dim: int
    attention: str  # "mha" | "mqa" | "gqa"
    n_kv_heads: int | None
    kv_sharing: int


def parse_paper_name(name: str) -> PaperName | None:
    """Parse ``H128-GQA4-CLA2`` into its parts; None when ``name`` is not such a spelling."""
    match = PAPER_NAME_RE.match(name)
    if match is None:
        return None
    kind = match.group("kind")
    attention = "gqa" if kind.startswith("GQA") else kind.lower()
    n_kv_heads = {"mha": None, "mqa": 1, "gqa": int(match.group("groups") or 0)}[attention]
    return PaperName(
        head_dim=int(match.group("head_dim")),
        attention=attention,
        n_kv_heads=n_kv_heads,
        kv_sharing=int(match.group("sharing") or 1),
    )


def sharing_map(n_layers: int, kv_sharing: int) -> tuple[int, ...]:
    """KV map for a CLA sharing factor: groups of ``kv_sharing`` adjacent layers, first one produces.

    With s not dividing L the last group is shorter, so there are ceil(L/s) producers (paper §2.2).
    ``sharing_map(5, 2) == (0, 0, 2, 2, 4)``.
    """
    return tuple((layer // kv_sharing) * kv_sharing for layer in range(n_layers))


def kv_map_problem(kv_layers: tuple[int, ...] | list[int]) -> tuple[int, str] | None:
    """First entry of a KV map that is not allowed, as (index, reason); None when the map is valid.

    Entry i names the layer whose K/V layer i reads: a producer names itself, a consumer names an
    earlier producer.
    """
    for layer, source in enumerate(kv_layers):
        if source < 0:
            return layer, f"layer {layer} reads KV of layer {source}, which does not exist"
        if source > layer:
            return layer, f"layer {layer} reads KV of later layer {source}; a consumer must read an earlier producer"
        if kv_layers[source] != source:
            return (
                layer,
                f"layer {layer} reads KV of layer {source}, which is itself a consumer (of layer {kv_layers[source]})",
            )
    return None


@dataclass(frozen=True)
class Variant:
    """A fully resolved attention configuration for an ``n_layers``-deep stack."""

    name: str
    head_dim: int  # width of one attention head
    n_heads: int  # query heads per layer
    n_kv_heads: int  # key/value heads per producer layer (MHA: n_heads, MQA: 1, GQA-g: g)
    kv_layers: tuple[int, ...]  # entry i: the layer whose KV cache layer i reads

    def __post_init__(self) -> None:
        if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        problem = kv_map_problem(self.kv_layers)
        if problem is not None:
            raise ValueError(problem[1])

    @property
    def n_layers(self) -> int:
        return len(self.kv_layers)

    @property
    def producers(self) -> tuple[int, ...]:
        """Layers that own a K/V projection and a KV cache, in order."""
        return tuple(layer for layer, source in enumerate(self.kv_layers) if layer == source)

    @property
    def n_kv_layers(self) -> int:
        """Number of producer layers, P in the design notes' formulas."""
        return len(self.producers)

    @property
    def group_size(self) -> int:
        """Query heads that share one KV head."""
        return self.n_heads // self.n_kv_heads

    @property
    def attention(self) -> str:
        if self.n_kv_heads == self.n_heads:
            return "mha"
        return "mqa" if self.n_kv_heads == 1 else "gqa"

    @property
    def sharing_factor(self) -> float:
        """Layers per producer: 2.0 for CLA2; fractional for an uneven map."""
        return self.n_layers / self.n_kv_layers

    def uniform_sharing(self) -> int | None:
        """The CLA factor s when the map is exactly ``sharing_map(L, s)``, else None."""
        for s in range(1, self.n_layers + 1):
            if sharing_map(self.n_layers, s) == self.kv_layers:
                return s
        return None

    def describe(self) -> str:
        """The paper-style spelling of this variant, with the map when it is not uniform."""
        kind = {"mha": "MHA", "mqa": "MQA", "gqa": f"GQA{self.n_kv_heads}"}[self.attention]
        s = self.uniform_sharing()
        sharing = "" if s == 1 else f"-CLA{s}" if s else f"-KV{list(self.kv_layers)}"
        return f"H{self.head_dim}-{kind}{sharing}"


def producer_count(n_layers: int, kv_sharing: int) -> int:
    """ceil(L/s): producers for sharing factor s over L layers."""
    return math.ceil(n_layers / kv_sharing)
