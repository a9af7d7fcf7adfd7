"""``attnbench hw``: print this machine's hardware target id and fingerprint (and, with --probe, its peak bandwidth).

Runs use the peak cached per target (harness/measure/bandwidth.py), measured once. ``--probe --save``
measures it again and replaces the cached one, for when the machine or its load has changed.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from tabulate import tabulate

from harness.errors import UserError
from harness.hardware import detect_target, fingerprint, resolve_device


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("hw", help="print the hardware target id and fingerprint of this machine")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device to describe")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--probe", action="store_true", help="also measure the peak memory bandwidth")
    parser.add_argument(
        "--save",
        action="store_true",
        help="with --probe: make the measured peak this target's cached peak, the one later runs use",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.save and not args.probe:
        raise UserError("stores what --probe measures; give both", field="--save")
    device = resolve_device(args.device)
    target = detect_target(device)
    info: dict[str, Any] = {"target": target, "fingerprint": fingerprint(device)}
    if args.probe:
        from harness.measure import bandwidth

        if args.save:  # the same probe as below, looked up at call time, written where runs read it
            peak = bandwidth.load_or_measure_peak(
                target, device, env=info["fingerprint"], force=True, measure=bandwidth.measure_peak
            )
            info["peak_bandwidth_cached_at"] = str(bandwidth.peak_cache_path(target, bandwidth.default_cache_dir()))
        else:
            peak = bandwidth.measure_peak(device, info["fingerprint"])
        info["peak_bandwidth"] = peak.model_dump()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    rows = list(info["fingerprint"].items())
    rows += [(f"peak {name}", value) for name, value in info.get("peak_bandwidth", {}).items()]
    if "peak_bandwidth_cached_at" in info:
        rows.append(("peak cached at", info["peak_bandwidth_cached_at"]))
    print(tabulate([(name, _cell(value)) for name, value in rows], headers=("field", "value"), tablefmt="simple"))
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
