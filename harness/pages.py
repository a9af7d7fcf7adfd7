"""Page arithmetic of a paged KV cache (harness/model/paged.py). Pure functions, no torch.

A paged cache keeps each producer's K/V (or MLA latent) in a pool of pages of ``page_size`` positions,
and a block table per sequence that names the page of each run of ``page_size`` positions (Kwon et al.
2023, "Efficient Memory Management for Large Language Model Serving with PagedAttention", §4.1). A
sequence holds whole pages: the last one is only partly used (last-page waste). A layer with a
window keeps a ring of the pages its window can touch: the positions t - window + 1 .. t of a step
span at most ceil((window - 1) / page_size) + 1 pages, so that many pages are enough for every step.
"""

from __future__ import annotations

# Bytes of one block-table entry (an int64 page index).
BLOCK_TABLE_ENTRY_BYTES = 8


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def pages_per_sequence(window: int | None, positions: int, page_size: int) -> int:
    """Pages one sequence of a producer holds for ``positions`` cache positions: ceil(positions / page_size),
    or for a windowed producer at most the ring of ceil((window - 1) / page_size) + 1 pages its window touches."""
    full = ceil_div(positions, page_size)
    if window is None:
        return full
    return min(full, ceil_div(window - 1, page_size) + 1)


def ring_positions(window: int | None, positions: int, page_size: int) -> int:
    """Positions a sequence's pages span (pages · page_size): what its block table addresses."""
    return pages_per_sequence(window, positions, page_size) * page_size


def last_page_waste(window: int | None, positions: int, page_size: int) -> int:
    """Positions a sequence's pages hold beyond the ones it keeps: the unused tail of its last page
    (for a ring, the pages beyond the window's min(positions, window) positions)."""
    kept = positions if window is None else min(positions, window)
    return ring_positions(window, positions, page_size) - kept
