"""Hugging Face safetensors directories: master weights (``hf-bf16``) and transformers' packed
2-bit layout (``hf-packed``), over shared directory, index and sharded-writing helpers (``common``)."""
