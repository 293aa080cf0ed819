"""Stand-in for torchvision.transforms (see torchvision/__init__.py)."""

from torchvision import _Unavailable
from torchvision.transforms import functional, v2  # noqa: F401
from torchvision.transforms.functional import InterpolationMode  # noqa: F401


def __getattr__(name: str):
    return _Unavailable(f"transforms.{name}")
