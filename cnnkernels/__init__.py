"""cnnkernels: Triton kernels for the classic CNNs, and ``fuse(model)`` to run any ``torch.nn``
CNN on them (``cnnkernels.fusion``).

``import cnnkernels`` stays light: triton is imported with the first use of ``fuse`` (or of a
submodule), so ``TRITON_INTERPRET`` can still be set after this import and before that use."""

__all__ = ["fuse"]


def __getattr__(name: str):
    if name == "fuse":
        from .fusion import fuse

        return fuse
    raise AttributeError(f"module 'cnnkernels' has no attribute {name!r}")
