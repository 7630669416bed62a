"""The `cairn` command."""
from __future__ import annotations

import argparse
import json
import re
import sys

UNITS = {"": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30}


def parse_size(text: str) -> int:
    """'64MiB', '512k', '1048576' -> bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 4096, 512KiB, 64MiB, 1GiB)")
    return int(match.group(1)) * UNITS[match.group(2).lower()]


def parse_profile(text: str) -> tuple[int, int]:
    """'8+3' -> (8, 3)."""
    match = re.fullmatch(r"(\d+)\+(\d+)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not an erasure profile: {text!r} (expected K+M, e.g. 8+3)")
    return int(match.group(1)), int(match.group(2))


def cmd_demo(args) -> int:
    from cluster import demo

    k, m = args.profile
    return 0 if demo.run(args.size, k, m, args.seed) else 1


def cmd_kernels(args) -> int:
    from cluster.codec import kernels

    info = {
        "reed_solomon": {"supported": kernels.rs_kernels_supported(), "selected": kernels.rs_kernel_name(kernels.rs_kernel())},
        "crc32c": {"supported": kernels.crc_kernels_supported(), "selected": kernels.crc_kernel_name(kernels.crc_kernel())},
    }
    if args.json:
        print(json.dumps(info))
    else:
        for name, entry in info.items():
            print(f"{name}: {entry['selected']} (this CPU supports: {', '.join(entry['supported'])})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cairn", description="Cairn: content-addressed, erasure-coded storage")
    parser.add_argument("--meta", default=None, metavar="ADDRS",
                        help="comma-separated meta addresses (default: $CAIRN_META, else the `cairn dev up` cluster "
                             "in ./.cairn, else 127.0.0.1:7400)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    commands = parser.add_subparsers(dest="command", required=True)
    from cluster import commands as objects

    objects.add_commands(commands)

    demo = commands.add_parser("demo", help="chunk, hash, erasure-code and rebuild a generated file (no cluster)")
    demo.add_argument("--size", type=parse_size, default=parse_size("256MiB"), help="file size (default 256MiB)")
    demo.add_argument("--profile", type=parse_profile, default=(8, 3), help="erasure profile K+M (default 8+3)")
    demo.add_argument("--seed", type=int, default=1, help="seed of the generated data and of the losses")
    demo.set_defaults(run=cmd_demo)

    kernels = commands.add_parser("kernels", help="which SIMD kernels this CPU runs")
    kernels.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    kernels.set_defaults(run=cmd_kernels)
    return parser


PASSTHROUGH = ("meta", "data", "simulate")  # commands whose arguments (--help too) go to another parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in PASSTHROUGH:
        args = build_parser().parse_args(argv[:1])
        args.rest = argv[1:]
    else:
        args = build_parser().parse_args(argv)
    from cluster.client.errors import CairnError

    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("cairn: interrupted", file=sys.stderr)
        return 130
    except (CairnError, ValueError, RuntimeError, OSError) as error:
        print(f"cairn: {type(error).__name__}: {error}" if isinstance(error, CairnError) else f"cairn: {error}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
