"""The values each setting may take (the dashboard's widgets and the CLI's choices use the same)."""

BUNDLED_MODELS = ("smollm2-135m", "minilm-l6", "tiny-llama", "tiny-bert")
DEVICES = ("cpu", "cuda", "mps", "auto")
DTYPES = ("float32", "bfloat16", "float16")
COMPUTE_DTYPES = ("float32", "bfloat16")
PRUNE_METHODS = ("magnitude", "magnitude-global", "l2-structured", "wanda", "sparsegpt")
PRUNE_PATTERNS = ("unstructured", "2:4", "4:8")
QUANT_METHODS = ("rtn", "gptq", "fp16", "bf16")
QUANT_BITS = (2, 3, 4, 5, 6, 8)
GRANULARITIES = ("per-channel", "per-tensor", "group")
ZERO_POINTS = ("int", "float")
RANGE_METHODS = ("minmax", "clip-search", "percentile", "entropy")
# Number formats: "int" is the integer grid (bits, group size, symmetric apply); the others fix their
# own element bits and blocks (memopt_core.primitives.formats).
QUANT_FORMATS = ("int", "nf4", "fp8-e4m3", "fp8-e5m2", "mxfp4", "nvfp4", "q2_k", "q3_k", "q4_k", "q6_k")
FORMAT_BITS = {"nf4": 4, "fp8-e4m3": 8, "fp8-e5m2": 8, "mxfp4": 4, "nvfp4": 4, "q2_k": 2, "q3_k": 3, "q4_k": 4,
               "q6_k": 6}
FORMAT_BLOCKS = {"nf4": 64, "mxfp4": 32, "nvfp4": 16, "q2_k": 256, "q3_k": 256, "q4_k": 256, "q6_k": 256}
ROTATIONS = ("none", "hadamard")
STORAGES = ("packed", "fake")
BUNDLED_TEXTS = ("wikipedia", "news")
MAX_PRUNE_RATIO = 0.95
