"""The command line: conversions end to end, one line and exit 2 for every bad input, 130 on
Ctrl-C, nothing left behind by kill -9, and a diffusers UNet folder converted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch

from kernelscale import __version__
from kernelscale.grid import GridLayout
from kernelscale import cli
from kernelscale.cli import Command, build_parser, main, options_from_args, register_command
from kernelscale.io.safetensors_io import read_header
from checkpoints import header_file, leftovers, mixed_state_dict, save, save_sharded, sha256

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kernelscale.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def call(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    return save(mixed_state_dict(), tmp_path / "in.safetensors", {"author": "tests"})


# --- convert and inspect -----------------------------------------------------------------------


def test_convert_prints_notes_and_a_summary(tmp_path: Path, checkpoint: Path, capsys) -> None:
    out = tmp_path / "out.safetensors"
    code, stdout, stderr = call(capsys, "convert", checkpoint, out, "--scale", "2", "--grid", "head=8,2,2")
    assert code == 0 and stdout == ""
    lines = stderr.splitlines()
    assert lines[0] == ("kernelscale: note: 1 conv-shaped weight(s) copied unresized because of their dtype: quant.weight "
                        "(F8_E4M3); kernelscale resizes float16/bfloat16/float32/float64 only, so those layers stay at the old "
                        "resolution (dequantise them first, or --exclude their layers to make that explicit)")
    assert lines[1].startswith("kernelscale: note: in.safetensors: 6 tensor(s) changed shape") and "kernelscale.nn.load" in lines[1]
    assert lines[-1].startswith(f"kernelscale: {checkpoint} -> {out}: 1 file(s); tensors: 6 resized, 5 copied;")
    assert "MB/s" in lines[-1]
    assert read_header(out)[1]["head.weight"].shape == (10, 8 * 4 * 4)


def test_an_excluded_quantised_conv_is_not_noted(tmp_path: Path, checkpoint: Path, capsys) -> None:
    code, _, stderr = call(capsys, "convert", checkpoint, tmp_path / "out.safetensors", "--scale", "2", "--exclude", "quant")
    assert code == 0 and "conv-shaped" not in stderr and "5 tensor(s) changed shape" in stderr


def test_json_summary_on_stdout(tmp_path: Path, checkpoint: Path, capsys) -> None:
    code, stdout, stderr = call(capsys, "convert", checkpoint, tmp_path / "out.safetensors", "--scale", "2", "--json", "--dtype", "bfloat16")
    summary = json.loads(stdout)
    assert code == 0 and summary["tensors_resized"] == 5 and summary["dtype"] == "bfloat16" and summary["mb_per_s"] >= 0
    assert summary["loading"][0]["stock_loadable"] is False and summary["notes"]
    assert [line.split(":")[1] for line in stderr.splitlines()] == [" note", " note"]  # the summary goes to stdout only


def test_dry_run_lists_every_decision_and_writes_nothing(tmp_path: Path, checkpoint: Path, capsys) -> None:
    out = tmp_path / "out.safetensors"
    code, stdout, stderr = call(capsys, "convert", checkpoint, out, "--scale", "2", "--method", "dilate", "--dry-run")
    assert code == 0 and not out.exists()
    assert "stem.weight  F32  8×3×3×3 -> 8×3×5×5  resize: dilate/taps (conv kernel)" in stdout
    assert stderr.splitlines()[-1].startswith("kernelscale: dry run:")
    code, stdout, _ = call(capsys, "convert", checkpoint, out, "--scale", "2", "--dry-run", "--json")
    data = json.loads(stdout)
    assert data["dry_run"] and {t["name"]: t["action"] for t in data["plan"][0]["tensors"]}["stem.bias"] == "copy"
    assert not out.exists() and leftovers(tmp_path) == []


def test_geometry_only_implies_dilate_and_flags_override_the_plan_file(tmp_path: Path, checkpoint: Path) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text('scale = 3\nmode = "cubic"\ninclude = ["stem"]\n[grids]\nhead = [8, 2, 2]\n')
    args = build_parser().parse_args(["convert", str(checkpoint), "o", "--plan", str(plan), "--scale", "2", "--include", "block.*",
                                      "--grid", "head=2,4,4", "--geometry-only"])
    options = options_from_args(args)
    assert options.scale == 2.0 and options.mode == "cubic" and options.include == ("block.*",)
    assert options.grids == (("head", GridLayout("CHW", (2, 4, 4))),) and options.method == "dilate" and options.geometry_only


def test_inspect_plain_planned_and_converted(tmp_path: Path, checkpoint: Path, capsys) -> None:
    code, stdout, _ = call(capsys, "inspect", checkpoint)
    assert code == 0 and "steps  I64  2" in stdout and '"author": "tests"' in stdout
    code, stdout, _ = call(capsys, "inspect", checkpoint, "--scale", "2", "--dtype", "float16")
    assert "stem.weight  F32  8×3×3×3 -> 8×3×7×7 as F16  resize:" in stdout and "stem.bias  F32  8 as F16  cast:" in stdout
    out = tmp_path / "out.safetensors"
    assert main(["convert", str(checkpoint), str(out), "--scale", "2"]) == 0
    capsys.readouterr()
    code, stdout, _ = call(capsys, "inspect", out)
    assert "stem.weight  F32  8×3×7×7  converted: interp/linear/taps ×2,2 3×3 -> 7×7" in stdout
    assert "manifest: format_version 1, kernelscale" in stdout
    code, stdout, _ = call(capsys, "inspect", out, "--json")
    data = json.loads(stdout)
    assert data["files"][0]["manifest"]["format_version"] == 1 and "kernelscale" not in data["files"][0]["metadata"]
    assert {t["name"]: t.get("record", {}).get("new_spatial") for t in data["files"][0]["tensors"]}["block.conv.weight"] == [7, 7]


@pytest.mark.parametrize("grid, text", [("fc=32,4,4", "grid 32×4×4: interp/linear/cells ×2,2 4×4 -> 8×8"),
                                        ("fc=H,W,C:4,4,32", "grid 32×4×4, layout H,W,C: interp/linear/cells ×2,2 4×4 -> 8×8")])
def test_inspect_describes_a_grid_record_and_its_layout(tmp_path: Path, capsys, grid: str, text: str) -> None:
    src = save({"fc.weight": torch.randn(10, 4 * 4 * 32), "fc.bias": torch.randn(10)}, tmp_path / "fc.safetensors")
    out = tmp_path / "out.safetensors"
    assert main(["convert", str(src), str(out), "--scale", "2", "--grid", grid]) == 0
    capsys.readouterr()
    code, stdout, _ = call(capsys, "inspect", out)
    assert code == 0 and f"fc.weight  F32  10×2048  converted: {text}\n" in stdout


def test_inspect_names_the_file_whose_manifest_is_corrupt(tmp_path: Path, capsys) -> None:
    bad = save(mixed_state_dict(), tmp_path / "bad_manifest.safetensors", {"kernelscale": "{not json"})
    before = sha256(bad)
    code, stdout, stderr = call(capsys, "inspect", bad)
    lines = stderr.splitlines()
    assert code == 2 and stdout == "" and len(lines) == 1
    assert lines[0].startswith(f"kernelscale: error: {bad}: the 'kernelscale' metadata is not valid JSON")
    assert sha256(bad) == before


def test_inspect_sharded_checkpoint(tmp_path: Path, capsys) -> None:
    index = save_sharded(mixed_state_dict(), tmp_path / "in", shards=2)
    code, stdout, _ = call(capsys, "inspect", index, "--scale", "2")
    assert code == 0 and "== model-00001-of-00002.safetensors ==" in stdout and "== model-00002-of-00002.safetensors ==" in stdout


def test_version_help_and_registry(capsys) -> None:
    code, stdout, _ = call(capsys, "--version")
    assert code == 0 and stdout.strip() == f"kernelscale {__version__}"
    for command in ("convert", "inspect"):
        code, stdout, _ = call(capsys, command, "--help")
        assert code == 0 and "Example" in stdout and "--scale" in stdout
    register_command(Command("hello", "say hello", "Says hello.", lambda p: p.add_argument("--name", default="you"),
                             lambda args: print(f"hello {args.name}") or 0))
    try:
        code, stdout, _ = call(capsys, "hello", "--name", "verify")
        assert code == 0 and stdout == "hello verify\n"
    finally:
        del cli.COMMANDS["hello"]


def test_top_level_help_lists_exit_codes_and_environment(capsys) -> None:
    code, stdout, _ = call(capsys, "--help")
    assert code == 0
    epilog = stdout[stdout.index("exit status:"):]
    for needle in ("0    success", "1    verify or convert --verify: a layer's structure error exceeds --tol", "70   an internal error",
                   "2    bad input or usage", "130  interrupted (Ctrl-C); 143 terminated (SIGTERM)",
                   "KERNELSCALE_BACKEND=torch|triton|auto", "KERNELSCALE_DEBUG=1", "kernelscale verify"):
        assert needle in stdout, needle
    assert epilog.index("environment:") > epilog.index("130")
    code, stdout, _ = call(capsys, "convert", "--help")
    assert code == 0 and "Any of --tol, --band, --probes, --seed implies --verify" in " ".join(stdout.split())


def test_python_dash_m_kernelscale_cli_knows_every_command() -> None:
    # Run as a script the module is __main__, a second copy: it builds the same registry.
    assert list(cli.COMMANDS) == ["convert", "inspect", "verify"]
    result = run_cli("verify", "--help")
    assert result.returncode == 0 and "ORIG" in result.stdout


def test_imports_run_one_way() -> None:
    """cli → cli_verify → cli_command, never back; no module of the package imports the package root
    (the version comes from kernelscale.version, equal to pyproject.toml's)."""
    import ast
    import tomllib

    from kernelscale.version import __version__ as version

    imported: dict[str, set[str]] = {}
    for path in (ROOT / "kernelscale").rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        names = imported.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
    assert "kernelscale.cli" not in imported["kernelscale.cli_verify"] | imported["kernelscale.cli_command"]
    assert "kernelscale.cli_verify" not in imported["kernelscale.cli_command"]
    # a name from the root that is not a submodule (``from kernelscale import dispatch`` is one)
    roots = sorted(m for m, names in imported.items() if m != "kernelscale"
                   and any(n.startswith("kernelscale.") and n.count(".") == 1 and n not in imported
                           and "kernelscale" in names for n in names))
    assert roots == [], f"import the package root: {roots}"
    assert version == tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]


def test_python_dash_m_kernelscale_is_the_same_command() -> None:
    result = subprocess.run([sys.executable, "-m", "kernelscale", "--version"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == f"kernelscale {__version__}"
    result = subprocess.run([sys.executable, "-m", "kernelscale", "convert", "missing.safetensors", "o.safetensors", "--scale", "2"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "no such file" in result.stderr


def test_a_bug_is_one_line_and_exit_70_not_the_verify_code(capsys) -> None:
    def broken(args) -> int:
        raise ZeroDivisionError("division by zero")

    register_command(Command("broken", "fail", "Fails.", lambda p: None, broken))
    try:
        code, stdout, stderr = call(capsys, "broken")
    finally:
        del cli.COMMANDS["broken"]
    assert code == 70 and stdout == ""
    assert stderr.splitlines() == ["kernelscale: internal error: ZeroDivisionError: division by zero (set KERNELSCALE_DEBUG=1 for a traceback)"]


def test_a_closed_stdout_ends_quietly_with_141(tmp_path: Path) -> None:
    # `kernelscale inspect … | head -1`: the reader leaves early; no error line, no traceback.
    big = {f"block{i}.conv.weight": torch.zeros(2, 2, 3, 3) for i in range(2000)}
    src = save(big, tmp_path / "big.safetensors")
    proc = subprocess.Popen([sys.executable, "-m", "kernelscale", "inspect", str(src), "--scale", "2"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and stderr == b""


@pytest.mark.parametrize("closed, command", [(1, "convert"), (2, "convert"), (2, "inspect")])
def test_a_command_started_with_stdout_or_stderr_closed_exits_with_its_own_code(tmp_path: Path, checkpoint: Path,
                                                                                  closed: int, command: str) -> None:
    # `kernelscale convert … >&-` (cron, daemons): Python starts with sys.stdout (or sys.stderr) None;
    # the command succeeds and exits 0, without a traceback.
    out = tmp_path / "out.safetensors"
    args = [str(checkpoint), str(out)] if command == "convert" else [str(checkpoint)]
    proc = subprocess.run([sys.executable, "-m", "kernelscale", command, *args, "--scale", "2"], cwd=ROOT,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE if closed == 2 else None,
                          stderr=subprocess.PIPE if closed == 1 else None, preexec_fn=lambda: os.close(closed), timeout=120)
    assert b"Traceback" not in (proc.stdout or b"") + (proc.stderr or b"")
    assert proc.returncode == 0 and (command != "convert" or out.exists()), (proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize("signal_exc, code, word", [(KeyboardInterrupt, 130, "interrupted"), (cli.Terminated, 143, "terminated")])
def test_a_signal_during_verification_says_out_was_written(tmp_path: Path, checkpoint: Path, capsys, monkeypatch,
                                                          signal_exc, code, word) -> None:
    from kernelscale import cli_verify

    def stopped(*args, **kwargs):
        raise signal_exc()

    monkeypatch.setattr(cli_verify, "measure", stopped)
    out = tmp_path / "out.safetensors"
    got, _, stderr = call(capsys, "convert", checkpoint, out, "--scale", "2", "--verify")
    assert got == code and out.exists() and read_header(out)[1]["stem.weight"].shape == (8, 3, 7, 7)
    assert stderr.splitlines()[-1] == f"kernelscale: {word} during verification; {out} was written and is complete"


def test_debug_env_reraises(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("KERNELSCALE_DEBUG", "1")
    with pytest.raises(Exception, match="no such file"):
        main(["convert", str(tmp_path / "missing.safetensors"), str(tmp_path / "o.safetensors"), "--scale", "2"])


# --- every bad input: exit 2, one line, no traceback, no OUT, input unchanged ------------------

def _truncated(tmp: Path) -> Path:
    path = save(mixed_state_dict(), tmp / "in.safetensors")
    blob = path.read_bytes()
    path.write_bytes(blob[:-7])
    return path


BAD_INPUTS = {
    "truncated file": (_truncated, [], "truncated"),
    "corrupt header": (lambda t: header_file(t / "in.safetensors", b"{not json at all"), [], "not valid JSON"),
    "oversized header": (lambda t: header_file(t / "in.safetensors", b"{}", length=1 << 40), [], "exceeds"),
    "overlapping offsets": (lambda t: header_file(t / "in.safetensors", {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)), [], "overlaps"),
    "unknown dtype": (lambda t: header_file(t / "in.safetensors", {"a": {"dtype": "F12", "shape": [1], "data_offsets": [0, 2]}},
                                             bytes(2)), [], "unknown dtype"),
    "empty file": (lambda t: header_file(t / "in.safetensors", b"", length=0) and (t / "in.safetensors").write_bytes(b"")
                   or t / "in.safetensors", [], "empty"),
    "git lfs pointer": (lambda t: (t / "in.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\n")
                        and t / "in.safetensors", [], "LFS"),
    "missing input": (lambda t: t / "absent.safetensors", [], "no such file"),
    "scale zero": (None, ["--scale", "0"], "scale must be finite and > 0"),
    "scale negative": (None, ["--scale=-2"], "scale must be finite and > 0"),
    "scale not a number": (None, ["--scale", "two"], "expected a number"),
    "scale nan per axis": (None, ["--scale", "2,nan"], "finite"),
    "no scale": (None, ["@noscale"], "give --scale"),
    "grid for a missing tensor": (None, ["--grid", "nothing=1,2,2"], "grid 'nothing'"),
    "grid of the wrong size": (None, ["--grid", "head=3,3,3"], "27 cells"),
    "grid syntax": (None, ["--grid", "head=8x2x2"], "NAME=C,H,W"),
    "include matching nothing": (None, ["--include", "nope*"], "--include 'nope*' matches no tensor"),
    "absorb on a bias": (None, ["--absorb", "stem.bias"], "not a conv kernel"),
    "bad coef": (None, ["--coef", "lots"], "--coef 'lots'"),
    "coef zero": (None, ["--coef", "0"], "--coef '0': expected mass, paper or a number > 0"),
    "coef nan": (None, ["--coef", "nan"], "finite number > 0, got nan"),
    "bad method": (None, ["--method", "magic"], "invalid choice: 'magic'"),
    "unknown flag": (None, ["--frobnicate"], "unrecognized arguments: --frobnicate"),
    "missing plan file": (None, ["--plan", "/nonexistent/plan.toml"], "cannot read"),
    "geometry-only with interp": (None, ["--geometry-only", "--method", "interp"], "implies method 'dilate'"),
    "output exists": (None, ["@exists"], "exists; add --force"),
    "output is the input": (None, ["@same", "--force"], "is the input itself"),
    "output folder missing": (None, ["@nofolder"], "does not exist"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line(tmp_path: Path, capsys, case: str) -> None:
    make, extra, needle = BAD_INPUTS[case]
    src = make(tmp_path) if make else save(mixed_state_dict(), tmp_path / "in.safetensors")
    out = tmp_path / "out.safetensors"
    args = ["convert", str(src), str(out), "--scale", "2"]
    if "--scale" in extra or "@noscale" in extra:
        args = args[:-2]
    for item in extra:
        if item == "@exists":
            out.write_bytes(b"keep me")
        elif item == "@same":
            args[2] = str(src)
        elif item == "@nofolder":
            args[2] = str(tmp_path / "no" / "such" / "out.safetensors")
        elif item != "@noscale":
            args.append(item)
    before = sha256(src) if src.exists() else None
    code, stdout, stderr = call(capsys, *args)
    assert code == 2, stderr
    assert stdout == ""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kernelscale: error: "), stderr
    assert needle in lines[0] and "Traceback" not in stderr
    if src.exists():
        assert sha256(src) == before
    if case == "output exists":
        assert out.read_bytes() == b"keep me"
    elif case != "output is the input":
        assert not out.exists()
    assert leftovers(tmp_path) == []


def test_cuda_without_a_gpu_is_a_usage_error(tmp_path: Path, checkpoint: Path, capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, stderr = call(capsys, "convert", checkpoint, tmp_path / "o.safetensors", "--scale", "2", "--device", "cuda")
    assert code == 2 and stderr.startswith("kernelscale: error: --device cuda") and len(stderr.splitlines()) == 1


# --- as a process: no traceback, no progress bar when piped, interrupts --------------------------


def test_process_errors_and_pipes_are_quiet(tmp_path: Path, checkpoint: Path) -> None:
    bad = _truncated(tmp_path / "bad") if (tmp_path / "bad").mkdir() is None else None
    result = run_cli("convert", bad, tmp_path / "o.safetensors", "--scale", "2")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("kernelscale: error: ") and "Traceback" not in result.stderr
    result = run_cli("convert", checkpoint, tmp_path / "o.safetensors", "--scale", "2", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["tensors_resized"] == 5
    assert "\r" not in result.stderr and "%|" not in result.stderr  # no progress bar when stderr is a pipe


def _slow_conversion(tmp_path: Path) -> tuple[subprocess.Popen, Path, Path]:
    g = torch.Generator().manual_seed(2)
    src = save({f"layer{i}.weight": torch.randn(4, 4, 3, 3, generator=g) for i in range(40)}, tmp_path / "in.safetensors")
    out = tmp_path / "out.safetensors"
    proc = subprocess.Popen([sys.executable, "-m", "kernelscale.cli", "convert", str(src), str(out), "--scale", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "KERNELSCALE_TEST_SLOW_WRITE": "0.25"})
    deadline = time.monotonic() + 60
    while not leftovers(tmp_path):  # the temp file appears once planning is done and writing starts
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.5)
    return proc, src, out


def test_kill_9_leaves_no_output_and_the_next_run_cleans_up(tmp_path: Path, capsys) -> None:
    proc, src, out = _slow_conversion(tmp_path)
    before = sha256(src)
    proc.kill()
    proc.communicate()
    assert not out.exists()
    stray = leftovers(tmp_path)
    assert stray == [f".out.safetensors.kernelscale-tmp-{proc.pid}"]
    code, _, stderr = call(capsys, "convert", src, out, "--scale", "2")
    assert code == 0 and f"removed {tmp_path / stray[0]}, left by an interrupted run" in stderr
    assert leftovers(tmp_path) == [] and sha256(src) == before
    assert safetensors.torch.load_file(str(out))["layer39.weight"].shape == (4, 4, 7, 7)


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_interrupt_removes_temp_files(tmp_path: Path, sig: int, code: int, word: str) -> None:
    proc, _, out = _slow_conversion(tmp_path)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert stderr.splitlines() == [f"kernelscale: {word}; no output was written"]
    assert not out.exists() and leftovers(tmp_path) == []


# --- a diffusers UNet folder ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def unet_folder(tmp_path_factory) -> Path:
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    model = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        sample_size=16, norm_num_groups=8)
    root = tmp_path_factory.mktemp("pipeline")
    model.save_pretrained(root / "unet", safe_serialization=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}))
    return root


def test_diffusers_folder_denoiser_resized_aligned_and_written_for_load_pipeline(unet_folder: Path, tmp_path: Path,
                                                                                  capsys) -> None:
    out = tmp_path / "x2"
    code, stdout, stderr = call(capsys, "convert", unet_folder, out, "--scale", "2", "--json")
    assert code == 0
    assert (out / "model_index.json").read_bytes() == (unet_folder / "model_index.json").read_bytes()
    assert sorted(p.name for p in (out / "unet").iterdir()) == ["config.json", "kernelscale_model.safetensors"]
    original = json.loads((unet_folder / "unet" / "config.json").read_text())
    config = json.loads((out / "unet" / "config.json").read_text())
    assert config.pop("_kernelscale") == {"format_version": 1, "weights": "kernelscale_model.safetensors", "scale": 2.0,
                                          "trained_sample_size": 16, "padding": "asymmetric"}
    assert config == {**original, "sample_size": 32}
    _, before = read_header(unet_folder / "unet" / "diffusion_pytorch_model.safetensors")
    _, after = read_header(out / "unet" / "kernelscale_model.safetensors")
    convs = [n for n, t in before.items() if len(t.shape) == 4 and t.shape[2:] != (1, 1)]
    assert len(convs) >= 15
    for name in convs:  # the strided downsampler aligned by default: cells, 3×3 → 6×6
        side = 6 if ".downsamplers." in name else 7
        assert after[name].shape == before[name].shape[:2] + (side, side), name
    for name in set(before) - set(convs):
        assert after[name].shape == before[name].shape, name
    note = [line for line in stderr.splitlines() if line.startswith("kernelscale: note: unet/:")]
    assert len(note) == 1 and f"kernelscale.integrations.diffusers.load_pipeline('{out}')" in note[0]
    summary = json.loads(stdout)
    self_attention = [n for n in before if n.endswith("attn1.to_q.weight")]
    assert len(self_attention) == 4 and summary["tensors_rescaled"] == 4  # the attention temperature, counted apart
    assert summary["tensors_resized"] == len(convs)
    assert summary["loading"][0]["stock_loadable"] is False and "load_pipeline" in summary["loading"][0]["load"]
    assert summary["copied_files"] == ["model_index.json"] and summary["rewritten_files"] == ["unet/config.json"]


def test_diffusers_loads_resized_conv_in_and_conv_out_as_they_are(unet_folder: Path, tmp_path: Path, capsys) -> None:
    diffusers = pytest.importorskip("diffusers")
    out = tmp_path / "io"
    code, _, stderr = call(capsys, "convert", unet_folder, out, "--scale", "2", "--include", "conv_in", "--include", "conv_out")
    assert code == 0 and "conv_in_kernel 3 → 7, conv_out_kernel 3 → 7" in stderr
    config = json.loads((out / "unet" / "config.json").read_text())
    assert config["conv_in_kernel"] == 7 and config["conv_out_kernel"] == 7
    model = diffusers.UNet2DConditionModel.from_pretrained(out / "unet")
    assert model.conv_in.kernel_size == (7, 7) and model.conv_in.padding == (3, 3)
    stored = safetensors.torch.load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    assert torch.equal(model.conv_out.weight.detach(), stored["conv_out.weight"])


@pytest.mark.parametrize("args", [["--version"], ["--help"], []])
def test_help_and_version_do_not_import_torch(args: list[str]) -> None:
    # importing torch takes about 2 s; the top-level help and the version need none of it
    code = ("import sys; from kernelscale.cli import main; code = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, 'imported'; sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "imported" not in result.stderr, result.stderr
    assert result.returncode == (2 if not args else 0)
    expected = {"--version": __version__, "--help": "convert"}.get(args[0] if args else "", "required: COMMAND")
    assert expected in result.stdout + result.stderr


def test_a_command_still_gets_its_arguments_and_the_package_its_names() -> None:
    import kernelscale

    assert kernelscale.resize_state_dict.__module__ == "kernelscale.state_dict"
    assert set(kernelscale.__all__) <= set(dir(kernelscale))
    with pytest.raises(AttributeError):
        kernelscale.no_such_name  # noqa: B018
    help_text = build_parser(only=["inspect"])._subparsers._group_actions[0].choices["inspect"].format_help()
    assert "--scale" in help_text
