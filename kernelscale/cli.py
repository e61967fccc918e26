"""The command line: ``kernelscale convert``, ``inspect`` and ``verify`` (docs/cli.md).

A thin parse → validate → run front end over :mod:`kernelscale.convert`; every option maps to a
field of :class:`~kernelscale.plan.ResizeOptions` or a keyword of ``convert_checkpoint``.
Subcommands live in one registry, :data:`COMMANDS`, built at the end of this module from each
command's :class:`~kernelscale.cli_command.Command` (``verify``'s comes from
:mod:`kernelscale.cli_verify`, which never imports this module); a new one is one Command with an
``add_arguments`` and a ``run`` function.

Exit codes: 0 success; 1 a verified layer fails (``verify``, ``convert --verify``): its structure
error exceeds ``--tol`` (or, under ``--tol``, a measure is not a number), or the converted tensor
holds inf/NaN where the original is finite; 2 bad input or usage (one line ``kernelscale: error: …``
on stderr, never a traceback — set ``KERNELSCALE_DEBUG=1`` to get one); 70 an internal error, i.e.
a bug (one line ``kernelscale: internal error: …``; sysexits' EX_SOFTWARE, so a script can tell it
from a failed check); 130 interrupted (Ctrl-C), 143 terminated (SIGTERM): temp files removed, no
output written — except during ``convert --verify``, when OUT is already written and complete;
141 stdout closed by its reader (silent).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import textwrap
from typing import Any, Optional, Sequence, Union

from kernelscale.cli_command import (EXIT_BROKEN_PIPE, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, EXIT_USAGE,
                                     Command)
from kernelscale import cli_verify
from kernelscale.backends import BACKENDS, ENV_VAR as BACKEND_ENV
from kernelscale.errors import InvalidOptionError, KernelscaleError
from kernelscale.manifest import AttentionRecord, FactoredRecord, GridRecord, Record, RenormRecord, check_records, record_from_json
from kernelscale.version import __version__

DEBUG_ENV = "KERNELSCALE_DEBUG"


class UsageError(Exception):
    """A command line argparse rejected."""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that ``finally`` blocks remove temp files."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


_FORMATTER = argparse.RawDescriptionHelpFormatter


def register_command(command: Command) -> Command:
    """Add a subcommand to :func:`build_parser` (later registrations of a name replace earlier ones)."""
    COMMANDS[command.name] = command
    return command


_EXIT_AND_ENVIRONMENT = f"""
exit status:
  {EXIT_OK}    success
  1    verify or convert --verify: a layer's structure error exceeds --tol (or, under --tol, a measure
       is not a number), or the converted tensor holds inf/NaN where the original is finite (the
       layers are named on stderr)
  {EXIT_USAGE}    bad input or usage: one line 'kernelscale: error: ...' on stderr; convert writes no OUT
  {EXIT_INTERNAL}   an internal error (a bug): one line 'kernelscale: internal error: ...'
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C); {EXIT_TERMINATED} terminated (SIGTERM): temp files removed, no output written
       (during convert --verify: OUT is already written and complete)
  {EXIT_BROKEN_PIPE}  the reader of stdout closed it (e.g. '| head'): silently, as a tool killed by SIGPIPE

environment:
  {BACKEND_ENV}={"|".join(BACKENDS)}
       which backend applies the resize operator R: torch (the reference, any device), triton
       (the Triton kernels; an error where they cannot run), auto (default: triton for CUDA
       tensors when it can be imported, else torch)
  {DEBUG_ENV}=1
       print the traceback of an error instead of one line (for developers)"""


def build_parser(only: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    """The ``kernelscale`` parser with every registered subcommand; with ``only``, the arguments of
    those subcommands alone are added (the others are listed, with their help line): their
    ``add_arguments`` import the modules a command needs, torch among them, which ``kernelscale
    --help`` and ``--version`` do not (0.1 s instead of 3 s)."""
    parser = _Parser(
        prog="kernelscale",
        description=textwrap.fill("Training-free resolution scaling of trained networks by weight surgery: resize the conv "
                                  "kernels of a checkpoint so the network runs on inputs sampled S times more finely.", 100),
        epilog="examples:\n"
               "  kernelscale convert model.safetensors model_x2.safetensors --scale 2\n"
               "  kernelscale inspect model.safetensors --scale 2      # preview what convert would do\n"
               "  kernelscale verify model.safetensors model_x2.safetensors --tol 0.05\n"
               "Run 'kernelscale COMMAND --help' for a command's options; docs/cli.md has more.\n"
               + _EXIT_AND_ENVIRONMENT,
        formatter_class=_FORMATTER,
    )
    parser.add_argument("--version", action="version", version=f"kernelscale {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for command in COMMANDS.values():
        p = sub.add_parser(command.name, help=command.help, description=textwrap.fill(command.description, 100),
                           epilog=command.epilog, formatter_class=_FORMATTER)
        if only is None or command.name in only:
            command.add_arguments(p)
        p.set_defaults(_command=command)
    return parser


# --- planning options shared by convert and inspect ----------------------------------------------


def add_planning_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that decide what happens to each tensor (fields of ResizeOptions).

    Every default is None so that a value given on the command line can be told apart from one
    read from --plan: flags override the plan file.
    """
    from kernelscale.method import ALIGNS, EXECUTIONS, METHODS, MODES

    g = parser.add_argument_group("planning (which tensors change, and how)")
    g.add_argument("--scale", metavar="S[,S...]",
                   help="how many times more finely the inputs are sampled: one number for every spatial axis, or one "
                        "per axis (applied to the last axes of each kernel). Below 1 subsamples. Required unless --plan "
                        "sets it. Example: --scale 2, --scale 2,1.5")
    g.add_argument("--method", choices=METHODS,
                   help="how kernels are resized (default: interp). interp: interpolate the kernel and scale it by the "
                        "coefficient; dilate: insert zeros (ScaleCrafter re-dilation, exact on any shift-invariant "
                        "upsampler); pinv: pseudo-inverse of the upsampler (FlexiViT; exact on inputs upsampled by it); "
                        "disperse: ScaleCrafter's dispersed convolution. Example: --method dilate")
    g.add_argument("--fallback", choices=METHODS, metavar="METHOD",
                   help="resize the conv kernels that --method cannot handle (disperse on an even or non-square "
                        "kernel, dilate or disperse at a non-integer scale) by METHOD instead; each such layer is "
                        "named in the plan, the summary and its manifest record. Without it such a layer is refused. "
                        "Declared grids under dilate or disperse fall back to METHOD (interp or pinv), without it to "
                        "interp, named the same way. Example: --method disperse --fallback interp")
    g.add_argument("--mode", choices=MODES,
                   help="interpolation kernel for interp and pinv (default: linear). Example: --mode cubic")
    g.add_argument("--align", choices=ALIGNS,
                   help="taps (default): new taps keep the kernel centred, odd sizes stay odd (3x3 -> 7x7 at S=2, "
                        "linear); cells: exactly F.interpolate of the kernel, as in the paper (3x3 -> 6x6, half-pixel "
                        "shift). Example: --align cells")
    g.add_argument("--coef", metavar="mass|paper|FLOAT",
                   help="the constant the resized kernel is scaled by (default: mass). mass: every tap's mass is "
                        "kept, so the DC gain is exact; paper: 1/prod(S); or a number. Example: --coef paper")
    g.add_argument("--geometry-only", action="store_true", default=None,
                   help="re-dilation that keeps the weights: record dilation *= S in the manifest and leave every "
                        "weight byte as it is (implies --method dilate; integer scales only)")
    g.add_argument("--execution", choices=EXECUTIONS,
                   help="materialised (default): write each resized kernel; factored: keep every weight byte of a "
                        "conv whose resize factors (interp with taps alignment, dilate; integer scales) and record "
                        "its dilation and prefilter, to be run by kernelscale.nn.load as a dilated conv after a "
                        "separable prefilter (same outputs, about the cost of the original conv). "
                        "Example: --execution factored")
    g.add_argument("--include", action="append", metavar="GLOB",
                   help="resize only tensors whose name (or layer name, without .weight) matches; repeatable; each "
                        "glob must match some tensor. Default: every conv kernel. Example: --include 'down_blocks.*'")
    g.add_argument("--exclude", action="append", metavar="GLOB",
                   help="never resize tensors matching GLOB; repeatable. Example: --exclude conv_in --exclude 'decoder.*'")
    g.add_argument("--absorb", action="append", metavar="GLOB",
                   help="layers that take the scale into their stride (stride*S, kernel*S, cells alignment) so every "
                        "layer after them is untouched: patch embeddings, STFT front ends; repeatable. "
                        "Example: --absorb patch_embed.proj")
    g.add_argument("--grid", action="append", metavar="NAME=C,H,W|NAME=LAYOUT:SIZES",
                   help="declare a Linear weight whose input is a flattened grid, so its rows are resized as images "
                        "(NAME is the tensor or its layer); repeatable. C,H,W sizes for a plain flatten of an NCHW map; "
                        "otherwise the axis order of the flattened features, then the sizes: H,W,C:4,4,32 for a model "
                        "that permutes to channels-last before flattening, C,L:64,10 (1-D), C,D,H,W:... (3-D). "
                        "Example: --grid fc=32,4,4, --grid fc=H,W,C:4,4,32")
    g.add_argument("--attention", action="append", metavar="auto|none|GLOB=N[:N2]",
                   help="attention temperature: multiply the query projections matching GLOB by sqrt(log N2 / log N), N "
                        "the tokens a self-attention sees at the trained size, N2 at the new one (default N*S^2); "
                        "repeatable. auto: one rule per self-attention of a diffusion denoiser, N from its config "
                        "(the default for a diffusers pipeline folder, and for a single file given --config, with "
                        "--method interp); none: no temperature. Example: --attention '*attn1.to_q=4096'")
    g.add_argument("--config", metavar="FOLDER",
                   help="for a single file in the original layout (model.diffusion_model.*): a local diffusers folder of "
                        "the same architecture (a pipeline folder or its unet/), whose config gives the aligned "
                        "downsamplers and --attention auto. Example: --config sd15")
    g.add_argument("--plan", metavar="FILE",
                   help="read options from a plan file: TOML (*.toml), JSON (*.json) or ScaleCrafter's 'name:factor' "
                        "settings text (any other name; listed layers get their factor, others keep scale 1). Flags "
                        "given here override the file's values. Example: --plan sd15_x2.toml")


def parse_coef(text: str) -> Union[str, float]:
    """``mass``, ``paper`` or a finite number > 0, checked by :func:`kernelscale.method.validate_coef`;
    InvalidOptionError naming ``--coef`` and the text otherwise."""
    from kernelscale.method import validate_coef

    try:
        value: Any = float(text)
    except ValueError:
        value = text
    try:
        return validate_coef(value)
    except InvalidOptionError as exc:
        raise InvalidOptionError(f"--coef {text!r}: expected mass, paper or a number > 0 ({exc})") from None


def parse_grid(text: str) -> tuple[str, Any]:
    """``NAME=C,H,W`` or ``NAME=LAYOUT:SIZES`` (e.g. ``fc=H,W,C:4,4,32``) → ``(NAME, GridLayout)``."""
    from kernelscale.grid import grid_layout

    name, sep, dims = text.partition("=")
    if not sep or not name.strip():
        raise InvalidOptionError(f"--grid {text!r}: expected NAME=C,H,W or NAME=LAYOUT:SIZES, e.g. fc=32,4,4 or fc=H,W,C:4,4,32")
    if ":" not in dims and len(dims.split(",")) != 3:
        raise InvalidOptionError(f"--grid {text!r}: expected NAME=C,H,W with three positive integers, e.g. fc=32,4,4 "
                                 "(or NAME=LAYOUT:SIZES, e.g. fc=H,W,C:4,4,32)")
    return name.strip(), grid_layout(dims, f"--grid {text!r}")


def parse_attention(text: str) -> Any:
    """``GLOB=N`` or ``GLOB=N:N2`` → AttentionRule; InvalidOptionError for anything else."""
    from kernelscale.options import AttentionRule

    pattern, sep, counts = text.partition("=")
    parts = counts.split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if not sep or not pattern.strip() or not 1 <= len(values) <= 2:
        raise InvalidOptionError(f"--attention {text!r}: expected auto, none or GLOB=N[:N2] with token counts, "
                                 "e.g. '*attn1.to_q=4096'")
    return AttentionRule(pattern.strip(), values[0], values[1] if len(values) == 2 else None)


def _attention_choice(args: argparse.Namespace) -> Optional[str]:
    """``auto`` or ``none`` when --attention says so, None when it is absent or gives rules."""
    given = getattr(args, "attention", None) or []
    words = [a for a in given if a in ("auto", "none")]
    if words and len(given) > 1:
        raise InvalidOptionError(f"--attention {words[0]} stands alone; got {', '.join(given)}")
    return words[0] if words else None


def with_diffusion_rules(args: argparse.Namespace, options: Any) -> Any:
    """``options`` with the rules a diffusion checkpoint gets (the diffusers integration's
    ``pipeline_options``): by default on a diffusers pipeline folder, and on a single file given
    --config, with --method interp; with --attention auto on any method. Other checkpoints are
    returned as they are, without importing diffusers."""
    from kernelscale.pipeline_layout import pipeline_denoiser

    choice = _attention_choice(args)
    src = args.input if hasattr(args, "input") else args.path
    config = getattr(args, "config", None)
    if options is None:
        if choice == "auto" or config is not None:
            raise InvalidOptionError("--attention auto and --config need --scale (or a --plan file that sets scale)")
        return None
    default = options.method == "interp" and (pipeline_denoiser(src) is not None or config is not None)
    if choice != "auto" and not default:
        if config is not None:
            raise InvalidOptionError(f"--config: only used for --method interp's defaults and --attention auto; got "
                                     f"--method {options.method}")
        return options
    try:
        from kernelscale.integrations.diffusers.converter import pipeline_options
    except ImportError as exc:
        raise InvalidOptionError(f"{src}: the aligned downsamplers and attention temperature of a diffusion denoiser are "
                                 f"computed from its config with diffusers ({exc}); pip install 'kernelscale[diffusers]', or "
                                 "give --method and --attention explicitly") from None
    if choice == "auto":  # the flag overrides a plan file's rules
        options = dataclasses.replace(options, attention=())
    attention = None if choice == "none" or (choice is None and getattr(args, "attention", None)) else "auto"
    return pipeline_options(src, options, attention=attention, config=config)


def options_from_args(args: argparse.Namespace, *, require_scale: bool = True):
    """ResizeOptions from the plan file (if any) overridden by the flags; None when no scale is
    given and ``require_scale`` is False (inspect without planning)."""
    from kernelscale.method import scale_value
    from kernelscale.options import ResizeOptions
    from kernelscale.plan_file import load_plan_file

    fields: dict[str, Any] = dict(load_plan_file(args.plan)) if args.plan else {}
    if args.scale is not None:
        fields["scale"] = scale_value(args.scale, "--scale")
    for key in ("method", "mode", "align", "fallback"):
        if getattr(args, key) is not None:
            fields[key] = getattr(args, key)
    if args.coef is not None:
        fields["coef"] = parse_coef(args.coef)
    if getattr(args, "execution", None) is not None:
        fields["execution"] = args.execution
    if args.geometry_only:
        fields["geometry_only"] = True
        if args.method is None:
            fields["method"] = "dilate"
    for key in ("include", "exclude", "absorb"):
        if getattr(args, key):
            fields[key] = tuple(getattr(args, key))
    rules = [parse_attention(a) for a in (getattr(args, "attention", None) or []) if a not in ("auto", "none")]
    if rules:
        fields["attention"] = tuple(rules)
    if args.grid:
        grids = dict(fields.get("grids") or {})
        grids.update(parse_grid(g) for g in args.grid)
        fields["grids"] = grids
    if "scale" not in fields:
        if require_scale:
            raise InvalidOptionError("give --scale (e.g. --scale 2), or a --plan file that sets scale")
        if len(fields) > 0:
            raise InvalidOptionError("planning options need --scale (or a --plan file that sets scale)")
        return None
    return ResizeOptions(**fields)


# --- convert -----------------------------------------------------------------------------------


def _add_convert_arguments(p: argparse.ArgumentParser) -> None:
    from kernelscale.checkpoint_plan import OUTPUT_DTYPES
    from kernelscale.convert import AUTO_CUDA_MIN_BYTES, DEVICES

    p.add_argument("input", metavar="IN",
                   help="a .safetensors file, a sharded checkpoint's *.safetensors.index.json, or a model folder "
                        "(diffusers or Hugging Face layout). Never modified.")
    p.add_argument("output", metavar="OUT",
                   help="where the result goes: a file for a file; a folder for a folder (other files are copied); "
                        "for a shard index, a folder or the output index's path (shards are written beside it)")
    add_planning_arguments(p)
    g = p.add_argument_group("output")
    g.add_argument("--dtype", choices=tuple(OUTPUT_DTYPES), default="keep",
                   help="dtype of the floating tensors written (default: keep). float16/bfloat16/float32 apply to "
                        "every F64/F32/F16/BF16 tensor: resized ones are computed in float32 and rounded once, the "
                        "others cast; integer, bool and float8 tensors are always copied byte for byte. "
                        "Example: --dtype float16")
    g.add_argument("--device", choices=DEVICES, default="auto",
                   help=f"where resizing runs (default: auto = CUDA when torch sees a GPU and at least {AUTO_CUDA_MIN_BYTES >> 20} MiB of "
                        "tensors are resized, else CPU; cuda = the Triton kernels, refused without a GPU). Example: --device cpu")
    g.add_argument("--dry-run", action="store_true",
                   help="plan and check everything (input, options, OUT, free space), print what would happen to "
                        "each tensor, and write nothing")
    g.add_argument("--force", action="store_true",
                   help="replace OUT if it exists (never when OUT is the input itself)")
    g.add_argument("--json", action="store_true",
                   help="print the summary (with --dry-run: the plan) as JSON on stdout instead of text on stderr")

    v = p.add_argument_group("verification (see 'kernelscale verify --help')",
                             textwrap.fill("Any of --tol, --band, --probes, --seed implies --verify. Their values are "
                                           "checked before anything is written.", 76))
    v.add_argument("--verify", action="store_true",
                   help="after converting, measure every changed layer as 'kernelscale verify IN OUT' does (implied by "
                        "any option below); with --tol, exit with status 1 when a layer exceeds it (OUT is kept either "
                        "way). Skipped with --dry-run")
    cli_verify.add_verify_options(v)


def _plan_json(plan) -> list[dict[str, Any]]:
    files = []
    for fp in plan.files:
        tensors = []
        for i, e in enumerate(fp.entries):
            item = {"name": e.name, "dtype": e.dtype, "shape": list(e.shape), "action": fp.operation(i), "reason": e.reason,
                    "new_shape": list(e.new_shape), "out_dtype": fp.out_dtypes[i]}
            if e.record is not None:
                item["record"] = e.record.to_json()
            tensors.append(item)
        files.append({"input": fp.src, "output": fp.rel, "bytes_out": fp.bytes_out, "tensors": tensors})
    return files


def _keep_freed_blocks() -> None:
    """Let glibc reuse freed multi-MB blocks instead of returning them to the kernel (mmap'd
    chunks up to 64 MiB come from the heap, which is trimmed only above 512 MiB free).

    Why: a conversion allocates and frees a few 8–16 MiB buffers per block; with the defaults each
    came back as fresh pages, 0.3–0.7 M page faults for SD 1.5 at --scale 2 (~1 s of kernel time on
    2 cores); with these, 0.05 M. Process-wide, so only the command line does it, not the API."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def prepare_convert(argv: Sequence[str]) -> None:
    """Start reading IN into the page cache while torch is imported (:mod:`kernelscale.io.prefetch`),
    when IN is the first argument after ``convert`` (as in every example) and something will be written."""
    if argv and not argv[0].startswith("-") and not {"--dry-run", "-h", "--help"} & set(argv):
        from kernelscale.io.prefetch import prefetch

        prefetch(argv[0])


def run_convert(args: argparse.Namespace) -> int:
    from kernelscale.convert import convert_checkpoint

    options = with_diffusion_rules(args, options_from_args(args))
    verify = cli_verify.verify_requested(args) and not args.dry_run
    if not args.dry_run:
        _keep_freed_blocks()
    summary = convert_checkpoint(args.input, args.output, options, dtype=args.dtype, device=args.device, force=args.force,
                                 progress=None, dry_run=args.dry_run)
    try:
        return _report_conversion(args, summary, verify)
    except (KeyboardInterrupt, Terminated) as exc:
        if args.dry_run:
            raise
        # OUT is committed by now: say so, rather than main's "no output was written".
        what = "interrupted" if isinstance(exc, KeyboardInterrupt) else "terminated"
        during = "during verification" if verify else "after the conversion"
        _stderr(f"kernelscale: {what} {during}; {summary.dst} was written and is complete")
        return EXIT_INTERRUPTED if isinstance(exc, KeyboardInterrupt) else EXIT_TERMINATED


def _report_conversion(args: argparse.Namespace, summary: Any, verify: bool) -> int:
    for path in summary.cleaned:
        _stderr(f"kernelscale: removed {path}, left by an interrupted run")
    if args.dry_run and not args.json:
        _stdout("\n".join(summary.plan.describe()))
    for note in summary.notes:
        _stderr(f"kernelscale: note: {note}")
    if args.json:  # one JSON document: the verify report goes into the summary
        data = summary.to_json()
        if args.dry_run:
            data["plan"] = _plan_json(summary.plan)
        report = cli_verify.measure(args.input, summary.dst, args) if verify else None
        if report is not None:
            data["verify"] = cli_verify.report_json(report, args.tol)
        _stdout(json.dumps(data, indent=2, sort_keys=True, allow_nan=False))
        return cli_verify.exit_code(report, args.tol) if report is not None else EXIT_OK
    _stderr(f"kernelscale: {summary.describe()}")
    if verify:
        return cli_verify.print_report(cli_verify.measure(args.input, summary.dst, args), args.tol)
    return EXIT_OK


CONVERT_COMMAND = Command(
    name="convert",
    help="resize a checkpoint's conv kernels for inputs sampled S times more finely",
    description="Convert IN to OUT, streaming one tensor at a time: conv kernels are resized, everything else is "
                "copied byte for byte, and a manifest of every change goes into the output's metadata. IN is never "
                "modified; OUT appears only once it is complete and checked.",
    epilog="examples:\n"
           "  kernelscale convert unet.safetensors unet_x2.safetensors --scale 2\n"
           "  kernelscale convert sd15/ sd15_x2/ --scale 2     # a diffusers pipeline: its UNet only\n"
           "  kernelscale convert model.safetensors model_x2.safetensors --scale 2 --config sd15   # an SD single file\n"
           "  kernelscale convert model.safetensors.index.json out/ --scale 2 --dtype bfloat16\n"
           "  kernelscale convert unet.safetensors redilated.safetensors --scale 2 --geometry-only\n"
           "  kernelscale convert digits.safetensors digits_x2.safetensors --scale 2 --grid fc=32,4,4 --dry-run",
    add_arguments=_add_convert_arguments,
    run=run_convert,
    prepare=prepare_convert,
)


# --- inspect -----------------------------------------------------------------------------------


def _add_inspect_arguments(p: argparse.ArgumentParser) -> None:
    from kernelscale.checkpoint_plan import OUTPUT_DTYPES

    p.add_argument("path", metavar="PATH", help="a .safetensors file, a *.safetensors.index.json or a model folder")
    add_planning_arguments(p)
    p.add_argument("--dtype", choices=tuple(OUTPUT_DTYPES), default="keep",
                   help="with --scale: preview the output dtypes convert --dtype would write (default: keep)")
    p.add_argument("--json", action="store_true", help="print JSON on stdout for scripts")


def _record_text(record: Record) -> str:
    if isinstance(record, AttentionRecord):
        return f"attention temperature ×{record.factor:.4f}"
    if isinstance(record, RenormRecord):
        norms = "one norm over all of v" if record.dim is None else f"one norm per index of axis {record.dim}"
        return f"weight norm's g, rescaled for the resized {record.v} ({norms})"
    if isinstance(record, FactoredRecord):
        p = record.prefilter
        return (f"factored {p.method}/{p.mode}/{p.align} ×" + ",".join(f"{s:g}" for s in record.scale)
                + f" {_dims(record.old_spatial)} kept: dilation {_dims(record.dilation)} after a {_dims(p.taps)} prefilter "
                f"(coef {p.coef}), as a {_dims(record.resized_spatial)} kernel")
    scale = "×" + ",".join(f"{s:g}" for s in record.scale)
    text = f"{record.method}"
    if record.mode:
        text += f"/{record.mode}"
    if record.align:
        text += f"/{record.align}"
    text += f" {scale} {_dims(record.old_spatial)} -> {_dims(record.new_spatial)}"
    if record.fallback:
        text += f" (fallback: {record.fallback} was asked for)"
    if isinstance(record, GridRecord):
        return f"grid {_dims(record.grid)}{', layout ' + ','.join(record.layout) if record.layout else ''}: " + text
    if record.dilation:
        text += f", dilation {_dims(record.dilation)}"
    if record.absorb:
        text += ", absorbs the scale (stride ×S)"
    if record.pad_extra:
        text += f", extra padding {record.pad_extra}"
    return text


def _dims(values: Optional[Sequence[Any]]) -> str:
    return "×".join(str(v) for v in values) if values else "-"


def _manifest_of(metadata: dict[str, str], path: str) -> Optional[dict[str, Any]]:
    """The manifest in a file's ``metadata`` (None without one); errors name ``path``."""
    from kernelscale.io.checkpoint import MANIFEST_KEY, load_manifest_json

    if MANIFEST_KEY not in metadata:
        return None
    manifest = load_manifest_json(metadata[MANIFEST_KEY], path)
    check_records(manifest, path)
    return manifest


def run_inspect(args: argparse.Namespace) -> int:
    from kernelscale.checkpoint_plan import plan_checkpoint
    from kernelscale.io.checkpoint import MANIFEST_KEY
    from kernelscale.io.discovery import scan_checkpoint
    from kernelscale.plan import describe_entries, shape_text

    scan = scan_checkpoint(args.path)
    options = with_diffusion_rules(args, options_from_args(args, require_scale=False))
    plan = plan_checkpoint(args.path, options, dtype=args.dtype, scan=scan) if options is not None else None
    planned = {fp.src: fp for fp in plan.files} if plan is not None else {}
    files_json, lines = [], []
    for source in scan.files:
        manifest = _manifest_of(source.metadata, source.path)
        metadata = {k: v for k, v in source.metadata.items() if k != MANIFEST_KEY}
        records = (manifest or {}).get("tensors") or {}
        fp = planned.get(source.path)
        label = source.rel or source.path
        lines.append(f"== {label} ==  {len(source.tensors)} tensors"
                     + (f"; metadata: {json.dumps(metadata, sort_keys=True, ensure_ascii=False)}" if metadata else ""))
        tensors = []
        if fp is not None:
            lines.extend(describe_entries(fp.entries, fp.out_dtypes))
        for i, t in enumerate(source.tensors):
            item: dict[str, Any] = {"name": t.name, "dtype": t.dtype, "shape": list(t.shape)}
            if t.name in records:
                item["record"] = records[t.name]
            if fp is not None:
                e = fp.entries[i]
                item.update(action=fp.operation(i), reason=e.reason, new_shape=list(e.new_shape), out_dtype=fp.out_dtypes[i])
                if e.record is not None:
                    item["planned_record"] = e.record.to_json()
            else:
                line = f"{t.name}  {t.dtype}  {shape_text(t.shape)}"
                if t.name in records:
                    line += f"  converted: {_record_text(record_from_json(records[t.name]))}"
                lines.append(line)
            tensors.append(item)
        if manifest is not None:
            opts = manifest.get("options") or {}
            shown = " ".join(f"{k}={json.dumps(opts[k])}" for k in ("scale", "method", "mode", "align", "coef") if k in opts)
            lines.append(f"manifest: format_version {manifest.get('format_version')}, {manifest.get('tool', 'kernelscale')} "
                         f"{manifest.get('tool_version')}; options: {shown}; {len(records)} changed tensor(s)")
        files_json.append({"path": source.path, "rel": source.rel, "metadata": metadata, "manifest": manifest, "tensors": tensors})
    notes = list(plan.notes) if plan is not None else []
    if args.json:
        _stdout(json.dumps({"path": scan.src, "layout": scan.layout, "files": files_json, "notes": notes,
                            "other_files": [rel for _, rel in scan.others], "skipped_files": list(scan.skipped)},
                           indent=2, sort_keys=True, ensure_ascii=False))
    else:
        _stdout("\n".join(lines))
        for note in notes:
            _stderr(f"kernelscale: note: {note}")
    return EXIT_OK


INSPECT_COMMAND = Command(
    name="inspect",
    help="list a checkpoint's tensors, what convert would do to each, and a converted file's manifest",
    description="One line per tensor: name, dtype, shape; with --scale (and any planning option of convert) also "
                "what convert would do to it and why; for a converted file, the manifest record of each changed tensor.",
    epilog="examples:\n"
           "  kernelscale inspect model.safetensors\n"
           "  kernelscale inspect model.safetensors --scale 2 --method dilate\n"
           "  kernelscale inspect model_x2.safetensors --json | jq '.files[0].manifest.options'",
    add_arguments=_add_inspect_arguments,
    run=run_inspect,
)


COMMANDS: dict[str, Command] = {c.name: c for c in (CONVERT_COMMAND, INSPECT_COMMAND, cli_verify.VERIFY_COMMAND)}
"""Every subcommand, in ``--help`` order: the one registry (:func:`register_command` adds to it)."""


# --- entry point -------------------------------------------------------------------------------


def _stdout(text: str) -> None:
    if text:
        print(text, file=sys.stdout, flush=True)


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, KernelscaleError) and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _fail(message: str) -> int:
    _stderr(f"kernelscale: error: {message}")
    return EXIT_USAGE


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; return the exit code (see the module docstring)."""
    debug = os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        argv = sys.argv[1:] if argv is None else [os.fspath(a) for a in argv]
        # the command is the first argument that is not an option (the top level has no option with a value)
        chosen = [a for a in argv if not a.startswith("-")][:1]
        if chosen and chosen[0] in COMMANDS and COMMANDS[chosen[0]].prepare is not None:
            COMMANDS[chosen[0]].prepare(argv[argv.index(chosen[0]) + 1:])
        try:
            args = build_parser(only=chosen).parse_args(argv)
        except UsageError as exc:
            return _fail(str(exc))
        except SystemExit as exc:  # --help, --version
            return exc.code if isinstance(exc.code, int) else EXIT_OK
        return args._command.run(args)
    except KeyboardInterrupt:
        _stderr("kernelscale: interrupted; no output was written")
        return EXIT_INTERRUPTED
    except Terminated:
        _stderr("kernelscale: terminated; no output was written")
        return EXIT_TERMINATED
    except BrokenPipeError:
        # The reader left (`kernelscale inspect … | head`): nothing to report to it. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again, and exit as a tool killed
        # by SIGPIPE would.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except (KernelscaleError, OSError) as exc:
        if debug:
            raise
        return _fail(_one_line(exc))
    except Exception as exc:  # a bug: still one line, with the way to get the traceback
        if debug:
            raise
        _stderr(f"kernelscale: internal error: {type(exc).__name__}: {_one_line(exc)} (set {DEBUG_ENV}=1 for a traceback)")
        return EXIT_INTERNAL
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def console() -> None:
    """The ``kernelscale`` script: :func:`main`, then exit at once with its code, without tearing the
    interpreter down (every file is closed and committed by then; with torch loaded, the teardown
    took 0.35–0.45 s of a command's time for nothing)."""
    code = main()
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:  # None: the process started with that descriptor closed
                stream.flush()
    except BrokenPipeError:
        code = EXIT_BROKEN_PIPE
    os._exit(code if isinstance(code, int) else EXIT_OK)


if __name__ == "__main__":
    console()
