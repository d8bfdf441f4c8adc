"""`chargen sample --precision auto`: float32 unless fast lower-precision units exist and measure faster."""

from __future__ import annotations

import pytest

from chargen import auto_precision
from chargen.auto_precision import Hardware, choose_precision
from chargen.cpuinfo import feature_flags
from chargen.generation import NumpyStepper, TensorFlowStepper

from helpers import run_cli

NO_UNITS = Hardware(cpu_flags=frozenset({"avx2", "fma", "f16c"}))
AMX = Hardware(cpu_flags=frozenset({"avx2", "avx512f", "amx_bf16", "amx_tile"}))


class Timer:
    """Seconds per step for each engine, as given; records what it was asked to time."""

    def __init__(self, **seconds):
        self.seconds, self.asked = seconds, []

    def __call__(self, precision: str) -> float:
        self.asked.append(precision)
        return self.seconds[precision]


def test_without_fast_units_auto_is_float32_and_times_nothing():
    timer = Timer()
    for hardware in (Hardware(), NO_UNITS, Hardware(cpu_flags=frozenset({"avx512f", "avx512_fp16"}))):
        choice = choose_precision(hardware, timer, batch=64)
        assert choice.precision == "float32"
        assert choice.line == ("precision auto: float32 (no GPU and no bfloat16 units in this CPU: "
                               "lower precision would be slower here)")
    assert timer.asked == []


@pytest.mark.parametrize("flag", ["amx_bf16", "avx512_bf16"])
def test_bfloat16_units_that_measure_faster_choose_bfloat16(flag):
    timer = Timer(bfloat16=0.001, float32=0.002)  # at batch 64: 64,000 and 32,000 characters per second
    choice = choose_precision(Hardware(cpu_flags=frozenset({"avx2", flag})), timer, batch=64)
    assert sorted(timer.asked) == ["bfloat16", "float32"]
    assert choice.precision == "bfloat16"
    assert choice.line == (f"precision auto: bfloat16 (this CPU has {flag}; measured at batch 64: "
                           "bfloat16 64,000 chars/s, float32 32,000)")


def test_bfloat16_units_that_measure_slower_keep_float32():
    choice = choose_precision(AMX, Timer(bfloat16=0.004, float32=0.0003), batch=1)
    assert choice.precision == "float32"
    assert "this CPU has amx_bf16; measured at batch 1: bfloat16 250 chars/s, float32 3,333" in choice.line


def test_a_gpu_times_float16_against_float32():
    timer = Timer(float16=0.0005, float32=0.002)
    choice = choose_precision(Hardware(gpus=1), timer, batch=32)
    assert sorted(timer.asked) == ["float16", "float32"] and choice.precision == "float16"
    assert "1 GPU(s) seen by TensorFlow" in choice.reason


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 amx_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu\n", encoding="utf-8")
    assert feature_flags(cpuinfo) == {"fpu", "avx2", "amx_bf16"}
    assert feature_flags(tmp_path / "absent") == frozenset()


def _sample(trained, *options):
    result = run_cli("sample", trained["run"], "--length", 20, "--seed", 1, "--prime", "cedar ", *options)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("precision auto: ")]
    assert len(lines) == 1, result.stderr
    return result.stdout, lines[0]


def test_sample_defaults_to_auto_and_says_what_it_chose(trained, monkeypatch):
    """On this machine's real hardware facts. Without fast units (the AMD EPYC this is developed on) the
    engine is numpy's float32, nothing is timed, and the sample is the one `--precision float32` gives."""
    if Hardware.detect().candidate() is not None:
        pytest.skip("this machine has fast lower-precision units: auto measures here (see the tests above)")

    def no_timing(*_):
        raise AssertionError("auto timed an engine on hardware without fast lower-precision units")

    monkeypatch.setattr(auto_precision, "step_seconds", no_timing)
    text, line = _sample(trained)
    assert line.startswith("precision auto: float32 (no GPU and no bfloat16 units")
    assert text == _sample_explicitly(trained, "float32")


def _sample_explicitly(trained, precision):
    result = run_cli("sample", trained["run"], "--length", 20, "--seed", 1, "--prime", "cedar ",
                     "--precision", precision)
    assert result.exit_code == 0, result.output
    assert "precision auto" not in result.stderr
    return result.stdout


def test_auto_uses_the_engine_that_measured_faster_and_builds_it_once(trained, monkeypatch):
    """With AMX reported and bfloat16 timed faster, the sample comes from the bfloat16 TensorFlow engine."""
    monkeypatch.setattr(Hardware, "detect", classmethod(lambda cls: AMX))
    timed, built = [], []

    def tensorflow_twice_as_fast(stepper, batch):
        timed.append(stepper)
        return 0.001 if isinstance(stepper, TensorFlowStepper) else 0.002

    monkeypatch.setattr(auto_precision, "step_seconds", tensorflow_twice_as_fast)
    real_make_stepper = auto_precision.make_stepper

    def counting_make_stepper(model, precision):
        built.append(precision)
        return real_make_stepper(model, precision)

    monkeypatch.setattr(auto_precision, "make_stepper", counting_make_stepper)
    text, line = _sample(trained)
    assert line.startswith("precision auto: bfloat16 (this CPU has amx_bf16; measured at batch 1: bfloat16 1,000")
    assert sorted(built) == ["bfloat16", "float32"]  # the timed bfloat16 engine generated: not built again
    assert {type(stepper) for stepper in timed} == {NumpyStepper, TensorFlowStepper}
    assert text == _sample_explicitly(trained, "bfloat16")


def test_eval_has_no_auto():
    """eval's figure must not depend on the machine, so it keeps float32 as its default and offers no auto."""
    result = run_cli("eval", "some-run", "some.txt", "--precision", "auto")
    assert result.exit_code == 2 and "'auto' is not one of" in result.output
