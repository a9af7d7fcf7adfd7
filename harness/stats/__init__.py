"""Statistics over raw samples: order statistics, intervals, paired signed-rank, seed statistics."""
