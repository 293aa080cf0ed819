import os

# Triton kernels run in the interpreter on CPU-only machines; this must be set
# before any @triton.jit function is defined.
os.environ.setdefault("TRITON_INTERPRET", "1")
