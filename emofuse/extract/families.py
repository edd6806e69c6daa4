"""Which encoder families emofuse runs, told apart by a checkpoint's ``config.json`` alone."""

from __future__ import annotations

from typing import Any

from ..errors import EmofuseError

#: Audio families: model_type → (family name, one example checkpoint id, exact batching).
AUDIO_FAMILIES: dict[str, tuple[str, str, bool]] = {
    "wav2vec2": ("wav2vec2", "facebook/wav2vec2-base", True),
    "hubert": ("HuBERT", "facebook/hubert-base-ls960", True),
    "wavlm": ("WavLM", "microsoft/wavlm-base-plus", True),
    "data2vec-audio": ("data2vec-audio", "facebook/data2vec-audio-base", True),
    "whisper": ("Whisper encoder", "openai/whisper-base", True),
}
#: Text families: name → example checkpoint id.
TEXT_FAMILIES = {"bidirectional encoders like BERT, RoBERTa, MiniLM": "bert-base-uncased",
                 "decoder-only causal LMs like GPT-2, Llama, Qwen2": "Qwen/Qwen2.5-0.5B"}


def _mappings() -> tuple[Any, Any, set[str]]:
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_CTC_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
                                                        MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES)
    speech = set(MODEL_FOR_CTC_MAPPING_NAMES) | set(MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES) | set(AUDIO_FAMILIES)
    return MODEL_FOR_MASKED_LM_MAPPING_NAMES, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, speech


def supported_audio() -> str:
    return ", ".join(f"{name} (e.g. {ex})" for name, ex, _ in AUDIO_FAMILIES.values())


def supported_text() -> str:
    return ", ".join(f"{name} (e.g. {ex})" for name, ex in TEXT_FAMILIES.items())


def audio_family(model_type: str, spec: str) -> str:
    """The audio family of a checkpoint's ``model_type``, or one sentence refusing it."""
    if model_type in AUDIO_FAMILIES:
        return model_type
    masked, causal, speech = _mappings()
    if model_type in masked or (model_type in causal and model_type not in speech):
        raise EmofuseError(f"--audio-model {spec!r} is a {model_type} text model; --audio-model expects a speech "
                           f"encoder, one of: {supported_audio()}; give text models as --text-model")
    raise EmofuseError(f"audio model {spec!r} has architecture {model_type!r}, which emofuse does not support; "
                       f"supported audio families: {supported_audio()}")


def text_family(model_type: str, spec: str, encoder_decoder: bool = False) -> str:
    """``"encoder"`` (bidirectional, e.g. BERT) or ``"causal"`` (decoder-only LM), or one
    sentence refusing the checkpoint."""
    masked, causal, speech = _mappings()
    if model_type in speech:
        raise EmofuseError(f"--text-model {spec!r} is a {model_type} speech model; --text-model expects a text "
                           f"encoder, one of: {supported_text()}; give speech models as --audio-model")
    if encoder_decoder:
        raise EmofuseError(f"text model {spec!r} is a {model_type} encoder-decoder model, which emofuse does not "
                           f"support; supported text families: {supported_text()}")
    if model_type in masked:
        return "encoder"
    if model_type in causal:
        return "causal"
    raise EmofuseError(f"text model {spec!r} has architecture {model_type!r}, which emofuse does not support; "
                       f"supported text families: {supported_text()}")
