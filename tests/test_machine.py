"""The machine a stage's timings were measured on, as metrics/timing/*.json name it."""
import sys
import types

from transfer import machine


def test_the_cpu_kind_is_its_widest_vector_instructions():
    assert machine.cpu_kind({"avx2", "avx512f", "avx512_vnni"}) == "AVX-512 VNNI"
    assert machine.cpu_kind({"avx2", "avx512f"}) == "AVX-512"
    assert machine.cpu_kind({"sse4_2", "avx2"}) == "AVX2"


def test_the_description_names_the_cpu_kind_and_cores(monkeypatch):
    monkeypatch.setattr(machine, "cpu_info", lambda: ["model name\t: Test CPU 9000", "flags\t\t: sse4_2 avx2 fma"])
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # a stage that never imported torch (baseline)
    assert machine.describe() == "Test CPU 9000 (AVX2, 3 cores)"


def test_a_cpu_named_without_a_model_number_gets_its_family_and_model(monkeypatch):
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    described = {}
    for model in ("1", "49"):  # two EPYC generations a hypervisor names alike
        monkeypatch.setattr(machine, "cpu_info", lambda model=model: [
            "processor\t: 0", "cpu family\t: 23", f"model\t\t: {model}", "model name\t: AMD EPYC",
            "flags\t\t: avx2 fma"])
        described[model] = machine.describe()
    assert described == {"1": "AMD EPYC (family 23 model 1, AVX2, 2 cores)",
                         "49": "AMD EPYC (family 23 model 49, AVX2, 2 cores)"}


def test_a_cpu_without_family_and_model_lines_is_described_by_its_name(monkeypatch):
    monkeypatch.setattr(machine, "cpu_info", lambda: ["model name\t: Some CPU", "flags\t\t: avx2"])
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert machine.cpu_model() is None
    assert machine.describe() == "Some CPU (AVX2, 1 cores)"


def test_a_visible_gpu_comes_first(monkeypatch):
    cuda = types.SimpleNamespace(is_available=lambda: True, device_count=lambda: 2,
                                 get_device_name=lambda: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(machine, "cpu_info", lambda: ["model name\t: Test CPU", "flags\t\t: avx2 avx512f avx512_vnni"])
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    assert machine.describe() == "NVIDIA H100 80GB HBM3 x2, Test CPU (AVX-512 VNNI, 16 cores)"
