"""Stand-in for torchvision.transforms.v2 (see torchvision/__init__.py)."""

from torchvision import _Unavailable
from torchvision.transforms.v2 import functional  # noqa: F401


def __getattr__(name: str):
    return _Unavailable(f"transforms.v2.{name}")
