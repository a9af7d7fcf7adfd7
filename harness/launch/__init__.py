"""Launchers above a run: whole runs started elsewhere (one Slurm array task per shard), then merged."""
