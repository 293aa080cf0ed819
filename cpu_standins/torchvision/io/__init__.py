"""Stand-in for torchvision.io (see torchvision/__init__.py)."""

import enum

from torchvision import _Unavailable


class ImageReadMode(enum.Enum):
    UNCHANGED = 0
    GRAY = 1
    GRAY_ALPHA = 2
    RGB = 3
    RGB_ALPHA = 4


decode_image = _Unavailable("io.decode_image")
decode_jpeg = _Unavailable("io.decode_jpeg")
read_image = _Unavailable("io.read_image")
