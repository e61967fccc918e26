"""The header fuzzer (benchmarks/fuzz_headers.py), a fast seeded subset: every mutated header is
accepted (and reads back as declared) or refused with a kernelscale error; nothing else escapes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _fuzzer():
    spec = importlib.util.spec_from_file_location("fuzz_headers", ROOT / "benchmarks" / "fuzz_headers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_three_hundred_mutated_headers_are_accepted_or_refused(tmp_path: Path) -> None:
    crashes = []
    outcomes, reasons = _fuzzer().fuzz(300, seed=1, folder=str(tmp_path), on_crash=lambda case, raw, exc: crashes.append((case, exc)))
    assert crashes == [], crashes[:3]
    assert set(outcomes) == {"accepted", "refused"} and sum(outcomes.values()) == 300
    assert len(reasons) >= 15  # the mutations reach many different rules


def test_the_fuzzer_reports_a_crash(tmp_path: Path, monkeypatch) -> None:
    module = _fuzzer()

    def broken(path: str) -> str:
        raise TypeError("let through")

    monkeypatch.setattr(module, "check", broken)
    crashes = []
    outcomes, _ = module.fuzz(3, seed=0, folder=str(tmp_path), on_crash=lambda case, raw, exc: crashes.append(case))
    assert outcomes == {"crash:TypeError": 3} and crashes == [0, 1, 2]
