"""Serving physics of a vLLM-like engine, in closed form and vectorizable with numpy.

One replica per instance, tensor parallel over all of the instance's GPUs. Memory decides whether a model
fits and how many tokens of KV cache remain; decode is bound by memory bandwidth (weights plus the batch's
KV cache are read every step) unless the batch is large enough to become compute-bound; prefill is
compute-bound. Queueing on top is M/M/1-like, clipped so that overload gives a large but finite queue.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from optiinfra_assets.catalog import InstanceType, ModelSpec

GIB = 1024**3
WEIGHT_DTYPE_BYTES = 2  # fp16/bf16 weights
# Peak activations, CUDA graphs and NCCL buffers that vLLM's memory profiling keeps out of the KV cache.
ACTIVATION_RESERVE_GIB = 1.5
# Achievable fractions of the datasheet: HBM/GDDR streaming ~80%, prefill model-FLOPs utilization ~50%.
BANDWIDTH_EFFICIENCY = 0.8
PREFILL_MFU = 0.5
DECODE_MFU = 0.5
STEP_OVERHEAD_MS = 2.0  # scheduler, sampling and kernel launches per decode step
TP_OVERHEAD_MS = 0.5  # extra all-reduce latency per step when tensor parallel
# Past this utilization the M/M/1 wait rho/(1-rho) is continued along its tangent, so overload stays finite.
RHO_KNEE = 0.95
# Latency quantiles: exponential queue waits (ln 2, ln 20, ln 100) and spread of output lengths.
WAIT_QUANTILE = {"p50": float(np.log(2.0)), "p95": float(np.log(20.0)), "p99": float(np.log(100.0))}
SERVICE_QUANTILE = {"p50": 0.9, "p95": 1.8, "p99": 2.3}


@dataclass(frozen=True)
class ServingProfile:
    avg_prompt_tokens: int = 1024
    avg_output_tokens: int = 256
    gpu_memory_utilization: float = 0.9
    kv_dtype_bytes: int = 2
    block_size: int = 16

    @property
    def avg_context_tokens(self) -> float:
        # A running sequence holds its prompt and, on average, half of its output.
        return self.avg_prompt_tokens + self.avg_output_tokens / 2


@dataclass(frozen=True)
class ServingCapacity:
    fits: bool
    tensor_parallel: int
    weight_gib_per_gpu: float
    kv_cache_tokens: int
    max_num_seqs: int
    max_batch: int
    decode_step_ms: float  # at max_batch
    prefill_ms: float  # one average prompt
    max_requests_per_s: float
    reason: str
    # Coefficients of the decode step as a function of the batch b (ms), for load_points:
    # step(b) = max(decode_base_ms + decode_mem_ms_per_seq * b, decode_compute_ms_per_seq * b) + overhead
    decode_base_ms: float = 0.0
    decode_mem_ms_per_seq: float = 0.0
    decode_compute_ms_per_seq: float = 0.0
    step_overhead_ms: float = STEP_OVERHEAD_MS
    avg_output_tokens: int = 256
    avg_context_tokens: float = 1152.0
    gpu_mem_used_gib: float = 0.0  # what NVML shows: vLLM preallocates its share up front


def active_params(model: ModelSpec) -> int:
    """Parameters touched per token: a MoE model runs only n_expert_per_token of its experts."""
    if not model.n_expert or not model.n_expert_per_token:
        return model.param_count()
    mlp_one = (3 if model.gated_mlp else 2) * model.hidden_size * model.intermediate_size
    idle_experts = model.n_expert - model.n_expert_per_token
    return model.param_count() - model.num_layers * idle_experts * mlp_one


def default_max_num_seqs(itype: InstanceType) -> int:
    """vLLM 0.19 default: 1024 on GPUs with >= 70 GiB other than A100, else 256."""
    big = itype.gpu_memory_gib_per_gpu >= 70 and not itype.gpu.name.startswith("A100")
    return 1024 if big else 256


def kv_bytes_per_token_per_gpu(model: ModelSpec, tp: int, dtype_bytes: int) -> int:
    # KV heads are sharded across GPUs; with fewer KV heads than GPUs each GPU keeps a replica of one.
    kv_heads = max(1, model.num_kv_heads // tp)
    return 2 * model.num_layers * kv_heads * model.head_dim * dtype_bytes


def _not_fitting(tp: int, weight_gib: float, reason: str) -> ServingCapacity:
    return ServingCapacity(False, tp, weight_gib, 0, 0, 0, 0.0, 0.0, 0.0, reason)


def serving_capacity(
    model: ModelSpec, itype: InstanceType, profile: ServingProfile = ServingProfile()
) -> ServingCapacity:
    tp = itype.gpu_count
    weight_bytes_gpu = model.weight_bytes(WEIGHT_DTYPE_BYTES) / tp
    weight_gib = weight_bytes_gpu / GIB
    if model.num_attention_heads % tp:
        return _not_fitting(
            tp, weight_gib, f"{model.num_attention_heads} attention heads not divisible by TP {tp}"
        )
    budget_gib = itype.gpu_memory_gib_per_gpu * profile.gpu_memory_utilization
    free_gib = budget_gib - weight_gib - ACTIVATION_RESERVE_GIB
    kv_tok_bytes = kv_bytes_per_token_per_gpu(model, tp, profile.kv_dtype_bytes)
    blocks = int(max(free_gib, 0.0) * GIB // (kv_tok_bytes * profile.block_size))
    kv_tokens = blocks * profile.block_size
    ctx = profile.avg_context_tokens
    if kv_tokens < ctx:
        return _not_fitting(
            tp,
            weight_gib,
            f"{model.name} needs {weight_gib:.1f} GiB of weights per GPU; {itype.name} leaves "
            f"{max(free_gib, 0.0):.1f} GiB for KV cache of {budget_gib:.1f} GiB usable per GPU, "
            f"less than one {ctx:.0f}-token sequence",
        )
    max_num_seqs = default_max_num_seqs(itype)
    max_batch = max(1, min(max_num_seqs, int(kv_tokens // ctx)))

    bandwidth = itype.gpu.memory_bandwidth_gb_s * 1e9 * BANDWIDTH_EFFICIENCY  # bytes/s per GPU
    flops = itype.gpu.fp16_tflops * 1e12 * tp  # dense flop/s of the replica
    n_active = active_params(model)
    base_ms = weight_bytes_gpu / bandwidth * 1e3
    mem_per_seq_ms = ctx * kv_tok_bytes / bandwidth * 1e3
    compute_per_seq_ms = 2 * n_active / (flops * DECODE_MFU) * 1e3
    overhead = STEP_OVERHEAD_MS + (TP_OVERHEAD_MS if tp > 1 else 0.0)
    decode_ms = _decode_step_ms(base_ms, mem_per_seq_ms, compute_per_seq_ms, overhead, max_batch)
    prefill_ms = profile.avg_prompt_tokens * 2 * n_active / (flops * PREFILL_MFU) * 1e3
    # GPU-seconds one request costs: its prefill plus its share of the full batch's decode steps.
    per_request_s = (prefill_ms + profile.avg_output_tokens * decode_ms / max_batch) / 1e3
    used_gib = tp * (weight_gib + ACTIVATION_RESERVE_GIB + kv_tokens * kv_tok_bytes / GIB)
    return ServingCapacity(
        fits=True,
        tensor_parallel=tp,
        weight_gib_per_gpu=weight_gib,
        kv_cache_tokens=kv_tokens,
        max_num_seqs=max_num_seqs,
        max_batch=max_batch,
        decode_step_ms=float(decode_ms),
        prefill_ms=prefill_ms,
        max_requests_per_s=1.0 / per_request_s,
        reason=f"fits: {kv_tokens} KV tokens, batch {max_batch}, TP {tp}",
        decode_base_ms=base_ms,
        decode_mem_ms_per_seq=mem_per_seq_ms,
        decode_compute_ms_per_seq=compute_per_seq_ms,
        step_overhead_ms=overhead,
        avg_output_tokens=profile.avg_output_tokens,
        avg_context_tokens=ctx,
        gpu_mem_used_gib=used_gib,
    )


def _decode_step_ms(base: float, mem_per_seq: float, compute_per_seq: float, overhead: float, batch):
    """Roofline of one decode step: the slower of streaming memory and doing the math."""
    return np.maximum(base + mem_per_seq * batch, compute_per_seq * batch) + overhead


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
    itl = _decode_step_ms(
        cap.decode_base_ms,
        cap.decode_mem_ms_per_seq,
        cap.decode_compute_ms_per_seq,
        cap.step_overhead_ms,
        batch,
    )
    wait_ms = _wait_factor(rho) / mu * 1e3  # mean queueing delay
    decode_ms = (cap.avg_output_tokens - 1) * itl
    service_ms = cap.prefill_ms + itl  # first token: prefill plus the step it rides on
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
    }


def load_point(cap: ServingCapacity, itype: InstanceType, requests_per_s: float) -> LoadPoint:
    points = load_points(cap, itype, np.array([requests_per_s], dtype=np.float64))
    return LoadPoint(**{name: float(values[0]) for name, values in points.items()})
