"""All SGLang glue of sglang-dspark (pinned to SGLang 0.5.23's internals)."""
