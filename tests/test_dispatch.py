"""Backend selection: argument, then KERNELSCALE_BACKEND, then auto (DESIGN §7)."""

from __future__ import annotations

import pytest
import torch

from kernelscale import dispatch, triton_ops
from kernelscale.apply_torch import apply_dense_torch, apply_separable_torch
from kernelscale.errors import BackendUnavailableError, InvalidOptionError, KernelscaleError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    # test_triton_ops sets TRITON_INTERPRET=1 for the whole session; each test here sets its own.
    monkeypatch.delenv("KERNELSCALE_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


CPU = torch.zeros(3, 9)


def test_auto_picks_torch_for_cpu_tensors():
    assert dispatch.select_backend(CPU) == ("torch", "auto: tensor is on cpu, not CUDA")


def test_auto_picks_torch_for_cpu_tensors_even_in_interpreter_mode(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dispatch.select_backend(CPU)[0] == "torch"


def test_env_var_forces_torch(monkeypatch):
    monkeypatch.setenv("KERNELSCALE_BACKEND", "torch")
    assert dispatch.select_backend(CPU) == ("torch", "torch requested by KERNELSCALE_BACKEND")


def test_env_var_auto_and_case_and_spaces(monkeypatch):
    monkeypatch.setenv("KERNELSCALE_BACKEND", " Auto ")
    assert dispatch.select_backend(CPU)[0] == "torch"
    monkeypatch.setenv("KERNELSCALE_BACKEND", "")
    assert dispatch.select_backend(CPU)[1].startswith("auto")


def test_argument_overrides_env_var(monkeypatch):
    monkeypatch.setenv("KERNELSCALE_BACKEND", "triton")  # would raise on a CPU tensor
    assert dispatch.select_backend(CPU, "torch") == ("torch", "torch requested by the backend argument")


@pytest.mark.parametrize("source", ["argument", "env"])
def test_unknown_backend_names_the_value(monkeypatch, source):
    if source == "env":
        monkeypatch.setenv("KERNELSCALE_BACKEND", "cuda")
        call = lambda: dispatch.select_backend(CPU)  # noqa: E731
        where = "KERNELSCALE_BACKEND"
    else:
        call = lambda: dispatch.select_backend(CPU, "cuda")  # noqa: E731
        where = "backend argument"
    with pytest.raises(InvalidOptionError, match=f"unknown backend 'cuda'.*{where}.*torch, triton, auto") as info:
        call()
    assert isinstance(info.value, KernelscaleError) and isinstance(info.value, ValueError)


def test_forced_triton_on_cpu_without_interpreter_raises(monkeypatch):
    if triton_ops._import_error() is not None:
        pytest.skip("triton not importable: covered by the next test")
    with pytest.raises(BackendUnavailableError, match="requested by the backend argument cannot run.*TRITON_INTERPRET") as info:
        dispatch.select_backend(CPU, "triton")
    assert isinstance(info.value, RuntimeError)
    monkeypatch.setenv("KERNELSCALE_BACKEND", "triton")
    with pytest.raises(BackendUnavailableError, match="KERNELSCALE_BACKEND"):
        dispatch.apply_dense(CPU, torch.zeros(49, 9), torch.float32)


def test_forced_triton_when_not_importable_raises(monkeypatch):
    monkeypatch.setattr(triton_ops, "_import_error", lambda: "triton is not importable (ImportError: no module)")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(BackendUnavailableError, match="not importable"):
        dispatch.select_backend(CPU, "triton")
    # auto never needs it for CPU work, and says why when it is a CUDA question.
    assert dispatch.select_backend(CPU)[0] == "torch"


def test_forced_triton_in_interpreter_mode_is_accepted(monkeypatch):
    if triton_ops._import_error() is not None:
        pytest.skip("triton not importable")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    chosen, reason = dispatch.select_backend(CPU, "triton")
    assert chosen == "triton" and "interpreter" in reason


def test_forced_triton_refuses_float64_with_reason(monkeypatch):
    if triton_ops._import_error() is not None:
        pytest.skip("triton not importable")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(BackendUnavailableError, match="float64.*torch backend"):
        dispatch.select_backend(CPU.double(), "triton")


def test_triton_available_reasons(monkeypatch):
    if triton_ops._import_error() is not None:
        assert triton_ops.triton_available(CPU) == (False, triton_ops._import_error())
        return
    if not torch.cuda.is_available():
        assert triton_ops.triton_available() == (False, "no CUDA device and TRITON_INTERPRET is not set")
    ok, why = triton_ops.triton_available(CPU)
    assert not ok and "TRITON_INTERPRET" in why
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_ops.triton_available(CPU)[0]


def test_torch_dispatch_matches_reference(monkeypatch):
    g = torch.Generator().manual_seed(0)
    x, r = torch.randn(4, 9, generator=g).half(), torch.randn(49, 9, generator=g)
    assert torch.equal(dispatch.apply_dense(x, r, torch.bfloat16), apply_dense_torch(x, r, torch.bfloat16))
    x3, a, b = torch.randn(2, 3, 4, generator=g), torch.randn(5, 3, generator=g), torch.randn(6, 4, generator=g)
    monkeypatch.setenv("KERNELSCALE_BACKEND", "torch")
    assert torch.equal(dispatch.apply_separable(x3, a, b, torch.float16), apply_separable_torch(x3, a, b, torch.float16))


def test_cpu_work_does_not_import_triton():
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from kernelscale import dispatch\n"
        "dispatch.apply_dense(torch.ones(2, 9), torch.ones(49, 9), torch.float16)\n"
        "dispatch.apply_separable(torch.ones(2, 3, 3), torch.ones(7, 3), torch.ones(7, 3), torch.float16)\n"
        "assert 'triton' not in sys.modules, 'triton was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
