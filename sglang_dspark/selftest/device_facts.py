"""The device under test: its name, compute capability and peak HBM bandwidth.

Peak HBM bandwidth by GPU, from the vendors' data sheets (NVIDIA H100, H200,
H20, H800, A100, B200 and L40S product briefs), matched against
``torch.cuda.get_device_name()``. More specific names come first: "H100 PCIe"
before "H100", "H200" before "H20".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata

import torch

PEAK_SOURCE = "vendor data sheet"

# (pattern, label, TB/s); searched in order, case-insensitive.
HBM_PEAKS: tuple[tuple[str, str, float], ...] = (
    (r"\bH100\b.*\bPCIe\b", "H100 PCIe", 2.0),
    (r"\bH100\b.*\bNVL\b", "H100 NVL", 3.9),
    (r"\bH100\b", "H100 SXM", 3.35),
    (r"\bH200\b", "H200", 4.8),
    (r"\bH20\b", "H20", 4.0),
    (r"\bH800\b.*\bPCIe\b", "H800 PCIe", 2.0),
    (r"\bH800\b", "H800", 3.35),
    (r"\bA100\b.*\b80\s?GB\b", "A100 80GB", 2.0),
    (r"\bA100\b", "A100 40GB", 1.555),
    (r"\bB200\b", "B200", 8.0),
    (r"\bL40S\b", "L40S", 0.864),
)


def hbm_peak(device_name: str) -> tuple[str, float] | None:
    """``(label, bytes/s)`` of the GPU named ``device_name``, or ``None`` when the table lacks it."""
    for pattern, label, tbps in HBM_PEAKS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return label, tbps * 1e12
    return None


@dataclass(frozen=True)
class DeviceFacts:
    """What the report says about the device.

    Attributes:
        kind: ``"cuda"`` or ``"cpu"``.
        name: the device name (``torch.cuda.get_device_name``), or ``"CPU"``.
        capability: CUDA compute capability, ``None`` on CPU.
        peak_bytes_per_s: HBM peak, ``None`` on CPU or for a GPU missing from the table.
        peak_source: where the peak comes from.
    """

    kind: str
    name: str
    capability: tuple[int, int] | None
    peak_bytes_per_s: float | None
    peak_source: str

    def line(self) -> str:
        """One line for the report."""
        if self.kind == "cpu":
            return "device: CPU (Triton kernels in Triton's interpreter: times are not hardware measurements)"
        cap = f"SM{self.capability[0]}{self.capability[1]}" if self.capability else "SM?"
        peak = (f"peak HBM {self.peak_bytes_per_s / 1e12:.3g} TB/s ({self.peak_source})"
                if self.peak_bytes_per_s else f"peak HBM unknown ({self.peak_source})")
        return f"device: {self.name} ({cap}), {peak}"


def describe_device(kind: str, peak_tbps: float | None = None) -> DeviceFacts:
    """Facts of this machine's ``kind`` device; ``peak_tbps`` overrides the table."""
    if kind != "cuda":
        return DeviceFacts("cpu", "CPU", None, None, "no HBM peak on CPU")
    name = torch.cuda.get_device_name()
    capability = tuple(torch.cuda.get_device_capability())
    if peak_tbps is not None:
        return DeviceFacts("cuda", name, capability, peak_tbps * 1e12, "--peak-tbps")
    found = hbm_peak(name)
    if found is None:
        return DeviceFacts("cuda", name, capability, None, "not in the table: give --peak-tbps")
    label, peak = found
    return DeviceFacts("cuda", name, capability, peak, f"{label}, {PEAK_SOURCE}")


def package_versions() -> dict[str, str]:
    """Versions of the packages the checks use, ``"not installed"`` where missing."""
    out = {"torch": torch.__version__}
    for dist in ("triton", "flashinfer-python", "sglang", "transformers", "sglang-dspark"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out
