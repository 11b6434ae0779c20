"""Reading a safetensors tensor without a mapping gives what safetensors' own reader gives."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from memopt_core.offload.unmapped_read import read_tensor

TENSORS = {
    "f32": torch.randn(7, 5),
    "f16": torch.randn(3, 4).half(),
    "bf16": torch.randn(6).bfloat16(),
    "i8": torch.randint(-128, 127, (4, 4), dtype=torch.int8),
    "u8 codes": torch.randint(0, 255, (9,), dtype=torch.uint8),
    "i64": torch.arange(5),
    "bool mask": torch.rand(3, 3) > 0.5,
    "fp8": torch.randn(4, 2).to(torch.float8_e4m3fn),
    "scalar": torch.tensor(3.5),
    "empty": torch.empty(0, 4),
    "i16": torch.arange(4, dtype=torch.int16),
    "u16 (not in the table: read through safetensors)": torch.tensor([0, 1, 2, 65535], dtype=torch.int32).to(torch.uint16),
}


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in TENSORS.items()}, str(path))
    return str(path)


@pytest.mark.parametrize("name", list(TENSORS))
def test_same_tensor_as_safetensors(checkpoint, name):
    expected = load_file(checkpoint)[name]
    got = read_tensor(checkpoint, name)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert torch.equal(got.view(torch.uint8) if got.dtype.itemsize == 1 and got.is_floating_point() else got,
                       expected.view(torch.uint8) if expected.dtype.itemsize == 1 and expected.is_floating_point()
                       else expected)


def test_a_rewritten_file_is_read_anew(checkpoint):
    read_tensor(checkpoint, "f32")
    save_file({"f32": torch.ones(7, 5)}, checkpoint)
    assert torch.equal(read_tensor(checkpoint, "f32"), torch.ones(7, 5))
