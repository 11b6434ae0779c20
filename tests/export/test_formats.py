"""Each format type means one memopt setting; typed flags that say otherwise are refused in one line."""
import pytest

from memopt_core.config import QuantConfig
from memopt_core.errors import ConfigError
from memopt_core.export.formats import format_type, setting_for_type


@pytest.mark.parametrize("type_name, label", [
    ("Q8_0", "W8A16 g32 sym"), ("Q4_0", "W4A16 g32 sym"), ("Q5_0", "W5A16 g32 sym"),
    ("Q4_1", "W4A16 g32 asym-fmin"), ("Q5_1", "W5A16 g32 asym-fmin"), ("F16", "fp16"), ("BF16", "bf16"),
])
def test_gguf_types_alone_set_their_setting(type_name, label):
    assert setting_for_type(format_type("gguf", type_name), None, {}).label == label


def test_f32_means_no_quantization_and_types_keep_the_quantizer_and_range():
    assert setting_for_type(format_type("gguf", "F32"), QuantConfig(bits=8), {}) is None
    given = QuantConfig(bits=4, method="gptq", range_method="clip-search")
    assert setting_for_type(format_type("gguf", "q4_1"), given, {}).label == "GPTQ W4A16 g32 asym-fmin clip"


def test_compressed_tensors_group_comes_from_the_flag():
    assert setting_for_type(format_type("compressed-tensors", "W4A16"), None, {"group_size": 64}).label == "W4A16 g64 sym"
    assert setting_for_type(format_type("compressed-tensors", "W8A16-asym"), None, {}).label == "W8A16 per-channel asym"


def test_onnx_types_keep_the_flags_setting():
    given = QuantConfig(bits=3)
    assert setting_for_type(format_type("onnx", "int4"), given, {"bits": 3}) is given


@pytest.mark.parametrize("fmt, type_name, flags, fragment", [
    ("gguf", "Q4_1", {"bits": 8}, "--bits 8 contradicts it"),
    ("gguf", "Q4_0", {"zero_point": "float"}, "--zero-point float contradicts it"),
    ("gguf", "Q8_0", {"per_tensor": True}, "--per-tensor True contradicts it"),
    ("gguf", "F16", {"bits": "bf16"}, "--type F16 means fp16; --bits bf16"),
    ("compressed-tensors", "W4A16", {"asymmetric": True}, "--asymmetric True contradicts it"),
])
def test_contradictions_are_one_line(fmt, type_name, flags, fragment):
    with pytest.raises(ConfigError) as error:
        setting_for_type(format_type(fmt, type_name), None, flags)
    assert fragment in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("fmt, type_name, fragment", [
    ("gguf", "Q6_K", "k-quant"), ("gguf", "W4A16", "choose 'Q8_0'"), ("onnx", "int3", "choose 'fp32', 'int8', 'int4', 'int4-codes' or 'int8-codes'"),
    ("safetensors", "Q4_0", "export format 'safetensors' is not supported"),
])
def test_unknown_types_name_the_choices(fmt, type_name, fragment):
    with pytest.raises(ConfigError, match=fragment):
        format_type(fmt, type_name)
