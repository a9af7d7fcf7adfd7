"""Statistics over raw samples: order statistics and intervals, paired signed-rank, seed statistics (numpy/scipy only)."""
