"""``attnbench hw``: print this machine's hardware target id and fingerprint (and, with --probe, its peak bandwidth)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from tabulate import tabulate

from harness.hardware import detect_target, fingerprint, resolve_device


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("hw", help="print the hardware target id and fingerprint of this machine")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device to describe")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--probe", action="store_true", help="also measure the peak memory bandwidth (not cached)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    target = detect_target(device)
    info: dict[str, Any] = {"target": target, "fingerprint": fingerprint(device)}
    if args.probe:
        from harness.measure.bandwidth import measure_peak

        info["peak_bandwidth"] = measure_peak(device, info["fingerprint"]).model_dump()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    rows = list(info["fingerprint"].items())
    rows += [(f"peak {name}", value) for name, value in info.get("peak_bandwidth", {}).items()]
    print(tabulate([(name, _cell(value)) for name, value in rows], headers=("field", "value"), tablefmt="simple"))
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
