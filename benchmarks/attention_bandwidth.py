"""Achieved memory bandwidth of core decode attention, per backend, against this device's measured peak.

For MHA, GQA and MQA caches of at least 256 MB, at batch 1 and a larger batch, times
``Decoder.core_attention`` (the attention op over the cache, all L layers, one new token per
sequence) for every backend, and prints achieved bandwidth = attention bytes per step (K and V
read at every valid position by every layer, plus query read and output write:
harness.accounting.attention_bytes_per_step) / median latency, and its fraction of the measured
read peak (harness.measure.bandwidth).

    python benchmarks/attention_bandwidth.py --dtype float32 bfloat16
    python benchmarks/attention_bandwidth.py --quick
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tabulate import tabulate

from harness.accounting import attention_bytes_per_step, kv_bytes_per_token
from harness.measure.autotune import choose_backend
from harness.measure.bandwidth import PeakBandwidth, measure_peak_cpu, measure_peak_cuda
from harness.measure.timing import time_cpu, time_cuda
from harness.model import available_backends, build_decoder
from harness.scenario.schema import ModelSpec
from harness.variants import Variant

MIN_CACHE_BYTES = 256 * 2**20
# A small stack whose heads are 128 wide. On CPUs, decode attention stays memory-bound only while
# few query heads share a KV head: its arithmetic intensity is group/2 FLOP per cache byte in float32
# and group in bfloat16 (4 · group · head_dim FLOPs per position against 2 · head_dim elements).
CPU_MODEL = ModelSpec(d_model=512, n_layers=4, d_ff=1376, vocab_size=8192)
CUDA_MODEL = ModelSpec(d_model=4096, n_layers=8, d_ff=11008, vocab_size=32000)


@dataclass(frozen=True)
class Config:
    variant: Variant
    batch_size: int
    context_len: int


def variants(model: ModelSpec, head_dim: int = 128) -> list[Variant]:
    n_heads = model.d_model // head_dim
    layers = tuple(range(model.n_layers))
    return [
        Variant(name=f"H{head_dim}-MHA", head_dim=head_dim, n_heads=n_heads, n_kv_heads=n_heads, kv_layers=layers),
        Variant(name=f"H{head_dim}-GQA2", head_dim=head_dim, n_heads=n_heads, n_kv_heads=2, kv_layers=layers),
        Variant(name=f"H{head_dim}-MQA", head_dim=head_dim, n_heads=n_heads, n_kv_heads=1, kv_layers=layers),
    ]


def configs(model: ModelSpec, dtype: str, batch_sizes: tuple[int, ...]) -> list[Config]:
    """Each variant at each batch size, with the shortest context (a multiple of 1024) whose cache is >= 256 MB."""
    out = []
    for variant in variants(model):
        for batch_size in batch_sizes:
            per_sequence_token = kv_bytes_per_token(variant, dtype) * batch_size
            context_len = math.ceil(MIN_CACHE_BYTES / per_sequence_token / 1024) * 1024
            out.append(Config(variant, batch_size, context_len))
    return out


def timer(device: str, window_s: float) -> Callable[[Callable[[], object]], float]:
    """Median seconds per call over a short window."""

    def median_s(fn: Callable[[], object]) -> float:
        if device == "cuda":
            timings = time_cuda(fn, warmup_s=window_s / 2, min_time_s=window_s, min_samples=5, max_samples=200)
            return statistics.median(timings.device_s)
        return statistics.median(
            time_cpu(fn, warmup_s=window_s / 2, min_time_s=window_s, min_samples=5, max_samples=200)
        )

    return median_s


def measure(config: Config, dtype: str, device: str, backends: tuple[str, ...], window_s: float) -> dict[str, float]:
    """Median core-attention latency per backend, plus what ``auto`` picks (under the key 'auto:<backend>')."""
    model = CUDA_MODEL if device == "cuda" else CPU_MODEL
    decoder = build_decoder(model, config.variant, dtype=dtype, device=device)
    cache = decoder.allocate_cache(config.batch_size, config.context_len + 1)
    decoder.fill_cache_synthetic(cache, config.context_len + 1)
    variant = config.variant
    q = torch.randn(config.batch_size, variant.n_heads, 1, variant.head_dim, device=device).to(decoder.dtype)
    median_s = timer(device, window_s)
    latencies = {}
    for backend in backends:
        decoder.backend = backend
        latencies[backend] = median_s(lambda: decoder.core_attention(q, cache, config.context_len))
    choice = choose_backend(decoder, cache, config.context_len, candidates=tuple(b for b in backends if b != "eager"))
    latencies[f"auto:{choice.backend}"] = latencies[choice.backend]
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dtype", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16", "float16"]
    )
    parser.add_argument("--quick", action="store_true", help="batch 1 only, shorter timing windows")
    parser.add_argument("--backends", default=None, help="comma-separated; default: every available but eager")
    parser.add_argument("--window-s", type=float, default=None, help="timed window per backend and config")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backends = tuple(
        args.backends.split(",") if args.backends else (b for b in available_backends(device) if b != "eager")
    )
    window_s = args.window_s or (0.3 if args.quick else 1.0)
    batch_sizes = (1,) if args.quick else (1, 4)
    peak: PeakBandwidth = measure_peak_cuda() if device == "cuda" else measure_peak_cpu()
    print(
        f"device {device}, {torch.get_num_threads()} threads; measured peak read {peak.read_gbps:.1f} GB/s, "
        f"copy {peak.copy_gbps:.1f} GB/s ({peak.method})"
    )
    rows = []
    model = CUDA_MODEL if device == "cuda" else CPU_MODEL
    for dtype in args.dtype:
        for config in configs(model, dtype, batch_sizes):
            latencies = measure(config, dtype, device, backends, window_s)
            nbytes = attention_bytes_per_step(config.variant, dtype, config.batch_size, config.context_len)
            cache_mb = kv_bytes_per_token(config.variant, dtype) * config.batch_size * (config.context_len + 1) / 2**20
            for backend, latency_s in latencies.items():
                gbps = nbytes / latency_s / 1e9
                rows.append(
                    [
                        dtype,
                        config.variant.name,
                        config.batch_size,
                        config.context_len,
                        f"{cache_mb:.0f}",
                        backend,
                        f"{latency_s * 1e3:.2f}",
                        f"{gbps:.1f}",
                        f"{gbps / peak.read_gbps:.0%}",
                    ]
                )
    headers = ["dtype", "variant", "batch", "context", "cache MiB", "backend", "median ms", "GB/s", "of read peak"]
    print(tabulate(rows, headers=headers))


if __name__ == "__main__":
    main()
