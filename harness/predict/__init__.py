"""Predicting a cell's cost before measuring it: a cost model per hardware target, calibrated on its measured cells.

    results/<target>/*.json ──features──▶ [CellFeatures + measured] ──fit──▶ Calibration (calibration.json)
    Cell ──features──▶ CellFeatures ──Calibration or vendor figures──▶ Prediction

Decode-step and core-attention latency are ``combine(bytes / bandwidth, FLOPs / FLOP/s) + n_layers ·
layer overhead + step overhead`` (:mod:`harness.predict.costmodel`), from the exact accounting
(:mod:`harness.accounting`); peak memory and max batch are the accounting's bytes with a fitted fixed
and per-sequence term. Pure functions and plain data, no torch.
"""
