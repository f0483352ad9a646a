import types

import pytest
import torch

import unsam
from unsam import kernels
from unsam.kernels import _ext


def test_build_reports_cuda_as_bool_and_ops_are_registered():
    assert isinstance(kernels.has_cuda(), bool)
    assert kernels.cuda_available() == (kernels.has_cuda() and torch.cuda.is_available())
    for name in ("affinity", "lanczos_fiedler", "merge_levels"):
        assert hasattr(torch.ops.unsam, name)
    assert unsam.__version__


def test_cuda_tensor_on_cpu_only_build_says_how_to_rebuild(monkeypatch):
    monkeypatch.setattr(_ext, "has_cuda", lambda: False)
    fake_cuda = types.SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0))
    with pytest.raises(RuntimeError, match="UNSAM_CUDA=ON pip install --no-build-isolation -e ."):
        _ext.check_device(fake_cuda, "feats", "affinity")


def test_other_devices_are_rejected_by_name():
    meta = torch.empty(3, 4, device="meta")
    with pytest.raises(RuntimeError, match="feats should be on a CPU or CUDA device, got meta"):
        _ext.check_device(meta, "feats", "affinity")
