"""Exports of the bundled SmolLM2, each read back by its format's own loader, printed in one run.

    python bench/bench_export.py [--max-tokens 4096]

Targets (issue 10): for GGUF Q8_0, Q4_1 g32, Q4_0 g32, compressed-tensors W4 g64 and W8 per-channel,
ONNX Runtime int8 and int4, and memopt's own codes in ONNX Runtime's MatMulNBits (int4-codes W4 g32,
int8-codes W8 per-channel; rows 8-9): weight bytes in the file vs memopt's stored bytes (within 2%, the
file's metadata and tokenizer apart; for ONNX the graph protobuf is the metadata, printed on its own);
perplexity from the format's loader vs memopt's on the same windows (within 0.5%; the ORT rows are
ORT's own re-quantization, so they are rows of their own); ONNX Runtime's tokens per second vs
PyTorch dense fp32 on the same windows. Also: re-exporting at Q4_1 the model that ships as a Q4_1 GGUF should give back (nearly) the same blocks. The MiniLM
encoder goes to ONNX Runtime too (fp32, int8, int4): mean cosine of its sentence embeddings to the
original's on the 200 labelled sentences (``--part minilm`` runs that part alone).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gguf  # noqa: E402
import numpy as np  # noqa: E402

from memopt_core.config import EvalConfig, ModelSpec, QuantConfig, RunConfig  # noqa: E402
from memopt_core.export.formats import GGUF_TYPES  # noqa: E402
from memopt_core.export.service import ExportRequest, export  # noqa: E402
from memopt_core.export.sources import source_from_run  # noqa: E402
from memopt_core.loading.bundled import smollm2_gguf_path  # noqa: E402
from memopt_core.runs.workbench import Workbench  # noqa: E402

MIB = 2**20
ROWS = (  # label, format, type, group size, memopt setting (None: the dense model)
    ("GGUF Q8_0", "gguf", "Q8_0", None, GGUF_TYPES["Q8_0"].quant_config()),
    ("GGUF Q4_1 g32", "gguf", "Q4_1", None, GGUF_TYPES["Q4_1"].quant_config()),
    ("GGUF Q4_0 g32", "gguf", "Q4_0", None, GGUF_TYPES["Q4_0"].quant_config()),
    ("compressed-tensors W4 g64", "compressed-tensors", "W4A16", 64, QuantConfig(bits=4, granularity="group", group_size=64)),
    ("compressed-tensors W8 per-channel", "compressed-tensors", "W8A16", None, QuantConfig(bits=8)),
    ("ONNX Runtime int8", "onnx", "int8", None, None),
    ("ONNX Runtime int4", "onnx", "int4", None, None),
    ("ONNX Runtime int4-codes (memopt's W4 g32 sym codes in MatMulNBits)", "onnx", "int4-codes", None,
     QuantConfig(bits=4, granularity="group", group_size=32)),
    ("ONNX Runtime int8-codes (memopt's W8 per-channel codes in MatMulNBits)", "onnx", "int8-codes", None,
     QuantConfig(bits=8)),
)


def same_blocks(exported: Path) -> float:
    """Fraction of Q4_1 tensor bytes equal to the bundled file's (same tensor names)."""
    theirs = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(str(smollm2_gguf_path())).tensors
              if t.tensor_type.name == "Q4_1"}
    equal = total = 0
    for tensor in gguf.GGUFReader(str(exported)).tensors:
        if tensor.name in theirs:
            ours = np.asarray(tensor.data)
            equal += int((ours == theirs[tensor.name]).sum())
            total += ours.size
    return equal / total


def report_row(label: str, report, seconds: float) -> None:
    memopt, trip = report.memopt, report.roundtrip
    stored = memopt["stored_bytes"]
    print(f"\n{label}: exported + verified in {seconds:.0f}s; layers exact {report.to_dict()['layers_exact']}")
    print(f"  files {report.file_bytes / MIB:.2f} MiB, weights {report.tensor_bytes / MIB:.2f} MiB vs memopt stored "
          f"{stored / MIB:.2f} MiB: {report.tensor_bytes / stored:.4f}x (target within 2%; metadata and tokenizer "
          f"{(report.file_bytes - report.tensor_bytes) / MIB:.2f} MiB apart)")
    model_files = sum(p.stat().st_size for p in Path(report.folder).glob("model.onnx*"))
    if model_files:  # the ONNX graph protobuf (nodes, names, shapes) is the metadata of these rows
        print(f"  model.onnx + its data {model_files / MIB:.2f} MiB ({model_files / stored:.4f}x memopt's stored "
              f"bytes): tensors + {(model_files - report.tensor_bytes) / 1024:.0f} KiB of graph protobuf")
    change = (trip.perplexity - memopt["perplexity"]) / memopt["perplexity"]
    print(f"  perplexity: memopt {memopt['perplexity']:.4f} ({memopt['setting']}), {trip.loader.split(';')[-1].strip()} "
          f"{trip.perplexity:.4f}: {change:+.3%} (target within 0.5%); max |weight - memopt's| "
          f"{'-' if trip.max_abs_weight_error is None else f'{trip.max_abs_weight_error:.3g}'}")
    dense = memopt.get("pytorch_dense_fp32_tokens_per_second")
    if dense:
        print(f"  tokens/s: ONNX Runtime {trip.tokens_per_second:,.0f} vs PyTorch dense fp32 {dense:,.0f}: "
              f"{trip.tokens_per_second / dense:.2f}x")


def minilm() -> None:
    """MiniLM-L6 through ONNX Runtime: cosine to the original's embeddings, and bytes."""
    spec = ModelSpec("minilm-l6")
    bench = Workbench.load(spec)
    source = source_from_run(bench, RunConfig(spec, eval=EvalConfig(gen_tokens=0, zero_shot=False)))
    print(f"\nall-MiniLM-L6-v2 fp32 ({source.memopt['stored_bytes'] / MIB:.1f} MiB); mean cosine to the original's "
          f"embeddings on {len(source.sentences)} sentences")
    with tempfile.TemporaryDirectory() as scratch:
        for type_name in ("fp32", "int8", "int4"):
            start = time.perf_counter()
            report = export(source, ExportRequest("onnx", type_name, verify=True), Path(scratch) / type_name)
            print(f"  ONNX Runtime {type_name}: cosine {report.roundtrip.cosine_to_original:.4f}, weights "
                  f"{report.tensor_bytes / MIB:.1f} MiB ({report.tensor_bytes / source.memopt['stored_bytes']:.3f}x "
                  f"memopt's fp32), {time.perf_counter() - start:.0f}s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--part", choices=("all", "smollm2", "minilm"), default="all")
    parser.add_argument("--rows", default=None, help=f"comma-separated row numbers (1-{len(ROWS)}) of the SmolLM2 table")
    args = parser.parse_args()
    if args.part != "smollm2":
        minilm()
    if args.part == "minilm":
        return
    evaluation = EvalConfig(max_tokens=args.max_tokens, gen_tokens=0, zero_shot=False)
    spec = ModelSpec("smollm2-135m")
    bench = Workbench.load(spec)
    print(f"SmolLM2-135M fp32; perplexity on {args.max_tokens} Wikipedia tokens in windows of {evaluation.seq_len}")
    sources = {}
    with tempfile.TemporaryDirectory() as scratch:
        wanted = None if args.rows is None else {int(n) for n in args.rows.split(",")}
        for index, (label, fmt, type_name, group, quant) in enumerate(ROWS):
            if wanted is not None and index + 1 not in wanted:
                continue
            start = time.perf_counter()
            if quant not in sources:
                sources[quant] = source_from_run(bench, RunConfig(spec, quant=quant, eval=evaluation))
            source = sources[quant]
            source.memopt.pop("pytorch_dense_fp32_tokens_per_second", None)
            report = export(source, ExportRequest(fmt, type_name, group, verify=True), Path(scratch) / f"row{index}")
            report_row(label, report, time.perf_counter() - start)
            if type_name == "Q4_1":
                print(f"  re-export of the bundled Q4_1 file: {same_blocks(Path(report.folder) / 'model.gguf'):.4%} "
                      "of its Q4_1 tensor bytes identical")


if __name__ == "__main__":
    main()
