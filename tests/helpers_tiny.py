"""A scenario small enough that each of its cells measures in about a second: the executors', the
runner's and the merge's tests share it, with the variants and measure settings each needs."""

from __future__ import annotations

# Timing windows as short as a measurement allows: the plumbing is under test, not the numbers.
FAST_TIMING = """warmup_s = 0.01
min_time_s = 0.01
min_samples = 5
max_samples = 10
"""
DECODE_ONLY = 'metrics = ["decode"]\n' + FAST_TIMING


def tiny_scenario(variants: tuple[str, ...] = ("H16-MHA", "H16-MQA-CLA2"), measure: str = DECODE_ONLY) -> str:
    """Scenario "tiny": a 4-layer d_model 64 stack, ``variants`` at batch 1 and 2, context 32, sdpa, and the
    ``[measure]`` lines given (a ``{placeholder}`` in them survives for a later ``str.format``)."""
    listed = "".join(f'[[variant]]\nname = "{name}"\n' for name in variants)
    return (
        'name = "tiny"\n[model]\nd_model = 64\nn_layers = 4\nd_ff = 128\nvocab_size = 97\ndtype = "float32"\n'
        f'{listed}[sweep]\nbatch_size = [1, 2]\ncontext_len = [32]\nbackend = ["sdpa"]\n[measure]\n{measure}'
    )


TINY = tiny_scenario()
