"""CPU stand-in for torchvision (text-only serving).

PyPI's torchvision wheels are built against the CUDA torch and fail to import
beside the CPU build of torch 2.13.0 this project develops on. SGLang imports a
few torchvision names at module level for its multimodal processors; text
models never call them. Every callable here raises a clear error if reached.
"""

__version__ = "0.0.0+sglang-dspark-cpu-standin"


class _Unavailable:
    """A placeholder that fails loudly when used."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(
            f"torchvision.{self._name} is not available in the sglang-dspark CPU "
            "environment (text-only serving); install a real torchvision for "
            "multimodal models."
        )

    def __getattr__(self, item: str):
        return _Unavailable(f"{self._name}.{item}")


from torchvision import io, transforms  # noqa: E402,F401  (after _Unavailable: they import it)
