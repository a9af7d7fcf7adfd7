"""Attention variants: their names, per-layer KV sharing maps and windows, and the resolved form.

A *variant* fixes how many query and key/value heads each layer has, which layers own a K/V
projection and cache (*producers*) and which re-use an earlier layer's (*consumers*), and what a
producer caches per token: K and V per KV head, or a multi-head latent (MLA); all positions, or only
the last ``window`` (sliding window); at the weights' precision or in 8 bits (fp8 KV cache).
Everything downstream (model building, accounting, reports) reads the resolved :class:`Variant`;
nothing else needs to know how it was spelled in a scenario file. No torch import here.

Naming follows Brandon et al. 2024, "Reducing Transformer Key-Value Cache Size with Cross-Layer
Attention" (arXiv 2405.12981), section 3: ``H<head_dim>-{MHA|MQA|GQA<g>}[-CLA<s>]``, extended where
it stays readable:

- ``MLA<kv_lora_rank>-R<qk_rope_head_dim>[-Q<q_lora_rank>]`` in place of the head part: multi-head
  latent attention (DeepSeek-AI 2024, "DeepSeek-V2", arXiv 2405.04434, §2.1);
- ``-SWA<window>``: every layer attends to its last ``window`` positions (Jiang et al. 2023,
  "Mistral 7B", §2); ``-SWA<window>-<l>:<g>``: ``l`` windowed (local) layers then ``g`` global
  ones, repeating (Gemma 2: ``1:1``; Gemma 3: ``5:1``);
- ``-KV8``: the cache in float8_e4m3fn, ``-KV8E5``: in float8_e5m2, each with a scale per tensor.

For example ``H128-GQA8-SWA4096``, ``H256-GQA8-SWA4096-1:1``, ``MLA512-R64-CLA2``,
``H128-GQA8-KV8``. Anything else (a per-layer window list, per-head scales, MLA head widths other
than 128) is given by fields, and the name is only a label.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from harness.lengths import LengthMix

# H128-MHA, H64-MQA-CLA2, MLA512-R64, MLA512-R64-Q1536-CLA2, H128-GQA8-SWA4096-5:1-KV8. Numbers have at most
# 9 digits: a longer one is no width or count, and Python refuses to convert thousands of digits.
PAPER_NAME_RE = re.compile(
    r"^(?:H(?P<head_dim>\d{1,9})-(?P<kind>MHA|MQA|GQA(?P<groups>\d{1,9}))"
    r"|MLA(?P<kv_lora_rank>\d{1,9})-R(?P<rope_dim>\d{1,9})(?:-Q(?P<q_lora_rank>\d{1,9}))?)"
    r"(?:-CLA(?P<sharing>\d{1,9}))?"
    r"(?:-SWA(?P<window>\d{1,9})(?:-(?P<local>\d{1,9}):(?P<global>\d{1,9}))?)?"
    r"(?:-KV8(?P<e5m2>E5)?)?$"
)
PAPER_NAME_SPELLING = (
    "{H<head_dim>-{MHA|MQA|GQA<n_kv_heads>}|MLA<kv_lora_rank>-R<qk_rope_head_dim>[-Q<q_lora_rank>]}"
    "[-CLA<sharing>][-SWA<window>[-<local>:<global>]][-KV8|-KV8E5]"
)

# 8-bit KV-cache dtypes (Micikevicius et al. 2022, "FP8 Formats for Deep Learning", §3) and the
# name suffix of each.
KV_DTYPES: tuple[str, ...] = ("float8_e4m3fn", "float8_e5m2")
KV_DTYPE_SUFFIX: dict[str, str] = {"float8_e4m3fn": "KV8", "float8_e5m2": "KV8E5"}
# Scale granularities of an 8-bit cache: one float32 per cache tensor, or one per KV head of it.
KV_SCALES: tuple[str, ...] = ("tensor", "head")
SCALE_BYTES = 4  # scales are float32

# DeepSeek-V2's head widths (arXiv 2405.04434, §3.1.2): defaults of an MLA variant.
MLA_DEFAULT_ROPE_DIM = 64
MLA_DEFAULT_NOPE_DIM = 128


@dataclass(frozen=True)
class PaperName:
    """What a variant name implies. ``n_kv_heads`` is None for MHA (it equals ``n_heads``);
    ``head_dim`` is None for MLA (its widths are in ``mla_*``)."""

    head_dim: int | None
    attention: str  # "mha" | "mqa" | "gqa" | "mla"
    n_kv_heads: int | None
    kv_sharing: int
    window: int | None = None  # -SWA<window>
    window_pattern: tuple[int, int] | None = None  # (local, global) of -SWA<window>-<l>:<g>; None: all layers
    kv_dtype: str | None = None  # -KV8 / -KV8E5
    kv_lora_rank: int | None = None  # MLA<kv_lora_rank>
    qk_rope_head_dim: int | None = None  # -R<qk_rope_head_dim>
    q_lora_rank: int | None = None  # -Q<q_lora_rank>


def parse_paper_name(name: str) -> PaperName | None:
    """Parse ``H128-GQA4-CLA2`` or ``MLA512-R64-SWA4096-KV8`` into its parts; None when it is not such a spelling.

    Numbers are not range-checked here (``-SWA0`` parses); resolving the variant rejects them.
    """
    match = PAPER_NAME_RE.match(name)
    if match is None:
        return None
    window = int(match.group("window")) if match.group("window") else None
    pattern = (int(match.group("local")), int(match.group("global"))) if match.group("local") else None
    kv_dtype = None
    if name.endswith(("-KV8", "-KV8E5")):
        kv_dtype = "float8_e5m2" if match.group("e5m2") else "float8_e4m3fn"
    sharing = int(match.group("sharing") or 1)
    if match.group("kv_lora_rank") is not None:
        return PaperName(
            head_dim=None,
            attention="mla",
            n_kv_heads=None,
            kv_sharing=sharing,
            window=window,
            window_pattern=pattern,
            kv_dtype=kv_dtype,
            kv_lora_rank=int(match.group("kv_lora_rank")),
            qk_rope_head_dim=int(match.group("rope_dim")),
            q_lora_rank=int(match.group("q_lora_rank")) if match.group("q_lora_rank") else None,
        )
    kind = match.group("kind")
    attention = "gqa" if kind.startswith("GQA") else kind.lower()
    n_kv_heads = {"mha": None, "mqa": 1, "gqa": int(match.group("groups") or 0)}[attention]
    return PaperName(
        head_dim=int(match.group("head_dim")),
        attention=attention,
        n_kv_heads=n_kv_heads,
        kv_sharing=sharing,
        window=window,
        window_pattern=pattern,
        kv_dtype=kv_dtype,
    )


def sharing_map(n_layers: int, kv_sharing: int) -> tuple[int, ...]:
    """KV map for a CLA sharing factor: groups of ``kv_sharing`` adjacent layers, first one produces.

    With s not dividing L the last group is shorter, so there are ceil(L/s) producers (paper §2.2).
    ``sharing_map(5, 2) == (0, 0, 2, 2, 4)``.
    """
    return tuple((layer // kv_sharing) * kv_sharing for layer in range(n_layers))


def window_layers(n_layers: int, window: int, pattern: tuple[int, int] | None = None) -> tuple[int | None, ...]:
    """Per-layer windows for ``window`` over every layer, or a repeating pattern of local then global layers.

    ``pattern = (l, g)``: in each run of l + g layers the first l are windowed and the last g are
    global (None). ``window_layers(4, 8, (1, 1)) == (8, None, 8, None)`` (Gemma 2); ``(5, 1)`` is
    Gemma 3's five local layers to one global.
    """
    if pattern is None:
        return (window,) * n_layers
    local, global_ = pattern
    return tuple(window if layer % (local + global_) < local else None for layer in range(n_layers))


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


def window_map_problem(kv_layers: tuple[int, ...], windows: tuple[int | None, ...]) -> tuple[int, str] | None:
    """First layer whose window is not allowed, as (index, reason); None when every window is valid.

    A window is a positive number of positions, or None (global). A consumer attends over its
    producer's cache, which holds only the producer's window, so it must have the same window.
    """

    def spelled(window: int | None) -> str:
        return "global" if window is None else f"window {window}"

    for layer, window in enumerate(windows):
        if window is not None and window < 1:
            return layer, f"layer {layer} has window {window}; a window is a positive number of positions"
        source = kv_layers[layer]
        if windows[source] != window:
            return (
                layer,
                f"layer {layer} ({spelled(window)}) reads the cache of layer {source} ({spelled(windows[source])}); "
                "a consumer must have its producer's window",
            )
    return None


@dataclass(frozen=True)
class MLAShape:
    """Widths of multi-head latent attention (DeepSeek-V2, arXiv 2405.04434, §2.1, eqs. 9-19).

    Per token a producer caches the latent c^KV (``kv_lora_rank`` = d_c) and one rotary key k^R
    (``qk_rope_head_dim`` = d_h^R), both shared by all heads. Each head's key is [W^UK c; k^R] and
    its value W^UV c; its query is [q^C; q^R], from the hidden state directly or through a
    compressed query c^Q of ``q_lora_rank`` = d_c'.
    """

    kv_lora_rank: int  # d_c: width of the cached latent
    qk_rope_head_dim: int  # d_h^R: rotary part of each head's query and of the one shared key
    qk_nope_head_dim: int  # d_h: non-rotary part of each head's query and key
    v_head_dim: int  # each head's value width
    q_lora_rank: int | None = None  # d_c': compressed query width; None: queries from the hidden state

    def __post_init__(self) -> None:
        for name in ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"MLA {name} must be positive, got {getattr(self, name)}")
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"MLA qk_rope_head_dim must be even (rotary pairs), got {self.qk_rope_head_dim}")
        if self.q_lora_rank is not None and self.q_lora_rank < 1:
            raise ValueError(f"MLA q_lora_rank must be positive, got {self.q_lora_rank}")

    @property
    def latent_width(self) -> int:
        """Elements cached per token per producer: d_c + d_h^R (arXiv 2405.04434, table 1)."""
        return self.kv_lora_rank + self.qk_rope_head_dim


@dataclass(frozen=True)
class Variant:
    """A fully resolved attention configuration for an ``n_layers``-deep stack."""

    name: str
    head_dim: int  # width of one head's query and key (MLA: qk_nope_head_dim + qk_rope_head_dim)
    n_heads: int  # query heads per layer
    n_kv_heads: int  # key/value heads per producer layer (MHA: n_heads, MQA: 1, GQA-g: g; MLA: 1 latent)
    kv_layers: tuple[int, ...]  # entry i: the layer whose KV cache layer i reads
    layer_windows: tuple[int | None, ...] = ()  # entry i: layer i's window (None: global); () means all global
    kv_dtype: str | None = None  # cache dtype when it differs from the weights' (float8_e4m3fn, float8_e5m2)
    kv_scale: str = "tensor"  # scale granularity of an 8-bit cache: "tensor" or "head"
    mla: MLAShape | None = None  # set for multi-head latent attention
    page_size: int | None = None  # positions per cache page (harness/model/paged.py); None: contiguous
    lengths: LengthMix | None = None  # each sequence's context in a ragged batch (harness/lengths.py); None: all alike
    q_len: int = 1  # new tokens per sequence per step (sweep.q_len): 1 is a decode step, more a verification step
    # sweep.prefill: the step is the whole prompt (context_len tokens per sequence) over an empty cache
    prefill: bool = False
    # sweep.prefill_chunk: a chunked-prefill step, sequence 0 adding this many prompt tokens, the others one each
    chunk: int | None = None

    def __post_init__(self) -> None:
        if self.layer_windows and all(window is None for window in self.layer_windows):
            object.__setattr__(self, "layer_windows", ())  # all global: one spelling, so equal variants compare equal
        if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        problem = kv_map_problem(self.kv_layers)
        if problem is not None:
            raise ValueError(problem[1])
        if self.layer_windows and len(self.layer_windows) != len(self.kv_layers):
            raise ValueError(f"{len(self.layer_windows)} layer windows for {len(self.kv_layers)} layers")
        problem = window_map_problem(self.kv_layers, self.windows)
        if problem is not None:
            raise ValueError(problem[1])
        if self.kv_dtype is not None and self.kv_dtype not in KV_DTYPES:
            raise ValueError(f"kv_dtype {self.kv_dtype!r} is not one of {', '.join(KV_DTYPES)}")
        if self.kv_scale not in KV_SCALES:
            raise ValueError(f"kv_scale {self.kv_scale!r} is not one of {', '.join(KV_SCALES)}")
        if self.page_size is not None and self.page_size < 1:
            raise ValueError(f"page_size must be positive, got {self.page_size}")
        if self.q_len < 1:
            raise ValueError(f"q_len must be positive, got {self.q_len}")
        if self.prefill and self.q_len != 1:
            raise ValueError(f"a prefill step takes the whole prompt, not q_len {self.q_len}")
        if self.chunk is not None and (self.chunk < 1 or self.prefill or self.q_len != 1):
            raise ValueError(
                f"a chunked-prefill step takes a positive chunk beside one token per other sequence, got chunk "
                f"{self.chunk} with prefill {self.prefill} and q_len {self.q_len}"
            )
        if self.mla is not None:
            if self.n_kv_heads != 1:
                raise ValueError(
                    f"an MLA variant caches one latent per token, so n_kv_heads is 1, not {self.n_kv_heads}"
                )
            if self.head_dim != self.mla.qk_nope_head_dim + self.mla.qk_rope_head_dim:
                raise ValueError(
                    f"an MLA variant's head_dim is qk_nope_head_dim + qk_rope_head_dim "
                    f"({self.mla.qk_nope_head_dim + self.mla.qk_rope_head_dim}), not {self.head_dim}"
                )

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
        if self.mla is not None:
            return "mla"
        if self.n_kv_heads == self.n_heads:
            return "mha"
        return "mqa" if self.n_kv_heads == 1 else "gqa"

    @property
    def windows(self) -> tuple[int | None, ...]:
        """Each layer's window (None: global), ``n_layers`` entries."""
        return self.layer_windows or (None,) * self.n_layers

    @property
    def is_windowed(self) -> bool:
        return any(window is not None for window in self.windows)

    @property
    def rope_dim(self) -> int:
        """Width the rotary embedding turns: the whole head, or MLA's decoupled rotary part."""
        return self.mla.qk_rope_head_dim if self.mla is not None else self.head_dim

    @property
    def cache_width(self) -> int:
        """Elements one producer caches per token: K and V of every KV head, or MLA's latent and rotary key."""
        if self.mla is not None:
            return self.mla.latent_width
        return 2 * self.n_kv_heads * self.head_dim

    @property
    def score_width(self) -> int:
        """Width of each query head against the cache at decode: head_dim, or for MLA's absorbed form
        (W^UK folded into the query) d_c + d_h^R (arXiv 2405.04434, §2.1.2, "absorb")."""
        return self.mla.latent_width if self.mla is not None else self.head_dim

    @property
    def value_width(self) -> int:
        """Width each query head reads from the cache as its value: head_dim, or MLA's latent d_c."""
        return self.mla.kv_lora_rank if self.mla is not None else self.head_dim

    @property
    def scales_per_producer(self) -> int:
        """float32 scales an 8-bit cache keeps per producer: per cache tensor (K and V; MLA's one latent
        tensor), one or one per KV head. 0 for a cache at the weights' precision."""
        if self.kv_dtype is None:
            return 0
        tensors = 1 if self.mla is not None else 2
        return tensors * (self.n_kv_heads if self.kv_scale == "head" else 1)

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

    def window_spelling(self) -> str | None:
        """``-SWA4096`` or ``-SWA4096-5:1`` when the windows follow a name's pattern; "" when global;
        None when only a per-layer list says them."""
        windows = self.windows
        sizes = {w for w in windows if w is not None}
        if not sizes:
            return ""
        if len(sizes) > 1:
            return None
        window = sizes.pop()
        if windows == window_layers(self.n_layers, window):
            return f"-SWA{window}"
        for period in range(2, self.n_layers + 1):
            local = sum(1 for w in windows[:period] if w is not None)
            if 0 < local < period and windows == window_layers(self.n_layers, window, (local, period - local)):
                return f"-SWA{window}-{local}:{period - local}"
        return None

    def describe(self) -> str:
        """The name-grammar spelling of this variant, with the map or windows spelled out where the grammar has none."""
        if self.mla is not None:
            base = f"MLA{self.mla.kv_lora_rank}-R{self.mla.qk_rope_head_dim}"
            if self.mla.q_lora_rank is not None:
                base += f"-Q{self.mla.q_lora_rank}"
            if (self.mla.qk_nope_head_dim, self.mla.v_head_dim) != (MLA_DEFAULT_NOPE_DIM, MLA_DEFAULT_NOPE_DIM):
                base += f"(nope{self.mla.qk_nope_head_dim},v{self.mla.v_head_dim})"
        else:
            kind = {"mha": "MHA", "mqa": "MQA", "gqa": f"GQA{self.n_kv_heads}"}[self.attention]
            base = f"H{self.head_dim}-{kind}"
        s = self.uniform_sharing()
        sharing = "" if s == 1 else f"-CLA{s}" if s else f"-KV{list(self.kv_layers)}"
        windows = self.window_spelling()
        if windows is None:
            windows = "-SWA" + str(["global" if w is None else w for w in self.windows]).replace("'", "")
        kv = f"-{KV_DTYPE_SUFFIX[self.kv_dtype]}" if self.kv_dtype is not None else ""
        if self.kv_dtype is not None and self.kv_scale == "head":
            kv += "(per-head scales)"
        pages = f"-P{self.page_size}" if self.page_size is not None else ""
        ragged = f"-{self.lengths.label}" if self.lengths is not None and self.lengths.ragged else ""
        step = f"-T{self.q_len}" if self.q_len > 1 else "-prefill" if self.prefill else ""
        if self.chunk is not None:
            step = f"-chunk{self.chunk}"
        return f"{base}{sharing}{windows}{kv}{ragged}{pages}{step}"

    def to_payload(self) -> dict[str, Any]:
        """Plain data for crossing a process boundary; :meth:`from_payload` is its inverse."""
        return {
            "name": self.name,
            "head_dim": self.head_dim,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "kv_layers": list(self.kv_layers),
            "layer_windows": list(self.layer_windows),
            "kv_dtype": self.kv_dtype,
            "kv_scale": self.kv_scale,
            "mla": None if self.mla is None else asdict(self.mla),
            "page_size": self.page_size,
            "lengths": None if self.lengths is None else asdict(self.lengths),
            "q_len": self.q_len,
            "prefill": self.prefill,
            "chunk": self.chunk,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Variant:
        mla = payload.get("mla")
        return cls(
            name=payload["name"],
            head_dim=payload["head_dim"],
            n_heads=payload["n_heads"],
            n_kv_heads=payload["n_kv_heads"],
            kv_layers=tuple(payload["kv_layers"]),
            layer_windows=tuple(payload.get("layer_windows") or ()),
            kv_dtype=payload.get("kv_dtype"),
            kv_scale=payload.get("kv_scale", "tensor"),
            mla=None if mla is None else MLAShape(**mla),
            page_size=payload.get("page_size"),
            lengths=_length_mix(payload.get("lengths")),
            q_len=payload.get("q_len", 1),
            prefill=payload.get("prefill", False),
            chunk=payload.get("chunk"),
        )


def _length_mix(payload: dict[str, Any] | None) -> LengthMix | None:
    if payload is None:
        return None
    return LengthMix(payload["kind"], tuple(payload.get("fractions", ())), payload.get("seed", 0))


def producer_count(n_layers: int, kv_sharing: int) -> int:
    """ceil(L/s): producers for sharing factor s over L layers."""
    return math.ceil(n_layers / kv_sharing)
