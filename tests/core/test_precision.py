"""Mixed precision by hardware: what runs when a recipe or `repair` asks for bf16 or fp16."""

from __future__ import annotations

import pytest

from gan_dist.core import precision


@pytest.fixture()
def cpu_without_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16", lambda: None)


def test_a_cpu_with_bf16_instructions_trains_in_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16", lambda: "amx")
    assert precision.effective_precision("bf16", "cpu") == ("bf16", None)
    assert precision.inference_precision("auto", "cpu") == "bf16"


def test_bf16_on_a_cpu_without_it_falls_back_to_fp32_and_says_so(cpu_without_bf16):
    run, note = precision.effective_precision("bf16", "cpu")
    assert run == "no" and "no bf16 instructions" in note and "fp32" in note
    assert precision.inference_precision("auto", "cpu") == "fp32"
    assert precision.inference_precision("bf16", "cpu") == "bf16"  # asked for: honoured


def test_fp16_on_a_cpu_is_fp32_with_a_note_not_a_silent_no_op():
    run, note = precision.effective_precision("fp16", "cpu")
    assert run == "no" and "needs a GPU" in note


def test_fp32_asked_is_fp32_everywhere():
    assert precision.effective_precision("no", "cpu") == ("no", None)
    assert precision.effective_precision("no", "cuda") == ("no", None)


def test_this_machine_reports_what_oneDNN_can_use():
    """The probe itself, on the real CPU: an answer from the known set."""
    assert precision.cpu_bf16() in ("amx", "avx512_bf16", None)
