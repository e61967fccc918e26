"""Smoke run of benchmarks/exp_generation.py --quick: every method samples, is scored and drawn."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("diffusers")
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def load_experiment():
    spec = importlib.util.spec_from_file_location("exp_generation", ROOT / "benchmarks" / "exp_generation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_quick_run_scores_every_method(tmp_path, capsys):
    exp = load_experiment()
    png = tmp_path / "samples.png"
    assert exp.main(["--quick", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert png.stat().st_size > 0
    for method in exp.METHODS.values():
        rows = [line for line in out.splitlines() if line.startswith(f"| {method.label} |")]
        assert len(rows) == 2, (method.label, out)  # one quality row, one cost row
        quality = [float(cell.split(" ± ")[0]) for cell in rows[0].strip("| ").split(" | ")[1:]]
        assert len(quality) == 3 and all(math.isfinite(v) for v in quality)
        assert 0 <= quality[1] <= 1 and 0 <= quality[2] <= 1
        evals = float(rows[1].strip("| ").split(" | ")[1])
        assert evals == 2 * exp.QUICK_STEPS  # DDIM steps × the two halves of classifier-free guidance
    assert re.search(r"N = 10 per method", out)
