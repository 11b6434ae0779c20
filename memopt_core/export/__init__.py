"""Ship what was explored: write a compressed model in a format a serving engine loads, and prove
each file by loading it back with that format's own reader.

- ``formats``: the types of each format and the memopt setting each one means;
- ``layer_plan``: what every layer becomes in a format (codes copied, widened or re-quantized);
- ``gguf_blocks`` / ``gguf`` / ``gguf_tokenizer``: llama.cpp's GGUF (Q8_0, Q5_x, Q4_x, F16 ...);
- ``compressed_tensors``: vLLM's ``pack-quantized`` safetensors folder;
- ``onnx``: ``torch.onnx`` export plus ONNX Runtime's int8 and 4-bit (MatMulNBits) quantizers;
- ``verify``: the round trips; ``service``: one export end to end (CLI and dashboard).
"""
