"""``kernelscale verify ORIG CONVERTED``: per-layer certificates of a conversion (kernelscale.verify)."""

from __future__ import annotations

import argparse
import json
import sys

from kernelscale.cli import EXIT_OK, Command, register_command
from kernelscale.errors import InvalidOptionError

EXIT_TOLERANCE = 1


def add_verify_options(p: argparse.ArgumentParser) -> None:
    """The measuring options shared by ``verify`` and ``convert --verify``."""
    p.add_argument("--tol", type=float, default=None, metavar="T",
                   help="exit with status 1 when a layer's structure error exceeds T (e.g. 0.05); default: report only")
    p.add_argument("--band", type=float, default=0.25, metavar="NU",
                   help="probes are band-limited to NU cycles per original pixel, 0 < NU <= 0.5 (default 0.25)")
    p.add_argument("--probes", type=int, default=4, metavar="N", help="random probes per layer (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the probes and of the channel subsample (default 0)")


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("original", metavar="ORIG", help="the checkpoint before conversion (file, shard index or folder)")
    p.add_argument("converted", metavar="CONVERTED", help="the converted checkpoint, which carries the manifest")
    add_verify_options(p)
    p.add_argument("--json", action="store_true", help="print JSON on stdout for scripts")


def report_and_exit_code(original: str, converted: str, args: argparse.Namespace, *, as_json: bool) -> int:
    """Verify, print the table (or JSON) and return 0, or 1 when a layer exceeds ``--tol``."""
    from kernelscale.verify import verify_checkpoints

    if args.probes < 1:
        raise InvalidOptionError(f"--probes must be at least 1, got {args.probes}")
    if args.tol is not None and not args.tol >= 0:
        raise InvalidOptionError(f"--tol must be a number >= 0, got {args.tol}")
    report = verify_checkpoints(original, converted, band=args.band, probes=args.probes, seed=args.seed)
    failures = report.failures(args.tol)
    if as_json:
        data = report.to_json()
        data.update(tol=args.tol, failures=[c.name for c in failures])
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print("\n".join(report.table()))
        for c in failures:
            print(f"kernelscale: {c.name}: structure error {c.structure_error:.3e} exceeds --tol {args.tol}", file=sys.stderr)
    return EXIT_TOLERANCE if failures else EXIT_OK


def run_verify(args: argparse.Namespace) -> int:
    return report_and_exit_code(args.original, args.converted, args, as_json=args.json)


register_command(Command(
    name="verify",
    help="measure, layer by layer, how well a converted checkpoint keeps the original's function",
    description="For every layer the converted checkpoint's manifest records: (a) the structure error "
                "rel||conv(U x, K') - U conv(x, K)|| on seeded random band-limited probes x, U the ideal upsampler; "
                "(b) the alias gain, K''s response above the original Nyquist frequency relative to K's; "
                "(c) the DC gain ratio. Exact in the frequency domain (periodic probes). Dilation scores 0 structure "
                "error (theorem T1), linear interpolation at most max|1 - c h_s| over the band (T3).",
    epilog="examples:\n"
           "  kernelscale verify unet.safetensors unet_x2.safetensors\n"
           "  kernelscale verify unet.safetensors unet_x2.safetensors --tol 0.05 --band 0.1\n"
           "  kernelscale verify model/ model_x2/ --json",
    add_arguments=_add_arguments,
    run=run_verify,
))
