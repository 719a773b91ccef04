"""`precision: auto` picks bf16 autocast only where the hardware computes bf16 natively."""

from __future__ import annotations

import warnings

import pytest

from dynapose4d.core import precision
from dynapose4d.pipeline.config import TrainerConfig, WandbConfig
from dynapose4d.stages.base import StageContext, build_trainer

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
SAPPHIRE = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"
GRAVITON2 = "processor\t: 0\nFeatures\t: fp asimd atomics\n"


def test_cpuinfo_flags_decide_native_bf16():
    assert not precision.native_bf16_in_cpuinfo(AVX2_ONLY, "x86_64")
    assert precision.native_bf16_in_cpuinfo(SAPPHIRE, "x86_64")
    assert precision.native_bf16_in_cpuinfo(GRAVITON3, "aarch64")
    assert not precision.native_bf16_in_cpuinfo(GRAVITON2, "aarch64")
    assert not precision.native_bf16_in_cpuinfo("", "x86_64")


@pytest.mark.parametrize("native", [False, True])
def test_auto_on_cpu_follows_the_hardware_and_explicit_values_pass_through(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert precision.resolve_precision("auto", "cpu") == ("bf16-mixed" if native else "32-true")
    assert precision.resolve_precision("32-true", "cpu") == "32-true"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert precision.resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"  # honoured, with a warning
    assert [("emulated" in str(w.message)) for w in caught] == ([] if native else [True])


def test_stage_trainer_resolves_auto(monkeypatch, tmp_path):
    """The stages' Trainer gets the resolved string (Lightning does not know "auto")."""
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    ctx = StageContext(scene=None, run_dir=tmp_path / "run", wandb=WandbConfig(enabled=False),
                       trainer=TrainerConfig(accelerator="cpu", precision="auto", progress_bar=False))
    assert build_trainer(ctx, "cape", max_steps=1).precision == "32-true"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert build_trainer(ctx, "cape", max_steps=1, precision="auto").precision == "bf16-mixed"


def test_train_cape_keeps_tf32_to_itself(monkeypatch):
    """train-cape turns on TF32 matmuls on CUDA for its own training only: the process's float32 matmul precision
    is back to what it was afterwards, also when training fails. (Left at "high", it made the pure-torch rasterizer
    on CUDA differ from gsplat in 29% of pixels by up to 0.023 in every later test of the same process.)"""
    import torch

    from dynapose4d.stages import train_cape as tc

    seen: list[str] = []

    def fake_train(cfg, out, log):
        seen.append(torch.get_float32_matmul_precision())
        if out == "fail":
            raise RuntimeError("boom")
        return {"ok": True}

    monkeypatch.setattr(tc, "_train", fake_train)
    monkeypatch.setattr(tc, "_on_cuda", lambda cfg: True)
    before = torch.get_float32_matmul_precision()
    assert tc.train_cape(tc.CapeTrainConfig(), "out") == {"ok": True}
    with pytest.raises(RuntimeError, match="boom"):
        tc.train_cape(tc.CapeTrainConfig(), "fail")
    assert seen == ["high", "high"] and torch.get_float32_matmul_precision() == before
    monkeypatch.setattr(tc, "_on_cuda", lambda cfg: False)  # on the CPU the setting is not touched
    tc.train_cape(tc.CapeTrainConfig(), "out")
    assert seen[-1] == before
