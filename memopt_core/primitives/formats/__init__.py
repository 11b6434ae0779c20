"""Number formats deployed today, as pure tensor functions: NF4 (:mod:`nf4`), FP8 (:mod:`fp8`),
MXFP4/NVFP4 (:mod:`microscaling`), llama.cpp k-quants and their fallbacks (:mod:`kquants`,
:mod:`ggml_blocks`, :mod:`ggml_layout`), the randomized Hadamard rotation (:mod:`hadamard`) and
histogram clipping ranges (:mod:`ranges`). :mod:`registry` is the one entry point per operation."""
