"""Stand-in for torchvision.transforms.functional (see torchvision/__init__.py)."""

import enum

from torchvision import _Unavailable


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def __getattr__(name: str):
    return _Unavailable(f"transforms.functional.{name}")
