"""Sidebar widgets shared by the Compress, Trade-offs and Sensitivity pages: which model, where, and how it is
evaluated. Widgets keep their values across page switches (``persist_state="session"``) and share
keys between pages, so a model picked on one page is the model of the other."""
from __future__ import annotations

import streamlit as st

from memopt_core.config import DTYPES, EvalConfig, ModelSpec
from memopt_core.errors import MemoptError
from memopt_core.loading.bundled import bundled_models
from memopt_core.loading.devices import available_devices
from ui.errors import user_errors
from ui.uploads import MAX_TEXT_BYTES, save_text_upload
from ui.vocabulary import KEEP

OTHER = "other"
TEXTS = {"wikipedia": "Wikipedia lead paragraphs (bundled)", "news": "News articles (bundled)",
         "upload": "My own .txt file"}
MAX_TOKENS = (128, 256, 512, 1024, 2048, 4096, 8192, 16384)
SEQ_LENS = (32, 64, 128, 256, 512, 1024, 2048)
# The validated upload outlives its widget (which forgets files on a page switch).
UPLOAD_PATH, UPLOAD_NAME, UPLOAD_ID = "eval.upload_path", "eval.upload_name", "eval.upload_id"


def _bundled() -> dict[str, dict]:
    return {m["key"]: m for m in bundled_models()}


def model_label(key: str) -> str:
    """Selectbox text: name, kind, size and, for random ones, 'random weights'."""
    if key == OTHER:
        return "Other: a Hugging Face id or a local folder"
    info = _bundled()[key]
    random = " · random weights" if info["is_random"] else ""
    return f"{info['name']} · {info['kind']} · {info['params'] / 1e6:.1f}M params{random}"


def bundled_kind(spec: ModelSpec | None) -> str | None:
    """The model kind of a bundled spec, known without loading; None for other models."""
    if spec is None or spec.origin != "bundled":
        return None
    return _bundled()[spec.source]["kind"]


def model_spec(where=st.sidebar) -> ModelSpec | None:
    """Model, device and dtype widgets -> a ModelSpec (None, with a hint, until one is given).

    Raises ConfigError for an id that cannot be a Hugging Face id."""
    options = [*_bundled(), OTHER]
    choice = where.selectbox("Model", options, format_func=model_label, key="model.choice", persist_state=KEEP,
                             help="Bundled models work offline. The tiny ones have random weights: "
                                  "instant demos of the mechanics, not of quality.")
    source = choice
    if choice == OTHER:
        source = where.text_input("Hugging Face id or local folder", key="model.custom", persist_state=KEEP,
                                  placeholder="HuggingFaceTB/SmolLM2-360M or /path/to/model").strip()
        if not source:
            where.info("Type a model id or folder, or pick a bundled model.")
            return None
    device = where.selectbox("Device", available_devices(), key="model.device", persist_state=KEEP,
                             help="Only devices present on this machine are listed.")
    dtype = where.selectbox("Load weights in", DTYPES, key="model.dtype", persist_state=KEEP,
                            help="The original's precision. float32 is the reference; 16-bit halves it.")
    return ModelSpec(source=source, device=device, dtype=dtype)


def model_and_evaluation() -> tuple[ModelSpec | None, EvalConfig | None]:
    """The sidebar's model and evaluation settings; a bad model id shows as a one-line error (None)."""
    spec = None
    with user_errors("model"):
        spec = model_spec()
    return spec, eval_config(bundled_kind(spec))


def _uploaded_text(where) -> str | None:
    """Path of the uploaded evaluation text (validated), kept across reruns and page switches."""
    upload = where.file_uploader(f"UTF-8 text file, at most {MAX_TEXT_BYTES // 1_000_000} MB", type=["txt"],
                                 key="eval.upload")
    if upload is not None and upload.file_id != st.session_state.get(UPLOAD_ID):
        st.session_state.pop(UPLOAD_PATH, None)  # a new file replaces the old one, valid or not
        st.session_state[UPLOAD_ID], st.session_state[UPLOAD_NAME] = upload.file_id, upload.name
        with user_errors(where=where):
            st.session_state[UPLOAD_PATH] = save_text_upload(upload.name, upload.getvalue())
    path = st.session_state.get(UPLOAD_PATH)
    if path is None:
        if upload is None:
            where.info("Upload a text file to evaluate on it.")
        return None
    if upload is None:
        where.caption(f"Using {st.session_state.get(UPLOAD_NAME)!r}, uploaded earlier.")
    return path


def eval_config(kind: str | None, where=st.sidebar) -> EvalConfig | None:
    """Evaluation text and budget widgets -> an EvalConfig (None while an upload is missing or bad)."""
    where.subheader("Evaluation")
    if kind is not None and kind != "causal-lm":
        where.caption("Encoders are scored on 200 labelled movie-review sentences: cosine similarity to the "
                      "original's embeddings and the accuracy of a logistic head. The text settings below "
                      "apply to causal LMs.")
    text = where.radio("Text", list(TEXTS), format_func=TEXTS.get, key="eval.text", persist_state=KEEP)
    if text == "upload":
        text = _uploaded_text(where)
        if text is None:
            return None
    max_tokens = where.select_slider("Max tokens", MAX_TOKENS, value=4096, key="eval.max_tokens",
                                     persist_state=KEEP, help="Tokens of the text scored; more is steadier "
                                                              "and slower.")
    seq_len = where.select_slider("Sequence length (window)", SEQ_LENS, value=512, key="eval.seq_len",
                                  persist_state=KEEP, help="Perplexity uses non-overlapping windows of this "
                                                           "length; the remainder is dropped.")
    gen_tokens = where.slider("Generated tokens", 0, 64, 24, key="eval.gen_tokens", persist_state=KEEP,
                              help="Greedy continuation of a prompt, original and compressed side by side.")
    zero_shot = where.checkbox("Zero-shot sentiment accuracy (200 sentences; slower)", value=False,
                               key="eval.zero_shot", persist_state=KEEP)
    try:
        return EvalConfig(text=text, seq_len=seq_len, max_tokens=max_tokens, gen_tokens=gen_tokens,
                          zero_shot=zero_shot)
    except MemoptError as error:
        where.error(str(error))
        return None
