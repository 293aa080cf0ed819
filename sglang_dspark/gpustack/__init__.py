"""GPUStack integration: register DSPARK as a version of the built-in SGLang
backend and deploy DeepSeek-V4-Flash-DSpark with it (``sglang-dspark gpustack``)."""
