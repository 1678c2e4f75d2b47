"""Serving physics of a vLLM engine, in closed form and vectorizable with numpy.

Memory follows vLLM V1's profiler (vllm/v1/worker/gpu_worker.py determine_available_memory, and
vllm/utils memory_profiling): each GPU may use ``total * gpu_memory_utilization``, where total is what the
driver reports (79.19 GiB on an "80 GB" H100); the KV cache gets that less the weights, the torch peak of a
profiling run (a forward pass over max_num_batched_tokens tokens, then a dummy sampler over max_num_seqs
requests) and the non-torch memory the run added (NCCL, cuBLAS); the result is cut into 16-token blocks.
CUDA graphs are captured after the KV cache is sized and sit outside that budget (vLLM <= 0.19's default).
The release-dependent constants are fitted to real startup logs (bench/kv_capacity_cases.json; median error
and worst case in docs/benchmarks.md).

Time: decode is bound by memory bandwidth (the weights a step touches plus the batch's KV cache) unless the
batch makes it compute-bound, at the GEMM rate of the weight format; tensor parallelism adds all-reduces,
pipeline parallelism runs the stages one after another for a token while keeping them all busy. Prefill is
compute-bound, cut into chunks of max_num_batched_tokens, and skips the prompt tokens found in the prefix
cache. Queueing on top is M/M/1-like, clipped so that overload gives a large but finite queue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from optiinfra_assets.catalog import (
    KV_DTYPE_BYTES,
    QUANT_FORMATS,
    GpuSpec,
    InstanceType,
    ModelSpec,
    default_engine,
    instance_type,
    kv_dtype_problem,
    model,
    quantization_problem,
)
from optiinfra_assets.models import DeploymentConfig, EngineConfig, KvCacheDtype, Quantization

GIB = 1024**3
BLOCK_SIZE = 16  # vLLM's default KV block (page) size in tokens
ACTIVATION_BYTES = 2  # fp16/bf16 activations, also under weight-only and W8A8 quantization


class ConfigError(ValueError):
    """A deployment config the model, the GPU or the memory cannot serve; names the field and value."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field, self.value, self.reason = field, value, reason
        shown = "" if value is None else f"={value}"
        super().__init__(f"{field}{shown}: {reason}")


# ------------------------------------------------------------------------------------------ memory


@dataclass(frozen=True)
class VllmRelease:
    """What one vLLM release's profiling run allocates beside the weights (fitted to its startup logs)."""

    version: str
    # The dummy sampler run over max_num_seqs requests holds the logits and their fp32 working copies:
    # bytes per (request x vocabulary entry), plus a small fixed part.
    sampler_bytes_per_logit: float
    sampler_base_gib: float
    non_torch_gib: float  # TP=1, PP=1: what the forward pass adds outside torch (cuBLAS workspaces)
    non_torch_tp_gib: float  # TP>1: NCCL and custom all-reduce buffers
    non_torch_pp_gib: float  # PP>1, TP=1: point-to-point buffers are torch-allocated instead
    cuda_graphs_in_budget: bool  # VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS's default


# Each release's constants apply from its version until the next one's.
# v0.10-v0.16: Llama-3.1-8B 4.76, Qwen3 5.56-5.64, gpt-oss (201k vocabulary) 7.38 GiB of torch peak at
# max_num_seqs 1024: ~37.7 B per logit; 0.13 GiB non-torch at TP=1, 0.55 GiB at TP=2.
VLLM_0_10 = VllmRelease("0.10", 37.7, 0.149, 0.13, 0.55, 0.07, cuda_graphs_in_budget=False)
# v0.17: the sampler's profile shrank (Qwen3-14B 5.64 -> 2.23 GiB).
VLLM_0_17 = VllmRelease("0.17", 14.65, 0.064, 0.13, 2.1, 0.07, cuda_graphs_in_budget=False)
# v0.18-v0.19: Llama-3.1-8B and Qwen2.5-7B on H100 (llm-d-planner accuracy logs): torch peak 1.89 / 2.21
# GiB at max_num_seqs 1024, non-torch 0.25 GiB at TP=1, 2.07-2.17 GiB at TP 2-4, 0.07 GiB at PP>1.
VLLM_0_18 = replace(VLLM_0_17, version="0.18", non_torch_gib=0.25)
# v0.21+: CUDA graph memory is estimated before the KV cache is sized and taken from its budget (vLLM 0.19's
# startup log announces it; eugr/spark-vllm-docker#396 reports it as the default since v0.21). The other
# constants are assumed unchanged from v0.18: no log of this release is among the calibration cases.
VLLM_0_21 = replace(VLLM_0_18, version="0.21", cuda_graphs_in_budget=True)
VLLM_RELEASES: dict[str, VllmRelease] = {r.version: r for r in (VLLM_0_10, VLLM_0_17, VLLM_0_18, VLLM_0_21)}
DEFAULT_RELEASE = VLLM_0_18


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:2])


def vllm_release(version: str) -> VllmRelease:
    """The constants of the release ``version`` ("0.19.0") falls under."""
    key = _version_key(version)
    known = [r for r in VLLM_RELEASES.values() if _version_key(r.version) <= key]
    if not known:
        raise ValueError(f"vLLM {version} predates the releases modeled ({', '.join(VLLM_RELEASES)})")
    return max(known, key=lambda r: _version_key(r.version))


# The forward pass's per-token peak: the residual stream and attention tensors (~4.25 hidden widths) plus
# the MLP's gate/up output and activation (3 intermediate widths; 2 without a gate), in activation bytes.
# Fitted to CodeLlama-7b (0.77 GiB) and granite-3.1-8b (0.85 GiB) at 8192 tokens, whose small vocabularies
# leave the forward pass as the peak.
FORWARD_HIDDEN_WIDTHS = 4.25
# CUDA graphs vLLM captures after sizing the KV cache (v0.19 logs: 0.55-0.84 GiB for 32-layer 3-8B
# models, 1.82 GiB for Llama-70B at TP 2): a rough fit, +-0.3 GiB.
CUDA_GRAPH_BASE_GIB = 0.3
CUDA_GRAPH_GIB_PER_LAYER = 0.017


@dataclass(frozen=True)
class MemoryPlan:
    """One GPU's memory as vLLM sizes it (the pipeline stage that binds when PP > 1)."""

    total_gib: float  # driver-reported
    requested_gib: float  # total x gpu_memory_utilization
    weights_gib: float
    activation_gib: float  # torch peak increase of the profiling run
    non_torch_gib: float
    cuda_graph_gib: float  # captured after the KV cache is sized
    kv_gib: float  # what is left for the KV cache
    kv_bytes_per_token: int  # on this GPU: its layers, its share of the KV heads, the KV dtype
    num_gpu_blocks: int
    kv_cache_tokens: int  # tokens of the whole model the KV cache holds (what vLLM logs)
    max_model_len: int
    shortfall: str | None  # None, "weights", "max_model_len" or "cuda_graphs"
    reason: str

    @property
    def fits(self) -> bool:
        return self.shortfall is None

    @property
    def max_concurrency(self) -> float:
        """vLLM's "Maximum concurrency for max_model_len tokens per request"."""
        return self.kv_cache_tokens / self.max_model_len


def served_quantization(spec: ModelSpec, engine: EngineConfig) -> Quantization:
    """A pre-quantized checkpoint is served in its own format; otherwise the engine's dtype/quantization."""
    if spec.quantization is not None and engine.quantization in (Quantization.FP16, Quantization.BF16):
        return spec.quantization
    return engine.quantization


def _stage_layers(num_layers: int, pp: int) -> int:
    return math.ceil(num_layers / pp)


def _layer_weight_bytes(spec: ModelSpec, quantization: Quantization, tp: int) -> float:
    """One layer on one GPU: matmul weights in the served format, sharded; router and norms replicated."""
    linear = spec.layer_linear_params() * QUANT_FORMATS[quantization].weight_bytes / tp
    router = spec.hidden_size * (spec.n_expert or 0) * ACTIVATION_BYTES
    return linear + router + 2 * spec.hidden_size * ACTIVATION_BYTES


def _forward_bytes(spec: ModelSpec, tokens: int, tp: int) -> float:
    """Peak activations of a forward pass over ``tokens`` tokens on one GPU."""
    gate = 3 if spec.gated_mlp else 2
    if spec.is_moe:
        # fused MoE buffers: each token's top-k experts' gate/up and down outputs
        width = (spec.moe_intermediate_size or spec.intermediate_size) / tp
        k = spec.n_expert_per_token or 1
        mlp = k * (gate * width + spec.hidden_size)
    else:
        mlp = gate * spec.intermediate_size / tp
    return tokens * ACTIVATION_BYTES * (FORWARD_HIDDEN_WIDTHS * spec.hidden_size + mlp)


def memory_plan(
    spec: ModelSpec,
    gpu: GpuSpec,
    engine: EngineConfig,
    *,
    gpu_memory_gib: float | None = None,
    release: VllmRelease = DEFAULT_RELEASE,
) -> MemoryPlan:
    """How vLLM would size one replica's memory on GPUs of a kind (``gpu_memory_gib`` overrides the total)."""
    tp, pp = engine.tensor_parallel_size, engine.pipeline_parallel_size
    quantization = served_quantization(spec, engine)
    total = gpu_memory_gib if gpu_memory_gib is not None else gpu.memory_gib_reported
    requested = total * engine.gpu_memory_utilization
    layers = _stage_layers(spec.num_layers, pp)
    # KV heads are sharded over TP ranks; with fewer KV heads than ranks each rank keeps a replica of one.
    kv_heads = max(1, spec.num_kv_heads // tp)
    kv_per_layer = 2 * kv_heads * spec.head_dim * KV_DTYPE_BYTES[engine.kv_cache_dtype]
    embedding = spec.vocab_size * spec.hidden_size * ACTIVATION_BYTES / tp
    rotary = (spec.max_position_embeddings or 0) * spec.head_dim * ACTIVATION_BYTES
    body = layers * _layer_weight_bytes(spec, quantization, tp) + rotary
    tokens = engine.max_num_batched_tokens
    forward = _forward_bytes(spec, tokens, tp)
    # vLLM's dummy sampler runs min(max_num_seqs, max_num_batched_tokens) requests over the full vocabulary.
    requests = min(engine.max_num_seqs, tokens)
    sampler = requests * spec.vocab_size * release.sampler_bytes_per_logit + release.sampler_base_gib * GIB
    # One stage holds the embedding and the LM head unless tied to it; with PP the last stage, which holds
    # the LM head and runs the sampler, binds: it has the least room left.
    weights = body + embedding * (2 if pp == 1 and not spec.tied_embeddings else 1)
    peak = max(forward, sampler)
    if tp > 1:
        non_torch = release.non_torch_tp_gib
    else:
        non_torch = release.non_torch_pp_gib if pp > 1 else release.non_torch_gib
    cuda_graphs = CUDA_GRAPH_BASE_GIB + CUDA_GRAPH_GIB_PER_LAYER * layers
    weights_gib, activation_gib = weights / GIB, peak / GIB
    kv_gib = requested - weights_gib - activation_gib - non_torch
    if release.cuda_graphs_in_budget:
        kv_gib -= cuda_graphs
    blocks = max(0, int(kv_gib * GIB // (kv_per_layer * BLOCK_SIZE * layers)))
    kv_tokens = blocks * BLOCK_SIZE
    bytes_per_token = kv_per_layer * layers
    other = activation_gib + non_torch
    if kv_gib <= 0:
        shortfall = "weights"
        reason = (
            f"{spec.name} ({quantization.value}) needs {weights_gib:.2f} GiB of weights per GPU plus "
            f"{other:.2f} GiB of activations and buffers; {engine.gpu_memory_utilization:g} x {total:.2f} GiB "
            f"= {requested:.2f} GiB usable leaves {kv_gib:.2f} GiB for the KV cache"
        )
    elif kv_gib * GIB < engine.max_model_len * bytes_per_token:
        needed = engine.max_model_len * bytes_per_token / GIB
        shortfall = "max_model_len"
        reason = (
            f"one {engine.max_model_len}-token sequence needs {needed:.2f} GiB of KV cache per GPU, more than "
            f"the {kv_gib:.2f} GiB left after {weights_gib:.2f} GiB of weights and {other:.2f} GiB of "
            f"activations and buffers (at most {kv_tokens} tokens)"
        )
    elif requested + cuda_graphs > total:
        shortfall = "cuda_graphs"
        reason = (
            f"gpu_memory_utilization {engine.gpu_memory_utilization:g} leaves {total - requested:.2f} GiB of "
            f"{total:.2f} GiB outside vLLM's budget, less than the ~{cuda_graphs:.2f} GiB its CUDA graphs take"
        )
    else:
        shortfall = None
        reason = (
            f"fits: {kv_tokens} KV tokens ({blocks} blocks, {kv_gib:.2f} GiB) after {weights_gib:.2f} GiB of "
            f"weights and {other:.2f} GiB of activations and buffers per GPU"
        )
    return MemoryPlan(
        total_gib=total,
        requested_gib=requested,
        weights_gib=weights_gib,
        activation_gib=activation_gib,
        non_torch_gib=non_torch,
        cuda_graph_gib=cuda_graphs,
        kv_gib=kv_gib,
        kv_bytes_per_token=bytes_per_token,
        num_gpu_blocks=blocks,
        kv_cache_tokens=kv_tokens,
        max_model_len=engine.max_model_len,
        shortfall=shortfall,
        reason=reason,
    )


# ------------------------------------------------------------------------------------- validation


def config_problems(
    spec: ModelSpec, gpu: GpuSpec, gpus: int | None, engine: EngineConfig
) -> list[ConfigError]:
    """Everything vLLM would refuse about running ``engine`` for a model on ``gpus`` GPUs of a kind, memory
    aside (``gpus`` None: the engine's own TP x PP is the GPU count)."""
    tp, pp = engine.tensor_parallel_size, engine.pipeline_parallel_size
    problems: list[ConfigError] = []
    if spec.num_attention_heads % tp:
        problems.append(
            ConfigError(
                "engine.tensor_parallel_size",
                tp,
                f"{spec.num_attention_heads} attention heads of {spec.name} are not divisible by {tp}",
            )
        )
    kv = spec.num_kv_heads
    if (tp <= kv and kv % tp) or (tp > kv and tp % kv):
        problems.append(
            ConfigError(
                "engine.tensor_parallel_size",
                tp,
                f"{spec.name}'s {kv} KV heads can neither be split over nor replicated across {tp} GPUs",
            )
        )
    if gpus is not None and tp * pp != gpus:
        relation = "exceeds" if tp * pp > gpus else "does not use all of"
        problems.append(
            ConfigError(
                "engine.tensor_parallel_size",
                tp,
                f"TP {tp} x PP {pp} = {tp * pp} {relation} the instance's {gpus} {gpu.name} GPUs "
                "(one replica per instance: TP x PP must equal the GPU count)",
            )
        )
    if pp > spec.num_layers:
        problems.append(
            ConfigError("engine.pipeline_parallel_size", pp, f"{spec.name} has only {spec.num_layers} layers")
        )
    unquantized = (Quantization.FP16, Quantization.BF16)
    if spec.quantization is not None and engine.quantization not in (*unquantized, spec.quantization):
        problems.append(
            ConfigError(
                "engine.quantization",
                engine.quantization.value,
                f"the {spec.name} checkpoint is {spec.quantization.value}-quantized",
            )
        )
    quantization = served_quantization(spec, engine)
    if (why := quantization_problem(gpu, quantization)) is not None:
        problems.append(ConfigError("engine.quantization", quantization.value, why))
    if (why := kv_dtype_problem(gpu, engine.kv_cache_dtype)) is not None:
        problems.append(ConfigError("engine.kv_cache_dtype", engine.kv_cache_dtype.value, why))
    if engine.max_num_batched_tokens < engine.max_num_seqs:
        problems.append(
            ConfigError(
                "engine.max_num_batched_tokens",
                engine.max_num_batched_tokens,
                f"must be at least max_num_seqs ({engine.max_num_seqs}): every running sequence needs a token",
            )
        )
    if spec.max_position_embeddings and engine.max_model_len > spec.max_position_embeddings:
        problems.append(
            ConfigError(
                "engine.max_model_len",
                engine.max_model_len,
                f"longer than {spec.name}'s {spec.max_position_embeddings} positions",
            )
        )
    return problems


# Which config field a memory shortfall is about, for validate_config's error.
_SHORTFALL_FIELD = {
    "weights": "instance_type",
    "max_model_len": "engine.max_model_len",
    "cuda_graphs": "engine.gpu_memory_utilization",
}


def validate_config(model_name: str, config: DeploymentConfig) -> None:
    """Raise ConfigError (naming the field, the value and why) when vLLM could not serve ``model_name`` with
    ``config``: unknown instance type or model, parallelism the model or instance cannot take, a format the
    GPU cannot run, or memory that does not hold the weights or one max_model_len sequence."""
    try:
        itype = instance_type(config.instance_type)
    except KeyError as exc:
        raise ConfigError("instance_type", config.instance_type, exc.args[0]) from None
    try:
        spec = model(model_name)
    except KeyError as exc:
        raise ConfigError("model", model_name, exc.args[0]) from None
    gpus = itype.gpu_count
    if config.gpus_per_replica is not None:  # a slice of a shared host: the engine runs on its GPUs only
        gpus = config.gpus_per_replica
        tp, pp = config.engine.tensor_parallel_size, config.engine.pipeline_parallel_size
        if gpus >= itype.gpu_count:
            why = f"a slice of a shared {itype.name} holds fewer than its {itype.gpu_count} GPUs (unset: all)"
            raise ConfigError("gpus_per_replica", gpus, why)
        if tp * pp != gpus:
            raise ConfigError("gpus_per_replica", gpus, f"the engine's TP {tp} x PP {pp} = {tp * pp} GPUs")
    problems = config_problems(spec, itype.gpu, gpus, config.engine)
    if problems:
        raise problems[0]
    plan = memory_plan(spec, itype.gpu, config.engine)
    if plan.shortfall is not None:
        field = _SHORTFALL_FIELD[plan.shortfall]
        value = getattr(config.engine, field.removeprefix("engine."), config.instance_type)
        raise ConfigError(field, value, f"on {itype.name}: {plan.reason}")


# -------------------------------------------------------------------------------------- quality

# Expected quality relative to 16-bit weights: a loss that shrinks with model size, loss(N) = loss at 8B
# parameters x (8e9 / N) ^ QUALITY_SIZE_EXPONENT, capped.
# - Kurtic et al., "'Give Me BF16 or Give Me Death'? Accuracy-Performance Trade-Offs in LLM Quantization"
#   (ACL 2025, arXiv:2411.02355; 500k evaluations over Llama-3.1 8B/70B/405B): FP8 W8A8 is effectively
#   lossless at every scale, tuned INT8 W8A8 loses 1-3%, INT4 weight-only (GPTQ) is competitive with INT8 and
#   larger models keep more of their accuracy.
# - Lin et al., "AWQ" (MLSys 2024, arXiv:2306.00978) and Frantar et al., "GPTQ" (ICLR 2023,
#   arXiv:2210.17323): 4-bit group-128 quantization costs small models much more than large ones; AWQ's
#   perplexity loss is at most GPTQ's, hence GPTQ's slightly larger figure here.
# - vLLM's FP8 KV cache (e4m3) documentation: minimal accuracy loss; counted as a small extra loss.
# The exponent 0.4 makes INT4 lose ~3% at 8B, ~1.3% at 70B, ~0.6% at 405B and ~6-9% at 0.5-1B.
QUALITY_LOSS_AT_8B: dict[Quantization, float] = {
    Quantization.FP16: 0.0,
    Quantization.BF16: 0.0,
    Quantization.FP8: 0.003,
    Quantization.INT8: 0.015,
    Quantization.INT4_AWQ: 0.030,
    Quantization.INT4_GPTQ: 0.036,
}
KV_FP8_LOSS_AT_8B = 0.002
QUALITY_SIZE_EXPONENT = 0.4
QUALITY_MAX_LOSS = 0.5


def _loss(at_8b: float, params: int) -> float:
    return min(QUALITY_MAX_LOSS, at_8b * (8e9 / params) ** QUALITY_SIZE_EXPONENT)


def quality_factor(spec: ModelSpec, engine: EngineConfig) -> float:
    """Expected per-request quality under ``engine`` relative to the model at 16 bits (1.0 = no loss)."""
    params = spec.param_count()
    weights = _loss(QUALITY_LOSS_AT_8B[served_quantization(spec, engine)], params)
    kv = _loss(KV_FP8_LOSS_AT_8B, params) if engine.kv_cache_dtype == KvCacheDtype.FP8 else 0.0
    return (1.0 - weights) * (1.0 - kv)


# ----------------------------------------------------------------------------------------- timing

# Calibrated against public vLLM measurements of Llama-3.1-8B (bench/serving_latency.py): single-stream decode
# reads the weights at ~82% of the datasheet bandwidth with ~0.6 ms of scheduling, sampling and launches per
# step (H100 SXM: 6.48 ms/token; A100 40GB: ~75 tokens/s).
BANDWIDTH_EFFICIENCY = 0.82
STEP_OVERHEAD_MS = 0.6
PREFILL_MFU = 0.5  # achievable share of dense tensor throughput in prefill
DECODE_MFU = 0.5
INT4_GEMM_EFFICIENCY = 0.7  # W4A16 dequantizes inside the GEMM: slower than fp16 once compute-bound
# Tensor-parallel all-reduce: two per layer per step; one-shot latency over NVLink vs PCIe.
ALLREDUCE_NVLINK_US = 8.0
ALLREDUCE_PCIE_US = 25.0
PIPELINE_HOP_MS = 0.1  # handing a micro-batch's activations to the next stage
KV_OFFLOAD_PCIE_GB_S = 20.0  # host-to-device rate for KV blocks reloaded from CPU memory
# Past this utilization the M/M/1 wait rho/(1-rho) is continued along its tangent, so overload stays finite.
RHO_KNEE = 0.95
# Latency quantiles: exponential queue waits (ln 2, ln 20, ln 100) and spread of output lengths.
WAIT_QUANTILE = {"p50": float(np.log(2.0)), "p95": float(np.log(20.0)), "p99": float(np.log(100.0))}
SERVICE_QUANTILE = {"p50": 0.9, "p95": 1.8, "p99": 2.3}


@dataclass(frozen=True)
class Workload:
    """What requests look like: prompt and output lengths and how much of a prompt the prefix cache can hold."""

    avg_prompt_tokens: int = 1024
    avg_output_tokens: int = 256
    prefix_cache_hit_rate: float = 0.0  # share of prompt tokens an earlier request already computed
    # Distinct reusable prefix tokens that must stay cached to reach that rate (0: they fit anywhere).
    prefix_working_set_tokens: int = 0

    @property
    def avg_context_tokens(self) -> float:
        # A running sequence holds its prompt and, on average, half of its output.
        return self.avg_prompt_tokens + self.avg_output_tokens / 2


ServingProfile = Workload  # the name callers used before engine settings moved to EngineConfig


@dataclass(frozen=True)
class ServingCapacity:
    fits: bool
    tensor_parallel: int
    weight_gib_per_gpu: float
    kv_cache_tokens: int
    max_num_seqs: int
    max_batch: int
    decode_step_ms: float  # inter-token latency at max_batch
    prefill_ms: float  # one average prompt, prefix-cache hits skipped
    max_requests_per_s: float
    reason: str
    # Coefficients of one pipeline stage's decode step as a function of its batch b (ms), for load_points:
    # stage(b) = max(base + experts x (1 - (1 - touch)^b) + mem x b, compute x b) + comm x b + overhead
    decode_base_ms: float = 0.0
    decode_mem_ms_per_seq: float = 0.0
    decode_compute_ms_per_seq: float = 0.0
    step_overhead_ms: float = STEP_OVERHEAD_MS
    avg_output_tokens: int = 256
    avg_context_tokens: float = 1152.0
    gpu_mem_used_gib: float = 0.0  # what NVML shows: vLLM preallocates its share up front
    decode_expert_ms: float = 0.0  # reading every routed expert once
    expert_touch_ratio: float = 0.0  # experts per token / experts
    decode_comm_ms_per_seq: float = 0.0
    pipeline_parallel: int = 1
    prefill_chunks: int = 1  # steps a prompt's prefill is cut into (max_num_batched_tokens)
    num_gpu_blocks: int = 0
    kv_offload_tokens: int = 0
    prefix_hit_rate: float = 0.0  # effective: what the caches can hold of the workload's reusable prefixes
    memory: MemoryPlan | None = None


def _not_fitting(engine: EngineConfig, plan: MemoryPlan, reason: str) -> ServingCapacity:
    return ServingCapacity(
        False,
        engine.tensor_parallel_size,
        plan.weights_gib,
        plan.kv_cache_tokens,
        engine.max_num_seqs,
        0,
        0.0,
        0.0,
        0.0,
        reason,
        pipeline_parallel=engine.pipeline_parallel_size,
        num_gpu_blocks=plan.num_gpu_blocks,
        memory=plan,
    )


def _stage_step_ms(cap: ServingCapacity, batch):
    """Roofline of one stage's decode step at a stage batch: the slower of streaming memory and the math."""
    experts = cap.decode_expert_ms * (1.0 - (1.0 - cap.expert_touch_ratio) ** batch)
    memory = cap.decode_base_ms + experts + cap.decode_mem_ms_per_seq * batch
    compute = cap.decode_compute_ms_per_seq * batch
    return np.maximum(memory, compute) + cap.decode_comm_ms_per_seq * batch + cap.step_overhead_ms


def decode_itl_ms(cap: ServingCapacity, batch):
    """Inter-token latency at a replica batch: a token passes every stage, each running batch/pp sequences."""
    pp = cap.pipeline_parallel
    return pp * _stage_step_ms(cap, np.maximum(batch / pp, 1.0)) + (pp - 1) * PIPELINE_HOP_MS


def serving_capacity(
    spec: ModelSpec,
    itype: InstanceType,
    engine: EngineConfig | Workload | None = None,
    workload: Workload = Workload(),
) -> ServingCapacity:
    """One replica (one instance) serving ``spec`` with ``engine`` (None: vLLM's defaults, TP over all GPUs)."""
    if isinstance(engine, Workload):  # serving_capacity(model, itype, ServingProfile()), the pre-engine form
        engine, workload = None, engine
    if engine is None:
        engine = default_engine(itype.gpu, itype.gpu_count)
    gpu = itype.gpu
    plan = memory_plan(spec, gpu, engine)
    problems = config_problems(spec, gpu, itype.gpu_count, engine)
    if problems:
        return _not_fitting(engine, plan, str(problems[0]))
    ctx = workload.avg_context_tokens
    if not plan.fits or plan.kv_cache_tokens < ctx:
        why = (
            plan.reason
            if not plan.fits
            else f"{plan.kv_cache_tokens} KV tokens hold no {ctx:.0f}-token sequence"
        )
        return _not_fitting(engine, plan, f"{spec.name} on {itype.name}: {why}")
    tp, pp = engine.tensor_parallel_size, engine.pipeline_parallel_size
    quantization = served_quantization(spec, engine)
    fmt = QUANT_FORMATS[quantization]
    layers = _stage_layers(spec.num_layers, pp)
    bandwidth = gpu.memory_bandwidth_gb_s * 1e9 * BANDWIDTH_EFFICIENCY  # bytes/s per GPU
    flops = gpu.gemm_tflops(fmt.gemm) * 1e12 * tp  # dense flop/s of one stage
    if fmt.feature == "int4":
        flops *= INT4_GEMM_EFFICIENCY
    # Weights one step streams per GPU: routed experts only as far as the batch's tokens reach them.
    expert_bytes = 0.0
    if spec.is_moe:
        expert_bytes = layers * (spec.n_expert or 0) * spec.expert_params() * fmt.weight_bytes / tp
    dense_bytes = plan.weights_gib * GIB - expert_bytes
    comm_fixed = comm_per_seq = 0.0
    if tp > 1:
        latency_us = ALLREDUCE_NVLINK_US if gpu.nvlink else ALLREDUCE_PCIE_US
        comm_fixed = 2 * layers * latency_us / 1e3
        ring = 2.0 * (tp - 1) / tp  # bytes each GPU sends per byte all-reduced
        comm_per_seq = 2 * layers * spec.hidden_size * ACTIVATION_BYTES * ring / (gpu.link_gb_s * 1e9) * 1e3

    # Prefix cache: hits need the reused prefixes to stay cached, in the GPU blocks the running batch leaves
    # free and in CPU memory when KV offload is on (reloading those costs a host-to-device copy).
    max_batch = max(1, min(engine.max_num_seqs, int(plan.kv_cache_tokens // ctx)))
    token_bytes_all_gpus = plan.kv_bytes_per_token * tp * pp
    offload_tokens = int(engine.kv_offload_gib * GIB // token_bytes_all_gpus)
    free_gpu = max(0.0, plan.kv_cache_tokens - max_batch * ctx)
    rate = workload.prefix_cache_hit_rate if engine.enable_prefix_caching else 0.0
    working = workload.prefix_working_set_tokens
    held = 1.0 if working <= 0 else min(1.0, (free_gpu + offload_tokens) / working)
    from_cpu = 0.0 if working <= 0 else max(0.0, min(working, free_gpu + offload_tokens) - free_gpu) / working
    hit = rate * held
    prompt = workload.avg_prompt_tokens
    computed = prompt * (1.0 - hit)
    q_width = spec.num_attention_heads * spec.head_dim
    active = spec.active_param_count()
    # new tokens attend to the cached prefix and, causally, to each other
    prefill_flops = 2 * active * computed + 4 * spec.num_layers * q_width * computed * (prompt - computed / 2)
    reload_ms = prompt * rate * from_cpu * token_bytes_all_gpus / (KV_OFFLOAD_PCIE_GB_S * 1e9) * 1e3
    prefill_ms = prefill_flops / (flops * PREFILL_MFU) * 1e3 + reload_ms
    chunks = max(1, math.ceil(computed / engine.max_num_batched_tokens))

    cap = ServingCapacity(
        fits=True,
        tensor_parallel=tp,
        weight_gib_per_gpu=plan.weights_gib,
        kv_cache_tokens=plan.kv_cache_tokens,
        max_num_seqs=engine.max_num_seqs,
        max_batch=max_batch,
        decode_step_ms=0.0,
        prefill_ms=prefill_ms,
        max_requests_per_s=0.0,
        reason=(
            f"fits: {plan.kv_cache_tokens} KV tokens, batch {max_batch}, TP {tp}"
            + (f" x PP {pp}" if pp > 1 else "")
            + f", {quantization.value}"
        ),
        decode_base_ms=dense_bytes / bandwidth * 1e3,
        decode_mem_ms_per_seq=ctx * plan.kv_bytes_per_token / bandwidth * 1e3,
        decode_compute_ms_per_seq=2 * active / pp / (flops * DECODE_MFU) * 1e3,
        step_overhead_ms=STEP_OVERHEAD_MS + comm_fixed,
        avg_output_tokens=workload.avg_output_tokens,
        avg_context_tokens=ctx,
        gpu_mem_used_gib=tp * pp * (plan.requested_gib + plan.cuda_graph_gib),
        decode_expert_ms=expert_bytes / bandwidth * 1e3,
        expert_touch_ratio=(spec.n_expert_per_token or 0) / (spec.n_expert or 1) if spec.is_moe else 0.0,
        decode_comm_ms_per_seq=comm_per_seq,
        pipeline_parallel=pp,
        prefill_chunks=chunks,
        num_gpu_blocks=plan.num_gpu_blocks,
        kv_offload_tokens=offload_tokens,
        prefix_hit_rate=hit,
        memory=plan,
    )
    decode_ms = float(decode_itl_ms(cap, max_batch))
    # GPU-seconds one request costs: its prefill (stages overlap other requests') plus its share of the full
    # batch's decode steps.
    per_request_s = (prefill_ms / pp + workload.avg_output_tokens * decode_ms / max_batch) / 1e3
    return replace(cap, decode_step_ms=decode_ms, max_requests_per_s=1.0 / per_request_s)


def _wait_factor(rho: np.ndarray) -> np.ndarray:
    """rho/(1-rho) up to the knee, then its tangent: monotonic, finite under overload."""
    below = np.minimum(rho, RHO_KNEE)
    tangent = (rho - RHO_KNEE).clip(min=0.0) / (1.0 - RHO_KNEE) ** 2
    return below / (1.0 - below) + tangent


@dataclass(frozen=True)
class LoadPoint:
    requests_per_s: float
    utilization: float
    ttft_ms: float
    itl_ms: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    tokens_per_s: float
    queue_length: float
    kv_cache_usage: float
    gpu_util_pct: float
    gpu_mem_used_gib: float
    power_w: float
    preemptions_per_s: float


def preempted_share(cap: ServingCapacity, busy: np.ndarray) -> np.ndarray:
    """Share of requests vLLM preempts at a busy fraction: its scheduler admits a waiting sequence when the
    blocks of its prompt are free, so under load it runs up to min(max_num_seqs, KV tokens / prompt)
    sequences; their outputs then grow them to the average context, and the sequences that no longer fit
    are evicted (and recomputed later). None are when max_num_seqs keeps the batch within the cache."""
    prompt = max(cap.avg_context_tokens - cap.avg_output_tokens / 2, 1.0)
    admitted = busy * min(cap.max_num_seqs, cap.kv_cache_tokens / prompt)
    demand = np.maximum(admitted * cap.avg_context_tokens, 1e-9)
    return np.clip(1.0 - cap.kv_cache_tokens / demand, 0.0, 1.0)


def load_points(
    cap: ServingCapacity, itype: InstanceType, requests_per_s: np.ndarray
) -> dict[str, np.ndarray]:
    """Steady-state metrics of one replica at each arrival rate (requests/s); keys = LoadPoint fields."""
    if not cap.fits:
        raise ValueError(f"cannot load a replica that does not fit: {cap.reason}")
    lam = np.maximum(np.asarray(requests_per_s, dtype=np.float64), 0.0)
    mu = cap.max_requests_per_s
    rho = lam / mu
    busy = np.minimum(rho, 1.0)
    # The running batch fills with load (Little's law at the full batch's service time).
    batch = np.maximum(busy * cap.max_batch, 1.0)
    # Prefill chunks ride the decode steps: the share of GPU time they take stretches every step.
    prefill_share = np.minimum(lam, mu) * cap.prefill_ms / cap.pipeline_parallel / 1e3
    itl = decode_itl_ms(cap, batch) / (1.0 - prefill_share)
    wait_ms = _wait_factor(rho) / mu * 1e3  # mean queueing delay
    decode_ms = (cap.avg_output_tokens - 1) * itl
    # first token: the prefill, spread over its chunks, each on a step beside the running decodes
    service_ms = cap.prefill_ms + cap.prefill_chunks * itl
    ttft = wait_ms + service_ms

    def quantile(q: str) -> np.ndarray:
        return service_ms + SERVICE_QUANTILE[q] * decode_ms + WAIT_QUANTILE[q] * wait_ms

    kv_usage = np.minimum(batch * cap.avg_context_tokens / cap.kv_cache_tokens, 1.0) * (lam > 0)
    gpu = itype.gpu
    return {
        "requests_per_s": lam,
        "utilization": rho,
        "ttft_ms": ttft,
        "itl_ms": itl,
        "latency_p50_ms": quantile("p50"),
        "latency_p95_ms": quantile("p95"),
        "latency_p99_ms": quantile("p99"),
        "tokens_per_s": np.minimum(lam, mu) * cap.avg_output_tokens,
        "queue_length": lam * wait_ms / 1e3,
        "kv_cache_usage": kv_usage,
        # NVML counts time with any kernel running, which saturates faster than throughput does.
        "gpu_util_pct": 100.0 * (1.0 - (1.0 - busy) ** 2),
        "gpu_mem_used_gib": np.full_like(lam, cap.gpu_mem_used_gib),
        "power_w": itype.gpu_count * (gpu.idle_w + (gpu.tdp_w - gpu.idle_w) * busy),
        "preemptions_per_s": np.minimum(lam, mu) * preempted_share(cap, busy),
    }


def load_point(cap: ServingCapacity, itype: InstanceType, requests_per_s: float) -> LoadPoint:
    points = load_points(cap, itype, np.array([requests_per_s], dtype=np.float64))
    return LoadPoint(**{name: float(values[0]) for name, values in points.items()})
