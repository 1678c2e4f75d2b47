"""`optiinfra plan capacity`: will a model fit some GPUs under vLLM, and how much KV cache will it get?

The serving model's memory plan (optiinfra_assets.serving.memory_plan, calibrated to real vLLM startup
logs) for a catalog model or any Hugging Face config.json, on N GPUs of a kind (tensor parallel over all of
them). ``--json`` prints exactly ``{"fits", "weights_gib_per_gpu", "kv_cache_tokens", "num_gpu_blocks",
"max_concurrency", "reason"}``; max_concurrency is vLLM's "maximum concurrency for max_model_len tokens per
request". A config that does not fit is an answer (``fits: false``, exit 0); a question vLLM would refuse
outright (unknown GPU or model, TP not dividing the heads, FP8 on a GPU without it, a negative number) is an
error on stderr naming the flag, exit 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from optiinfra_assets.catalog import MODELS, ModelSpec, gpu, model, vllm_default_limits
from optiinfra_assets.commands import positive_int
from optiinfra_assets.config import Settings
from optiinfra_assets.hf_config import load_hf_config
from optiinfra_assets.models import EngineConfig, KvCacheDtype, Quantization
from optiinfra_assets.serving import DEFAULT_RELEASE, ConfigError, config_problems, memory_plan, vllm_release

# The spellings vLLM's own flags accept, mapped to the engine's values.
DTYPES = {"bfloat16": Quantization.BF16, "bf16": Quantization.BF16, "float16": Quantization.FP16}
DTYPES |= {"fp16": Quantization.FP16, "half": Quantization.FP16}
QUANTIZATIONS = {q.value: q for q in Quantization} | {
    "awq": Quantization.INT4_AWQ,
    "gptq": Quantization.INT4_GPTQ,
}
KV_DTYPES = {k.value: k for k in KvCacheDtype} | {"fp8_e4m3": KvCacheDtype.FP8}
# The flag each engine field comes from, to name it in errors.
FLAGS = {
    "tensor_parallel_size": "--gpus",
    "pipeline_parallel_size": "--gpus",
    "quantization": "--quantization",
    "kv_cache_dtype": "--kv-cache-dtype",
    "gpu_memory_utilization": "--gpu-memory-utilization",
    "max_num_seqs": "--max-num-seqs",
    "max_num_batched_tokens": "--max-num-batched-tokens",
    "max_model_len": "--max-model-len",
}
RESULT_KEYS = (
    "fits",
    "weights_gib_per_gpu",
    "kv_cache_tokens",
    "num_gpu_blocks",
    "max_concurrency",
    "reason",
)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def add_parser(subparsers: Any) -> None:
    plan = subparsers.add_parser("plan", help="plan a deployment before running it")
    actions = plan.add_subparsers(dest="plan_action", required=True)
    capacity = actions.add_parser(
        "capacity", help="whether a model fits N GPUs under vLLM, with its KV-cache tokens and concurrency"
    )
    capacity.add_argument("--model", required=True, help="a catalog model name, or the path of a config.json")
    capacity.add_argument("--gpu", required=True, help='GPU kind, e.g. "H100", "A100-80GB", "L4", "RTX 4090"')
    capacity.add_argument("--gpus", type=positive_int, default=1, help="GPUs, tensor parallel (default 1)")
    capacity.add_argument("--gpu-memory-gib", type=_positive_float, help="override the GPU's reported memory")
    capacity.add_argument(
        "--gpu-memory-utilization", type=_fraction, default=0.9, help="vLLM's (default 0.9)"
    )
    capacity.add_argument(
        "--max-model-len", type=positive_int, help="default: the model's max_position_embeddings, as vLLM"
    )
    capacity.add_argument("--max-num-seqs", type=positive_int, help="default: vLLM's for the GPU")
    capacity.add_argument("--max-num-batched-tokens", type=positive_int, help="default: vLLM's for the GPU")
    capacity.add_argument("--dtype", choices=["auto", *DTYPES], default="auto")
    capacity.add_argument("--quantization", choices=list(QUANTIZATIONS), help="default: the checkpoint's")
    capacity.add_argument("--kv-cache-dtype", choices=list(KV_DTYPES), default="auto")
    capacity.add_argument(
        "--vllm-version", default=DEFAULT_RELEASE.version, help="the release whose memory profile applies"
    )
    capacity.add_argument("--json", action="store_true", help="print the result as one JSON object")
    capacity.set_defaults(func=cmd_plan_capacity)


def resolve_model(name_or_path: str) -> ModelSpec:
    """A catalog model, or a config.json (or the folder holding one)."""
    if name_or_path in MODELS:
        return model(name_or_path)
    path = Path(name_or_path)
    if path.exists() or name_or_path.endswith(".json"):
        return load_hf_config(path)
    raise ConfigError(
        "--model", name_or_path, f"neither a catalog model ({', '.join(MODELS)}) nor a config.json path"
    )


def _weights_format(spec: ModelSpec, args: argparse.Namespace, has_bf16: bool) -> tuple[Quantization, str]:
    """The engine's quantization and the flag it came from: --quantization, the checkpoint's, --dtype."""
    if args.quantization is not None:
        return QUANTIZATIONS[args.quantization], "--quantization"
    if spec.quantization is not None:
        return spec.quantization, "--model"
    if args.dtype != "auto":
        return DTYPES[args.dtype], "--dtype"
    # vLLM's "auto": the checkpoint's 16-bit dtype, fp16 where the GPU has no bf16
    auto = Quantization.FP16 if spec.torch_dtype == "float16" or not has_bf16 else Quantization.BF16
    return auto, "--dtype"


def plan_capacity(args: argparse.Namespace) -> dict[str, Any]:
    """The answer as printed with --json; ConfigError names the flag of a question vLLM would refuse."""
    spec = resolve_model(args.model)
    try:
        kind = gpu(args.gpu)
    except KeyError as exc:
        raise ConfigError("--gpu", args.gpu, exc.args[0]) from None
    try:
        release = vllm_release(args.vllm_version)
    except ValueError as exc:
        raise ConfigError("--vllm-version", args.vllm_version, str(exc)) from None
    quantization, quantization_flag = _weights_format(spec, args, "bf16" in kind.features)
    default_seqs, default_tokens = vllm_default_limits(kind)
    settings = {
        "tensor_parallel_size": args.gpus,
        "quantization": quantization,
        "kv_cache_dtype": KV_DTYPES[args.kv_cache_dtype],
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "max_num_seqs": args.max_num_seqs or default_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens or default_tokens,
        "max_model_len": args.max_model_len or spec.max_position_embeddings or 8192,
    }
    try:
        engine = EngineConfig.model_validate(settings)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0])
        raise ConfigError(FLAGS.get(field, field), settings.get(field), error["msg"]) from None
    problems = config_problems(spec, kind, None, engine)
    if problems:
        problem = problems[0]
        field = problem.field.removeprefix("engine.")
        flag = quantization_flag if field == "quantization" else FLAGS.get(field, problem.field)
        raise ConfigError(flag, problem.value, problem.reason)
    plan = memory_plan(spec, kind, engine, gpu_memory_gib=args.gpu_memory_gib, release=release)
    return {
        "fits": plan.fits,
        "weights_gib_per_gpu": round(plan.weights_gib, 2),
        "kv_cache_tokens": plan.kv_cache_tokens,
        "num_gpu_blocks": plan.num_gpu_blocks,
        "max_concurrency": round(plan.max_concurrency, 2),
        "reason": plan.reason,
    }


def cmd_plan_capacity(args: argparse.Namespace, settings: Settings) -> int:
    result = plan_capacity(args)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"fits: {'yes' if result['fits'] else 'no'}")
    print(f"weights per GPU: {result['weights_gib_per_gpu']:.2f} GiB")
    print(f"KV cache: {result['kv_cache_tokens']:,} tokens in {result['num_gpu_blocks']:,} blocks")
    print(f"max concurrency at max_model_len: {result['max_concurrency']:.2f}x")
    print(result["reason"])
    return 0
