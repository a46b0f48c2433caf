"""facemogle.train.setup: what the trainer and the autoencoder stage share."""

from __future__ import annotations

import logging

import pytest

from facemogle.train import setup as train_setup
from facemogle.train.config import config_from_dict
from .conftest import tiny_config

EPYC = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
OLD_XEON = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"
ARM_OLD = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32\n"


@pytest.mark.parametrize("cpuinfo, native", [(EPYC, True), (OLD_XEON, False), (ARM_BF16, True), (ARM_OLD, False),
                                             ("processor\t: 0\n", None)])
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo, native):
    assert train_setup.cpu_has_native_bf16(cpuinfo) is native


@pytest.mark.parametrize("native, warned", [(False, True), (True, False), (None, False)])
def test_bf16_training_warns_on_a_cpu_without_native_bf16(synthetic_data, tmp_path, monkeypatch, caplog, native, warned):
    from facemogle.train import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "cpu_has_native_bf16", lambda: native)
    config = config_from_dict(tiny_config(synthetic_data, tmp_path / "run", train={"mixed_precision": "bf16"}))
    with caplog.at_level(logging.WARNING, logger="facemogle.train.trainer"):
        trainer_module.Trainer(config, progress=False)
    assert ("without native bfloat16" in caplog.text) is warned
