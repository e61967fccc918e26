"""``kernelscale verify ORIG CONVERTED``: per-layer certificates of a conversion (kernelscale.verify)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Callable, Optional

from typing import TYPE_CHECKING

from kernelscale.cli_command import EXIT_OK, EXIT_TOLERANCE, Command
from kernelscale.errors import InvalidOptionError

if TYPE_CHECKING:  # kernelscale.verify imports torch: only the commands that measure load it
    from kernelscale.verify import LayerCertificate, VerifyReport

VERIFY_OPTIONS = ("tol", "band", "probes", "seed")
"""The measuring options (attribute names); on convert, giving any of them implies --verify."""


def _checked(parse: Callable[[str], Any], check: Callable[[Any], Any], expected: str) -> Callable[[str], Any]:
    """An argparse type: ``parse`` the text, then ``check`` it (kernelscale.verify's checks), so a bad
    value is a usage error at parse time, before convert writes anything."""

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        try:
            return check(value)
        except InvalidOptionError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def add_verify_options(p: Any) -> None:
    """The measuring options shared by ``verify`` and ``convert`` (where any of them implies
    ``--verify``). Defaults are None so that a given option can be told apart; see :func:`verify_requested`."""
    from kernelscale.verify import DEFAULT_BAND, DEFAULT_PROBES, DEFAULT_SEED, MAX_PROBES, check_band, check_probes, check_seed, check_tol

    p.add_argument("--tol", type=_checked(float, check_tol, "a number >= 0"), default=None, metavar="T",
                   help="exit with status 1 when a layer's structure error exceeds T (e.g. 0.05) or a measure is not a "
                        "number (NaN, inf); default: report only (a converted layer holding inf/NaN where the original "
                        "is finite is exit 1 either way)")
    p.add_argument("--band", type=_checked(float, check_band, "a number in (0, 0.5]"), default=None, metavar="NU",
                   help=f"probes are band-limited to NU cycles per original pixel, 0 < NU <= 0.5 (default {DEFAULT_BAND})")
    p.add_argument("--probes", type=_checked(int, check_probes, f"an integer from 1 to {MAX_PROBES}"), default=None, metavar="N",
                   help=f"random probes per layer, 1 <= N <= {MAX_PROBES} (default {DEFAULT_PROBES}); the time grows "
                        "linearly with N")
    p.add_argument("--seed", type=_checked(int, check_seed, "an integer >= 0"), default=None, metavar="S",
                   help=f"seed of the probes and of the channel subsample, S >= 0 (default {DEFAULT_SEED})")


def verify_requested(args: argparse.Namespace) -> bool:
    """``--verify``, or any measuring option, was given."""
    return bool(getattr(args, "verify", False)) or any(getattr(args, k, None) is not None for k in VERIFY_OPTIONS)


def _value(args: argparse.Namespace, key: str, default: Any) -> Any:
    value = getattr(args, key, None)
    return default if value is None else value


def measure(original: str, converted: str, args: argparse.Namespace) -> VerifyReport:
    """The report of ``verify ORIG CONVERTED`` with the measuring options of ``args``."""
    import torch

    from kernelscale.verify import DEFAULT_BAND, DEFAULT_PROBES, DEFAULT_SEED, verify_checkpoints

    # One torch thread while measuring: a layer's measures are a few dozen products of megabytes,
    # each slower split over threads that contend for the cores (docs/benchmarks.md, "verify": on
    # 2 busy cores, 20 layers of a small UNet took 12.0 s on 2 threads, 2.5 s on 1). Process-wide,
    # so only the command line does it, not kernelscale.verify.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return verify_checkpoints(original, converted, band=_value(args, "band", DEFAULT_BAND),
                                  probes=_value(args, "probes", DEFAULT_PROBES), seed=_value(args, "seed", DEFAULT_SEED))
    finally:
        torch.set_num_threads(threads)


def report_json(report: VerifyReport, tol: Optional[float]) -> dict[str, Any]:
    """The report as JSON-ready data, with ``tol`` and the layers that fail (``file: name`` in a
    folder). Measures that are not finite numbers are None: dump it with ``allow_nan=False``
    (:func:`dumps`)."""
    data = report.to_json()
    data.update(tol=tol, failures=[c.label for c in report.failures(tol)])
    return data


def dumps(data: Any) -> str:
    """Strict JSON (no NaN or Infinity, which strict parsers refuse): ValueError rather than invalid output."""
    return json.dumps(data, indent=2, sort_keys=True, allow_nan=False)


def failure_reason(c: LayerCertificate, tol: Optional[float]) -> str:
    """Why ``c`` fails (:meth:`LayerCertificate.fails`), in one line."""
    from kernelscale.verify import format_measure

    if c.broken:
        return (f"CONVERTED holds {c.nonfinite} non-finite value{'s' if c.nonfinite != 1 else ''} (inf or NaN) "
                "where ORIG's are all finite")
    if tol is not None and c.structure_error > tol:
        return f"structure error {c.structure_error:.3e} exceeds --tol {tol}"
    measures = (("structure error", c.structure_error), ("alias gain", c.alias_gain), ("dc gain ratio", c.dc_gain_ratio))
    bad = [f"{what} is {format_measure(value, '.3e')}" for what, value in measures if value is not None and not math.isfinite(value)]
    return f"{', '.join(bad)}: not a finite number, which fails --tol {tol}"


def print_report(report: VerifyReport, tol: Optional[float]) -> int:
    """The table on stdout, a line on stderr per failing layer; 0, or 1 when there is one."""
    print("\n".join(report.table()), flush=True)
    for c in report.failures(tol):
        print(f"kernelscale: {c.shown}: {failure_reason(c, tol)}", file=sys.stderr)
    return exit_code(report, tol)


def exit_code(report: VerifyReport, tol: Optional[float]) -> int:
    """0, or 1 (EXIT_TOLERANCE) when a layer fails: its structure error exceeds ``tol`` or one of its
    measures is not a finite number (under ``tol``), or, whatever ``tol``, its CONVERTED tensors
    hold inf/NaN where ORIG's are finite."""
    return EXIT_TOLERANCE if report.failures(tol) else EXIT_OK


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("original", metavar="ORIG",
                   help="the checkpoint before conversion, as given to convert: a file, a shard index or a folder")
    p.add_argument("converted", metavar="CONVERTED",
                   help="the converted checkpoint, as convert wrote it (its files carry the manifest); in folders, "
                        "each file is measured against the file at the same path in ORIG")
    add_verify_options(p)
    p.add_argument("--json", action="store_true", help="print JSON on stdout for scripts")


def run_verify(args: argparse.Namespace) -> int:
    report = measure(args.original, args.converted, args)
    if args.json:
        print(dumps(report_json(report, args.tol)))
        return exit_code(report, args.tol)
    return print_report(report, args.tol)


VERIFY_COMMAND = Command(
    name="verify",
    help="measure, layer by layer, how well a converted checkpoint keeps the original's function",
    description="For every layer the converted checkpoint's manifest records: (a) the structure error "
                "rel||conv(U x, K') - U conv(x, K)|| on seeded random band-limited probes x, U the ideal upsampler; "
                "(b) the alias gain, K''s response above the original Nyquist frequency relative to K's; "
                "(c) the DC gain ratio. Exact in the frequency domain (periodic probes). Dilation scores 0 structure "
                "error (theorem T1), linear interpolation at most max|1 - c h_s| over the band (T3). ORIG and CONVERTED "
                "are read as convert reads and writes them (a file, a shard index, a diffusers or Hugging Face folder, "
                "variants such as *.fp16.safetensors apart); each recorded tensor's shapes are checked against its "
                "record first. A weight-normed layer is measured on its effective weight g v/||v||. Exit status: 0; "
                "1 when a layer exceeds --tol or, under --tol, has a measure that is not a number (NaN, inf), and "
                "whatever --tol when a converted layer holds inf/NaN where the original's values are finite; 2 for "
                "bad input.",
    epilog="examples:\n"
           "  kernelscale verify unet.safetensors unet_x2.safetensors\n"
           "  kernelscale verify unet.safetensors unet_x2.safetensors --tol 0.05 --band 0.1\n"
           "  kernelscale verify sd15/ sd15_x2/ --json",
    add_arguments=_add_arguments,
    run=run_verify,
)
