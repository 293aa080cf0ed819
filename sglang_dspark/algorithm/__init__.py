"""The DSpark algorithm core: pure torch, no SGLang import, CPU and CUDA."""
