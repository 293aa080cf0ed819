import pytest
import torch
from safetensors.torch import save_file

from sglang_dspark.models.safetensors_header import SafetensorsHeaderError, read_safetensors_header


def test_header_lists_tensors_and_catches_truncation(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(3, 4), "b": torch.ones(2, dtype=torch.int32)}, str(path))
    header = read_safetensors_header(path)
    assert header["a"].shape == (3, 4) and header["a"].dtype == "F32"
    assert header["b"].dtype == "I32"
    data = path.read_bytes()
    path.write_bytes(data[:-4])
    with pytest.raises(SafetensorsHeaderError, match="truncated"):
        read_safetensors_header(path)
    path.write_bytes(data[:5])
    with pytest.raises(SafetensorsHeaderError, match="too short"):
        read_safetensors_header(path)
    path.write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(SafetensorsHeaderError, match="does not fit"):
        read_safetensors_header(path)
