"""Which serving engine runs which memopt setting, through which format (the Deploy page's table).

Each cell says what the setting becomes and whether the weights stay exactly the ones memopt
evaluated; the rules are the ones ``layer_plan`` applies, stated for people.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Engine:
    name: str
    format: str
    note: str


ENGINES = (
    Engine("llama.cpp / Ollama / LM Studio", "gguf", "one .gguf file: weights, llama metadata and tokenizer"),
    Engine("vLLM / SGLang", "compressed-tensors", "safetensors folder with a pack-quantized quantization_config"),
    Engine("ONNX Runtime", "onnx", "model.onnx + weights, run on CPU (mobile, edge and cloud builds too)"),
    Engine("transformers", "compressed-tensors", "loads the compressed-tensors folder, and GGUF (de-quantized to floats)"),
)

SETTINGS = ("W8 g32 sym", "W4 g32 sym", "W4 g32 asym float-min", "W4/W8 per-channel, g64, g128 sym",
            "W4 asym integer zero", "W3 / W2", "W5", "W6", "pruned (zeros) or 2:4", "fp16 / bf16")

# engine format -> setting -> what it becomes ("exact": memopt's weights bit for bit)
_CELLS = {
    "gguf": ("Q8_0, exact", "Q4_0, exact", "Q4_1, exact (the Q4_1 grid)",
             "Q4_0 / Q8_0, exact when groups are multiples of 32 (scales repeated per block; the shorter "
             "last group of g128 on 576-wide rows too)", "Q4_1, minimum -zero*scale rounded to fp16",
             "Q4_0 / Q4_1 holding the codes: exact, 4.5 / 5.0 bpw", "Q5_0 / Q5_1, exact",
             "Q8_0 holding the codes: exact, 8.5 bpw", "zeros stored in the blocks (no sparse kernels)", "F16 / BF16, exact"),
    "compressed-tensors": ("W8A16 g32, exact", "W4A16 g32, exact", "re-quantized with an integer zero point",
                           "W4A16 / W8A16, exact (groups must divide the rows)", "W4A16-asym, exact",
                           "held in int4 slots: exact", "held in int8 slots: exact", "held in int8 slots: exact",
                           "zeros stored dense (the bitmask format is gone upstream)", "not a quantized format"),
    "onnx": ("int8-codes (memopt's codes in MatMulNBits), exact; or ORT int8", "int4-codes, exact; or ORT int4",
             "float graph, or ORT int4 (re-quantized): MatMulNBits has no float minimum",
             "int4-codes / int8-codes, exact (blocks of a power of two >= 16 inside each group, scales repeated)",
             "int4-codes / int8-codes with integer zero points, exact",
             "int4-codes holding the codes: exact (3-bit groups a multiple of 16)", "int8-codes holding the codes: exact",
             "int8-codes holding the codes: exact", "zeros stored dense (codes of 0)", "float graph"),
}


def support_table() -> list[dict[str, str]]:
    """One row per engine: ``engine``, ``format`` and one column per setting of :data:`SETTINGS`."""
    rows = []
    for engine in ENGINES:
        cells = _CELLS[engine.format]
        if engine.name == "transformers":
            cells = tuple(f"{c} (compressed-tensors); GGUF de-quantized to floats" for c in cells)
        rows.append({"engine": engine.name, "format": engine.format, **dict(zip(SETTINGS, cells))})
    return rows
