"""Stand-in for torchvision.transforms.v2.functional (see torchvision/__init__.py)."""

from torchvision import _Unavailable


def __getattr__(name: str):
    return _Unavailable(f"transforms.v2.functional.{name}")
