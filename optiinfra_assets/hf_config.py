"""A model's shape from its Hugging Face config.json, for models that are not in the catalog.

Reads the keys the common decoder families spell differently (Llama/Mistral/Qwen2/Qwen3/Gemma/Phi,
GPT-2/Falcon style, Mixtral/Qwen-MoE experts) and a pre-quantized checkpoint's quantization_config. A key
the serving model needs and the file lacks is an error naming the key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from optiinfra_assets.catalog import ModelSpec
from optiinfra_assets.models import Quantization
from optiinfra_assets.serving import ConfigError

# Each field the serving model needs, and the keys families use for it, first match wins.
_KEYS: dict[str, tuple[str, ...]] = {
    "num_layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "hidden_size": ("hidden_size", "n_embd", "d_model"),
    "num_attention_heads": ("num_attention_heads", "n_head", "num_heads"),
    "intermediate_size": ("intermediate_size", "ffn_hidden_size", "n_inner", "ffn_dim"),
    "vocab_size": ("vocab_size", "padded_vocab_size"),
}
_KV_HEAD_KEYS = ("num_key_value_heads", "num_kv_heads", "n_head_kv", "multi_query_group_num")
_EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
_EXPERTS_PER_TOKEN_KEYS = ("num_experts_per_tok", "num_experts_per_token", "moe_topk", "top_k")
_MAX_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
# Families whose MLP is two matrices with a GELU (no gate), and whose LM head is tied to the embedding when
# config.json does not say (transformers' per-family defaults).
_UNGATED = {"phi", "gpt2", "gpt_neox", "gpt_bigcode", "falcon", "starcoder2", "opt", "bloom", "gptj"}
_TIED_BY_DEFAULT = {
    "gemma",
    "gemma2",
    "gemma3_text",
    "gemma3",
    "falcon",
    "gpt2",
    "gpt_bigcode",
    "opt",
    "bloom",
}
_DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "half": "float16", "float32": "float32"}


def _first(config: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    return next((config[k] for k in keys if config.get(k) is not None), None)


def _required(config: Mapping[str, Any], field: str) -> int:
    keys = _KEYS[field]
    value = _first(config, keys)
    if value is None:
        raise ConfigError(
            f"config.json.{keys[0]}", None, f"config.json has no {' / '.join(keys)}: the model's {field}"
        )
    return int(value)


def checkpoint_quantization(config: Mapping[str, Any]) -> Quantization | None:
    """The weight format of a pre-quantized checkpoint (quantization_config), None when unquantized."""
    quant = config.get("quantization_config")
    if not quant:
        return None
    method = str(quant.get("quant_method", "")).lower()
    bits = quant.get("bits") or quant.get("w_bit")
    if method == "fp8":
        return Quantization.FP8
    if method == "awq":
        return Quantization.INT4_AWQ
    if method == "gptq" and bits in (4, None):
        return Quantization.INT4_GPTQ
    if method == "gptq" and bits == 8:
        return Quantization.INT8
    if method == "compressed-tensors":
        groups = quant.get("config_groups") or {}
        weights = next((g.get("weights") or {} for g in groups.values()), {})
        num_bits, kind = weights.get("num_bits"), weights.get("type", "int")
        if num_bits == 8:
            return Quantization.FP8 if kind == "float" else Quantization.INT8
        if num_bits == 4 and kind == "int":
            return Quantization.INT4_GPTQ
    raise ConfigError(
        "config.json.quantization_config.quant_method",
        method or None,
        f"quantization {method!r} (bits {bits}) is not one the serving model knows "
        "(fp8, awq, gptq, compressed-tensors int8/fp8/int4)",
    )


def parse_hf_config(config: Mapping[str, Any], name: str) -> ModelSpec:
    """A ModelSpec from a config.json's content (a multimodal config's text_config is what is served)."""
    text = config.get("text_config")
    merged: dict[str, Any] = {**config, **text} if isinstance(text, Mapping) else dict(config)
    if merged.get("kv_lora_rank"):
        raise ConfigError(
            "config.json.kv_lora_rank",
            merged["kv_lora_rank"],
            "multi-head latent attention (DeepSeek-style) caches a compressed KV the serving model does not model",
        )
    layers = _required(merged, "num_layers")
    hidden = _required(merged, "hidden_size")
    heads = _required(merged, "num_attention_heads")
    vocab = _required(merged, "vocab_size")
    model_type = str(merged.get("model_type", "")).lower()
    kv_heads = 1 if merged.get("multi_query") and not merged.get("new_decoder_architecture") else heads
    kv_heads = int(_first(merged, _KV_HEAD_KEYS) or kv_heads)
    head_dim = int(merged.get("head_dim") or hidden // heads)
    n_expert = _first(merged, _EXPERT_KEYS)
    per_token = _first(merged, _EXPERTS_PER_TOKEN_KEYS)
    moe_width = merged.get("moe_intermediate_size")
    if n_expert and not per_token:
        raise ConfigError(
            "config.json.num_experts_per_tok",
            None,
            f"config.json has {n_expert} experts but no num_experts_per_tok",
        )
    intermediate = int(_first(merged, _KEYS["intermediate_size"]) or moe_width or 0)
    if not intermediate:
        if model_type not in _UNGATED:
            _required(merged, "intermediate_size")  # raises, naming the key
        intermediate = 4 * hidden  # GPT-2-style configs leave the 4x MLP implicit
    shared = merged.get("shared_expert_intermediate_size") or (
        (merged.get("n_shared_experts") or 0) * (moe_width or 0)
    )
    tied = merged.get("tie_word_embeddings")
    dtype = str(merged.get("torch_dtype") or merged.get("dtype") or "bfloat16").replace("torch.", "")
    return ModelSpec(
        name=name,
        hf_repo=str(merged.get("_name_or_path") or name),
        num_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=intermediate,
        vocab_size=vocab,
        n_expert=int(n_expert) if n_expert else None,
        n_expert_per_token=int(per_token) if n_expert and per_token else None,
        tied_embeddings=bool(tied) if tied is not None else model_type in _TIED_BY_DEFAULT,
        gated_mlp=model_type not in _UNGATED,
        max_position_embeddings=_first(merged, _MAX_POSITION_KEYS),
        torch_dtype=_DTYPES.get(dtype, "bfloat16"),
        quantization=checkpoint_quantization(config),
        moe_intermediate_size=int(moe_width) if moe_width else None,
        shared_expert_intermediate_size=int(shared),
    )


def load_hf_config(path: str | Path) -> ModelSpec:
    """A ModelSpec from a config.json file, or a model folder holding one."""
    file = Path(path)
    if file.is_dir():
        file = file / "config.json"
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigError("--model", str(path), f"no config.json at {file}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError("--model", str(path), f"{file} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("--model", str(path), f"{file} does not hold a JSON object")
    return parse_hf_config(data, file.parent.name or file.stem)
