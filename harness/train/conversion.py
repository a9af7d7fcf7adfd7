"""Converting a trained decoder into another variant of the same stack (harness/model/convert.py): fewer K/V
heads by mean-pooling within groups (Ainslie et al. 2023, §2.1), then a CLA map by dropping the consumers'
K/V projections (Brandon et al. 2024, §2.2)."""

from __future__ import annotations

from harness.model.convert import mha_to_gqa, to_cla
from harness.model.decoder import Decoder
from harness.scenario.quality import conversion_problem
from harness.variants import Variant


def convert(decoder: Decoder, target: Variant) -> Decoder:
    """``decoder`` as ``target``: K/V heads pooled, then consumers' K/V dropped; the target's name kept."""
    problem = conversion_problem(decoder.variant, target)
    if problem is not None:
        raise ValueError(problem)
    converted = decoder
    if target.n_kv_heads != decoder.variant.n_kv_heads:
        converted = mha_to_gqa(converted, target.n_kv_heads)
    if target.kv_layers != converted.variant.kv_layers:
        converted = to_cla(converted, target.kv_layers)
    converted.variant = target
    return converted
