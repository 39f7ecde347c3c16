"""`python -m distlm plan [presets] [key=value ...] [--measure] [--dry-run] [--json]`.

python -m distlm plan model=500m hardware=1x4090 train.seq_len=2048
python -m distlm plan model=tiny hardware=cpu --measure
python -m distlm plan model=1b hardware=8x5090-pcie parallel.strategy=fsdp2 --dry-run
"""

from __future__ import annotations

import argparse
import sys

from distlm.config import ConfigError
from distlm.config_loader import load_config
from distlm.hardware.presets import expand_auto
from distlm.plan import report
from distlm.plan.planner import (
    CHINCHILLA_TOKENS_PER_PARAM,
    DEFAULT_MEMORY_FRACTION,
    plan,
)


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    ap = argparse.ArgumentParser(
        prog="python -m distlm plan",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("overrides", nargs="*", help="presets and key=value (model=500m hardware=auto)")
    ap.add_argument(
        "--measure",
        action="store_true",
        help="run real steps on this device and print measured memory and tokens/s",
    )
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="build and shard every rank's model on the meta device (fake process group)",
    )
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument(
        "--memory-fraction",
        type=float,
        default=DEFAULT_MEMORY_FRACTION,
        help="share of the card the plan may fill (default %(default)s)",
    )
    ap.add_argument(
        "--tokens-per-param",
        type=float,
        default=CHINCHILLA_TOKENS_PER_PARAM,
        help="token budget in tokens per parameter (default %(default)s, Chinchilla)",
    )
    ap.add_argument("--steps", type=int, default=6, help="--measure: steps run (first 2 warm-up)")
    ap.add_argument(
        "--ranks", type=str, default="", help="--dry-run: ranks to build, e.g. 0,7 (default: all)"
    )
    args = ap.parse_args(argv)
    return args, args.overrides


def main(argv: list[str]) -> int:
    args, overrides = parse(argv[1:] if argv and argv[0] == "plan" else argv)
    try:
        overrides, why = expand_auto(overrides)
        if why:
            print(why, file=sys.stderr if args.json else sys.stdout)
        cfg = load_config(overrides)
    except ConfigError as e:
        print(f"distlm plan: {e}", file=sys.stderr)
        return 2
    rates = None
    if args.measure:  # plan offload with this host's optimizer step rates
        from distlm.plan.measure import format_host_rates, measure_host_rates

        rates = measure_host_rates()
        print(format_host_rates(rates), file=sys.stderr if args.json else sys.stdout)
    p = plan(cfg, args.memory_fraction, args.tokens_per_param, rates)
    print(report.plan_json(cfg, p) if args.json else report.format_plan(cfg, p))
    if args.measure:
        from distlm.plan.measure import format_measurement, measure

        print()
        print(format_measurement(cfg, p, measure(cfg, steps=args.steps)))
    if args.dry_run:
        from distlm.plan.dry_run import dry_run, format_dry_run

        ranks = [int(r) for r in args.ranks.split(",")] if args.ranks else None
        result = dry_run(cfg, ranks)
        print()
        print(format_dry_run(result))
        if not result.matches:
            return 1
    return 0
