"""The attention op: the eager reference against a per-query loop, every backend against eager."""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from torch import Tensor

from harness.model import native
from harness.model.attention import attend, available_backends, resolve_backend
from harness.model.decode_kernels import split_kv_decode

CPU_BACKENDS = available_backends("cpu")
FAST_BACKENDS = tuple(b for b in CPU_BACKENDS if b != "eager")
HEADS = {"mha": (4, 4), "gqa": (4, 2), "mqa": (4, 1)}  # (n_heads, n_kv_heads)
# (new tokens T, start_pos): a decode step, a prompt, and a chunk appended after earlier tokens
STEPS = {"decode": (1, 9), "prefill": (5, 0), "chunk": (4, 6)}
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}
HEAD_DIM = 16
CACHE_LEN = 16


def make_qkv(n_heads: int, n_kv_heads: int, n_new: int, dtype: torch.dtype, seed: int = 0) -> tuple[Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(2, n_heads, n_new, HEAD_DIM, generator=generator).to(dtype)
    k = torch.randn(2, n_kv_heads, CACHE_LEN, HEAD_DIM, generator=generator).to(dtype)
    v = torch.randn(2, n_kv_heads, CACHE_LEN, HEAD_DIM, generator=generator).to(dtype)
    return q, k, v


def loop_reference(q: Tensor, k: Tensor, v: Tensor, start_pos: int) -> Tensor:
    """One query at a time in float64: head h reads KV head h // group, query t sees keys 0 .. start_pos + t."""
    q, k, v = q.double(), k.double(), v.double()
    batch_size, n_heads, n_new, head_dim = q.shape
    group = n_heads // k.shape[1]
    out = torch.empty_like(q)
    for b in range(batch_size):
        for h in range(n_heads):
            for t in range(n_new):
                keys = k[b, h // group, : start_pos + t + 1]  # [start_pos + t + 1, head_dim]
                values = v[b, h // group, : start_pos + t + 1]  # [start_pos + t + 1, head_dim]
                weights = torch.softmax(keys @ q[b, h, t] / math.sqrt(head_dim), dim=0)
                out[b, h, t] = weights @ values
    return out


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("heads", HEADS)
def test_eager_attention_equals_a_per_query_softmax_reference(heads: str, step: str) -> None:
    n_new, start_pos = STEPS[step]
    q, k, v = make_qkv(*HEADS[heads], n_new, torch.float32)
    out = attend(q, k, v, start_pos=start_pos, backend="eager")
    torch.testing.assert_close(out.double(), loop_reference(q, k, v, start_pos), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", TOLERANCE, ids=str)
@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_every_backend_agrees_with_eager(backend: str, heads: str, step: str, dtype: torch.dtype) -> None:
    n_new, start_pos = STEPS[step]
    q, k, v = make_qkv(*HEADS[heads], n_new, dtype)
    expected = attend(q, k, v, start_pos=start_pos, backend="eager")
    out = attend(q, k, v, start_pos=start_pos, backend=backend)
    assert out.shape == q.shape and out.dtype == dtype
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out.float(), expected.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_attention_reads_no_cache_position_past_the_new_tokens(backend: str, step: str) -> None:
    n_new, start_pos = STEPS[step]
    q, k, v = make_qkv(4, 2, n_new, torch.float32)
    expected = attend(q, k, v, start_pos=start_pos, backend=backend)
    k[:, :, start_pos + n_new :] = float("nan")
    v[:, :, start_pos + n_new :] = float("nan")
    torch.testing.assert_close(attend(q, k, v, start_pos=start_pos, backend=backend), expected, atol=0, rtol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_attention_rejects_new_tokens_that_do_not_fit_the_cache(backend: str) -> None:
    q, k, v = make_qkv(4, 2, 3, torch.float32)
    with pytest.raises(ValueError, match="do not fit"):
        attend(q, k, v, start_pos=CACHE_LEN - 2, backend=backend)


def test_flex_backend_on_cpu_raises_an_error_saying_it_needs_cuda() -> None:
    q, k, v = make_qkv(4, 2, 1, torch.float32)
    with pytest.raises(ValueError, match="needs CUDA"):
        attend(q, k, v, start_pos=3, backend="flex")


def test_unknown_backend_is_rejected_with_the_known_ones_named() -> None:
    q, k, v = make_qkv(4, 2, 1, torch.float32)
    with pytest.raises(ValueError, match="eager, sdpa, grouped, native, flex"):
        attend(q, k, v, start_pos=3, backend="fused")


def test_available_backends_leave_out_flex_on_cpu_and_native_on_cuda() -> None:
    assert set(available_backends("cpu")) == {"eager", "sdpa", "grouped", "native"}
    assert set(available_backends("cuda")) == {"eager", "sdpa", "grouped", "flex"}


def test_resolve_backend_maps_auto_to_native_on_cpu_and_sdpa_on_cuda_and_refuses_the_wrong_device() -> None:
    assert resolve_backend("auto", "cpu") == "native"
    assert resolve_backend("auto", "cuda") == "sdpa"
    assert resolve_backend("grouped", "cpu") == "grouped"
    with pytest.raises(ValueError, match="'flex' needs CUDA"):
        resolve_backend("flex", "cpu")
    with pytest.raises(ValueError, match="'native' runs on CPU only"):
        resolve_backend("native", "cuda")


def test_without_a_compiler_native_is_left_out_and_auto_falls_back_to_grouped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    assert "native" not in available_backends("cpu")
    assert resolve_backend("auto", "cpu") == "grouped"
    with pytest.raises(ValueError, match="'native' cannot be built here"):
        resolve_backend("native", "cpu")
    with pytest.raises(native.NativeUnavailable, match="no C\\+\\+ compiler"):
        native.load.__wrapped__()


# (batch_size, n_heads, n_kv_heads): few rows (cut into parts, one row at a time in float32) and many rows
KERNEL_SHAPES = {
    "mqa-b1": (1, 4, 1),
    "gqa-b2": (2, 4, 2),
    "gqa-b4": (4, 4, 2),  # grouped heads, as many rows as rows_per_call: still cut into parts
    "gqa-b5": (5, 4, 2),  # grouped heads, more rows than rows_per_call: one matmul per pass
    "mha-b3": (3, 6, 6),
}


@pytest.mark.parametrize("n_valid", (1, 7, 8, 9, 40))
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("shape", KERNEL_SHAPES)
def test_split_kv_decode_agrees_with_eager_across_chunk_and_part_boundaries(
    shape: str, dtype: torch.dtype, n_valid: int
) -> None:
    batch_size, n_heads, n_kv_heads = KERNEL_SHAPES[shape]
    generator = torch.Generator().manual_seed(1)
    q = torch.randn(batch_size, n_heads, 1, HEAD_DIM, generator=generator).to(dtype)
    k = torch.randn(batch_size, n_kv_heads, 48, HEAD_DIM, generator=generator).to(dtype)
    v = torch.randn(batch_size, n_kv_heads, 48, HEAD_DIM, generator=generator).to(dtype)
    expected = attend(q, k, v, start_pos=n_valid - 1, backend="eager")
    # parts of 4 positions and float32 staging chunks of 8 positions per row: many boundaries, a ragged tail
    chunk_bytes = 8 * 4 * HEAD_DIM * batch_size * n_kv_heads
    out = split_kv_decode(
        q,
        k[:, :, :n_valid],
        v[:, :, :n_valid],
        upcast_chunk_bytes=chunk_bytes,
        part_len=4,
        rows_per_call=8,
        direct_bytes=0,
    )
    assert out.shape == q.shape and out.dtype == dtype
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out.float(), expected.float(), atol=tol, rtol=tol)


def test_split_kv_decode_refuses_more_than_one_new_query() -> None:
    q, k, v = make_qkv(4, 2, 2, torch.float32)
    with pytest.raises(ValueError, match="one new query"):
        split_kv_decode(q, k, v)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", TOLERANCE, ids=str)
@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("backend", ("sdpa", "grouped", pytest.param("flex", marks=pytest.mark.flex)))
def test_every_backend_agrees_with_eager_on_cuda(backend: str, heads: str, step: str, dtype: torch.dtype) -> None:
    n_new, start_pos = STEPS[step]
    q, k, v = (t.cuda() for t in make_qkv(*HEADS[heads], n_new, dtype))
    expected = attend(q, k, v, start_pos=start_pos, backend="eager")
    out = attend(q, k, v, start_pos=start_pos, backend=backend)
    # TF32 matmuls on CUDA make float32 looser than on CPU
    tol = max(TOLERANCE[dtype], 1e-3)
    torch.testing.assert_close(out.float(), expected.float(), atol=tol, rtol=tol)


# (batch_size, n_heads, n_kv_heads): every register tile of query heads (4, 2, 1) and their mixes
NATIVE_SHAPES = {
    "mha": (2, 3, 3),
    "gqa2": (1, 4, 2),
    "gqa3": (2, 6, 2),  # a tile of 2 and one of 1 per KV head
    "mqa4": (1, 4, 1),
    "mqa7": (1, 7, 1),  # tiles of 4, 2 and 1
    "mqa8": (3, 8, 1),  # two tiles of 4
}


@pytest.mark.parametrize("n_splits", (0, 1, 3))
@pytest.mark.parametrize("n_valid", (1, 31, 32, 33, 100, 300))
@pytest.mark.parametrize("dtype", TOLERANCE, ids=str)
@pytest.mark.parametrize("shape", NATIVE_SHAPES)
def test_native_kernel_agrees_with_a_float64_reference_across_blocks_splits_and_tiles(
    shape: str, dtype: torch.dtype, n_valid: int, n_splits: int
) -> None:
    batch_size, n_heads, n_kv_heads = NATIVE_SHAPES[shape]
    generator = torch.Generator().manual_seed(2)
    head_dim = 48  # three 16-element steps: the value tiles of 64 elements have a tail
    q = torch.randn(batch_size, n_heads, 1, head_dim, generator=generator).to(dtype)
    # a slice of a longer cache: batch and head strides are not those of a contiguous [.., n_valid, ..]
    k = torch.randn(batch_size, n_kv_heads, 320, head_dim, generator=generator).to(dtype)[:, :, :n_valid]
    v = torch.randn(batch_size, n_kv_heads, 320, head_dim, generator=generator).to(dtype)[:, :, :n_valid]
    out = native.decode_attention(q, k, v, n_splits)
    assert out.dtype == dtype and out.shape == q.shape
    tolerance = TOLERANCE[dtype]
    torch.testing.assert_close(out.double(), loop_reference(q, k, v, n_valid - 1), atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("n_heads", (1, 2, 4, 7))
def test_native_kernel_rescales_when_a_later_block_holds_the_largest_score(n_heads: int) -> None:
    # Scores rise block after block by more than float32's exp range for the heads with a positive
    # query, and fall for those with a negative one: the first get a new running max in every block,
    # the second keep the one from their first block, in the same head tile. A split that rescaled the
    # wrong heads, or never rescaled, would be off by orders of magnitude.
    generator = torch.Generator().manual_seed(3)
    n_valid, head_dim = 200, 16
    signs = torch.tensor([1.0 if g % 2 == 0 else -1.0 for g in range(n_heads)])
    q = signs[None, :, None, None].expand(1, n_heads, 1, head_dim).contiguous()
    k = torch.linspace(0, 120, n_valid)[None, None, :, None].expand(1, 1, n_valid, head_dim).contiguous()
    v = torch.randn(1, 1, n_valid, head_dim, generator=generator)
    for n_splits in (1, 2, 7):
        out = native.decode_attention(q, k, v, n_splits)
        torch.testing.assert_close(out.double(), loop_reference(q, k, v, n_valid - 1), atol=1e-5, rtol=1e-5)


def test_native_kernel_refuses_what_it_does_not_take_with_the_reason() -> None:
    q, k, v = make_qkv(4, 2, 1, torch.float32)
    with pytest.raises(ValueError, match="head_dim a multiple of 16, got 8"):
        native.decode_attention(q[..., :8], k[..., :8], v[..., :8])
    with pytest.raises(ValueError, match="one new query per sequence, got 2"):
        native.decode_attention(torch.cat([q, q], dim=2), k, v)
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        native.decode_attention(q.double(), k.double(), v.double())


@pytest.mark.parametrize("n_new, head_dim", ((5, 16), (1, 8)), ids=("prefill", "head_dim-8"))
def test_native_backend_runs_steps_the_kernel_does_not_take_through_grouped(
    n_new: int, head_dim: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_kernel(*args: object) -> None:
        raise AssertionError("the kernel was called")

    monkeypatch.setattr(native, "run", no_kernel)
    q, k, v = make_qkv(4, 2, n_new, torch.float32)
    q, k, v = q[..., :head_dim], k[..., :head_dim], v[..., :head_dim]
    out = attend(q, k, v, start_pos=CACHE_LEN - n_new, backend="native")
    torch.testing.assert_close(out.double(), loop_reference(q, k, v, CACHE_LEN - n_new), atol=1e-5, rtol=1e-5)


def test_native_build_finds_the_ninja_package_when_its_folder_is_not_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    ninja = pytest.importorskip("ninja")
    monkeypatch.setenv("PATH", "/nonexistent")
    native._put_ninja_on_path()
    found = shutil.which("ninja")
    assert found is not None and Path(found).parent == Path(ninja.BIN_DIR)


def test_native_build_removes_a_lock_left_by_a_killed_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lock = tmp_path / "lock"
    lock.touch()
    old = time.time() - native.STALE_LOCK_S - 60
    os.utime(lock, (old, old))
    native._clear_stale_lock(lock)
    assert not lock.exists()
    assert f"removing {lock}" in capsys.readouterr().err


def test_native_build_waits_for_a_young_lock_until_it_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lock = tmp_path / "lock"
    lock.touch()
    polls: list[float] = []

    def sleep(seconds: float) -> None:  # the other build finishes after three polls
        polls.append(seconds)
        if len(polls) == 3:
            lock.unlink()

    monkeypatch.setattr(native.time, "sleep", sleep)
    native._clear_stale_lock(lock)
    assert len(polls) == 3
    assert "another process is building" in capsys.readouterr().err


def test_native_build_lock_is_in_pytorchs_build_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert native._build_lock("attnbench_decode_x") == tmp_path / "attnbench_decode_x" / "lock"


def test_native_build_removes_a_lock_that_grows_stale_while_it_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = tmp_path / "lock"
    lock.touch()

    def sleep(seconds: float) -> None:  # nobody removes it: it ages past the limit
        old = time.time() - native.STALE_LOCK_S - 1
        os.utime(lock, (old, old))

    monkeypatch.setattr(native.time, "sleep", sleep)
    native._clear_stale_lock(lock)
    assert not lock.exists()
