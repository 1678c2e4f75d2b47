"""Public facts about EC2 GPU instance types and open models, written into code.

The figures were transcribed from public sources (Karpenter's instance-type reference and price table,
Vantage's instance data, the AWS Spot Advisor feed, SkyPilot's catalog; litgpt's transcription of each
model's config.json) so that the project stands alone: nothing here is read or downloaded at run time.
Prices are us-east-1 Linux: on-demand mid-2026, 1-year standard no-upfront reserved late 2025.
"""

from __future__ import annotations

from dataclasses import dataclass

from optiinfra_assets.models import Lifecycle


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_bandwidth_gb_s: float
    fp16_tflops: float  # dense fp16/bf16 tensor-core throughput (no sparsity)
    tdp_w: float
    idle_w: float


# Bandwidth, dense fp16/bf16 tensor TFLOPS and TDP are NVIDIA vendor datasheet figures.
# Idle power: an NVML reading on a real H100 80GB HBM3 gave ~125 W idle against its 700 W limit (~18%);
# the other GPUs are scaled by the same fraction of their TDP. It is an estimate, not a measurement.
_IDLE_FRACTION = 125.0 / 700.0


def _gpu(name: str, bandwidth: float, tflops: float, tdp: float) -> GpuSpec:
    return GpuSpec(name, bandwidth, tflops, tdp, round(tdp * _IDLE_FRACTION, 1))


T4 = _gpu("T4", 320.0, 65.0, 70.0)
A10G = _gpu("A10G", 600.0, 125.0, 300.0)
L4 = _gpu("L4", 300.0, 121.0, 72.0)
L40S = _gpu("L40S", 864.0, 362.0, 350.0)
A100_40 = _gpu("A100 40GB", 1555.0, 312.0, 400.0)
A100_80 = _gpu("A100 80GB", 2039.0, 312.0, 400.0)
H100 = _gpu("H100 SXM", 3350.0, 989.0, 700.0)
H200 = _gpu("H200", 4800.0, 989.0, 700.0)
V100 = _gpu("V100", 900.0, 125.0, 300.0)
GPUS: dict[str, GpuSpec] = {g.name: g for g in (T4, A10G, L4, L40S, A100_40, A100_80, H100, H200, V100)}

# Spot Advisor interruption-frequency bands -> monthly interruption probability bounds. The open-ended
# '>20%' band is capped at 30% so that risk arithmetic stays finite.
SPOT_INTERRUPT_BANDS: dict[str, tuple[float, float]] = {
    "<5%": (0.0, 0.05),
    "5-10%": (0.05, 0.10),
    "10-15%": (0.10, 0.15),
    "15-20%": (0.15, 0.20),
    ">20%": (0.20, 0.30),
}


@dataclass(frozen=True)
class InstanceType:
    name: str
    family: str
    vcpu: int
    memory_gib: float
    gpu: GpuSpec
    gpu_count: int
    gpu_memory_gib_per_gpu: float  # EC2's own figure (an A10G is 22.35 GiB)
    ondemand_usd_hour: float
    reserved_1y_usd_hour: float | None
    spot_usd_hour: float | None  # observed average where known, else estimated from the advisor savings
    spot_savings_pct: float | None
    spot_interrupt_band: str | None
    spot_n_azs: int | None

    @property
    def gpu_memory_gib_total(self) -> float:
        return self.gpu_memory_gib_per_gpu * self.gpu_count

    @property
    def spot_interrupt_rate(self) -> tuple[float, float] | None:
        """Monthly interruption probability bounds of the Spot Advisor band, e.g. (0.05, 0.10)."""
        if self.spot_interrupt_band is None:
            return None
        return SPOT_INTERRUPT_BANDS[self.spot_interrupt_band]

    def price_usd_hour(self, lifecycle: Lifecycle) -> float:
        if lifecycle == Lifecycle.ON_DEMAND:
            return self.ondemand_usd_hour
        if self.spot_usd_hour is None:
            raise ValueError(f"instance type {self.name!r} has no known spot price")
        return self.spot_usd_hour


def _it(
    name: str,
    vcpu: int,
    memory_gib: float,
    gpu: GpuSpec,
    gpu_count: int,
    gpu_mem: float,
    ondemand: float,
    reserved: float | None,
    spot: float | None,
    savings: float | None,
    band: str | None,
    n_azs: int | None,
) -> InstanceType:
    family = name.split(".", 1)[0]
    return InstanceType(
        name,
        family,
        vcpu,
        memory_gib,
        gpu,
        gpu_count,
        gpu_mem,
        ondemand,
        reserved,
        spot,
        savings,
        band,
        n_azs,
    )


# columns: name, vcpu, memory GiB, GPU, GPU count, GiB per GPU, on-demand $/h, reserved 1y $/h,
# spot $/h (observed average, else the advisor's estimate), spot savings %, interruption band, spot AZs
_INSTANCE_TYPES = (
    _it("g4dn.xlarge", 4, 16.0, T4, 1, 16.0, 0.526, 0.331, 0.2052, 64.0, "15-20%", 5),
    _it("g4dn.2xlarge", 8, 32.0, T4, 1, 16.0, 0.752, 0.474, 0.2933, 61.0, ">20%", None),
    _it("g4dn.4xlarge", 16, 64.0, T4, 1, 16.0, 1.204, 0.759, 0.3853, 68.0, ">20%", None),
    _it("g4dn.8xlarge", 32, 128.0, T4, 1, 16.0, 2.176, 1.371, 0.8051, 63.0, ">20%", None),
    _it("g4dn.12xlarge", 48, 192.0, T4, 4, 16.0, 3.912, 2.465, 1.4083, 64.0, "10-15%", None),
    _it("g4dn.16xlarge", 64, 256.0, T4, 1, 16.0, 4.352, 2.742, 1.0445, 76.0, ">20%", None),
    _it("g4dn.metal", 96, 384.0, T4, 8, 16.0, 7.824, 4.929, 3.8338, 51.0, ">20%", None),
    _it("g5.xlarge", 4, 16.0, A10G, 1, 22.35, 1.006, 0.63378, 0.4347, 59.0, ">20%", 5),
    _it("g5.2xlarge", 8, 32.0, A10G, 1, 22.35, 1.212, 0.76356, 0.509, 58.0, "15-20%", None),
    _it("g5.4xlarge", 16, 64.0, A10G, 1, 22.35, 1.624, 1.02312, 0.6496, 60.0, "10-15%", None),
    _it("g5.8xlarge", 32, 128.0, A10G, 1, 22.35, 2.448, 1.54224, 0.9261, 59.0, ">20%", 5),
    _it("g5.12xlarge", 48, 192.0, A10G, 4, 22.35, 5.672, 3.57336, 2.3822, 58.0, ">20%", None),
    _it("g5.16xlarge", 64, 256.0, A10G, 1, 22.35, 4.096, 2.58048, 1.5974, 61.0, ">20%", None),
    _it("g5.24xlarge", 96, 384.0, A10G, 4, 22.35, 8.144, 5.13072, 3.5019, 57.0, ">20%", None),
    _it("g5.48xlarge", 192, 768.0, A10G, 8, 22.35, 16.288, 10.26144, 4.7235, 71.0, ">20%", None),
    _it("g6.xlarge", 4, 16.0, L4, 1, 22.35, 0.8048, 0.52392, 0.4104, 49.0, ">20%", None),
    _it("g6.2xlarge", 8, 32.0, L4, 1, 22.35, 0.9776, 0.63642, 0.4106, 58.0, ">20%", None),
    _it("g6.4xlarge", 16, 64.0, L4, 1, 22.35, 1.3232, 0.8614, 0.569, 57.0, ">20%", None),
    _it("g6.8xlarge", 32, 128.0, L4, 1, 22.35, 2.0144, 1.31137, 0.8863, 56.0, ">20%", None),
    _it("g6.12xlarge", 48, 192.0, L4, 4, 22.35, 4.6016, 2.99564, 1.8867, 59.0, ">20%", None),
    _it("g6.16xlarge", 64, 256.0, L4, 1, 22.35, 3.3968, 2.21132, 1.2228, 64.0, "15-20%", None),
    _it("g6.24xlarge", 96, 384.0, L4, 4, 22.35, 6.6752, 4.34556, 2.9371, 56.0, ">20%", None),
    _it("g6.48xlarge", 192, 768.0, L4, 8, 22.35, 13.3504, 8.69111, 4.1386, 69.0, ">20%", None),
    _it("g6e.xlarge", 4, 32.0, L40S, 1, 44.7, 1.861, 1.17243, 0.7816, 58.0, "5-10%", None),
    _it("g6e.2xlarge", 8, 64.0, L40S, 1, 44.7, 2.24208, 1.41251, 0.8296, 63.0, "10-15%", None),
    _it("g6e.4xlarge", 16, 128.0, L40S, 1, 44.7, 3.00424, 1.89267, 1.1416, 62.0, ">20%", None),
    _it("g6e.8xlarge", 32, 256.0, L40S, 1, 44.7, 4.52856, 2.85299, 1.5397, 66.0, ">20%", None),
    _it("g6e.12xlarge", 48, 384.0, L40S, 4, 44.7, 10.49264, 6.61036, 4.6168, 56.0, ">20%", None),
    _it("g6e.16xlarge", 64, 512.0, L40S, 1, 44.7, 7.57719, 4.77363, 2.5762, 66.0, "15-20%", None),
    _it("g6e.24xlarge", 96, 768.0, L40S, 4, 44.7, 15.06559, 9.49132, 3.9171, 74.0, ">20%", None),
    _it("g6e.48xlarge", 192, 1536.0, L40S, 8, 44.7, 30.13118, 18.98264, 9.642, 68.0, ">20%", None),
    _it("p4d.24xlarge", 96, 1152.0, A100_40, 8, 40.0, 21.957642, 13.921094, 6.6643, 67.0, "10-15%", 4),
    _it("p4de.24xlarge", 96, 1152.0, A100_80, 8, 80.0, 27.44705, 17.401365, 9.3119, 65.0, "<5%", 2),
    _it("p5.4xlarge", 16, 256.0, H100, 1, 80.0, 6.88, None, None, None, None, None),
    _it("p5.48xlarge", 192, 2048.0, H100, 8, 80.0, 55.04, None, 32.3114, 52.0, ">20%", 6),
    _it("p5en.48xlarge", 192, 2048.0, H200, 8, 141.0, 63.296, None, 22.7866, 64.0, "<5%", None),
    _it("p3.16xlarge", 64, 488.0, V100, 8, 16.0, 24.48, None, 4.1616, 83.0, ">20%", None),
    _it("p3.2xlarge", 8, 61.0, V100, 1, 16.0, 3.06, None, 0.612, 80.0, ">20%", None),
    _it("p3.8xlarge", 32, 244.0, V100, 4, 16.0, 12.24, None, 1.7136, 86.0, ">20%", None),
)
INSTANCE_TYPES: dict[str, InstanceType] = {t.name: t for t in _INSTANCE_TYPES}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hf_repo: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int  # padded, as in config.json
    n_expert: int | None
    n_expert_per_token: int | None
    tied_embeddings: bool = False  # the LM head shares the input embedding matrix
    gated_mlp: bool = True  # SwiGLU (gate, up, down) rather than a two-matrix GELU MLP

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """Bytes of K and V cached per token over all layers."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes

    def param_count(self) -> int:
        """Parameters from the architecture: embeddings, GQA attention, (MoE) MLP, norms."""
        h, q_width = self.hidden_size, self.num_attention_heads * self.head_dim
        kv_width = self.num_kv_heads * self.head_dim
        attention = h * q_width + 2 * h * kv_width + q_width * h
        mlp_one = (3 if self.gated_mlp else 2) * h * self.intermediate_size
        experts = self.n_expert or 1
        router = h * self.n_expert if self.n_expert else 0
        norms = 2 * h
        per_layer = attention + experts * mlp_one + router + norms
        embeddings = self.vocab_size * h * (1 if self.tied_embeddings else 2)
        return self.num_layers * per_layer + embeddings + h

    def weight_bytes(self, dtype_bytes: int = 2) -> int:
        return self.param_count() * dtype_bytes


def _m(
    name: str,
    hf_repo: str,
    layers: int,
    hidden: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    intermediate: int,
    vocab: int,
    n_expert: int | None,
    n_expert_per_token: int | None,
    *,
    tied_embeddings: bool = False,
    gated_mlp: bool = True,
) -> ModelSpec:
    return ModelSpec(
        name,
        hf_repo,
        layers,
        hidden,
        heads,
        kv_heads,
        head_dim,
        intermediate,
        vocab,
        n_expert,
        n_expert_per_token,
        tied_embeddings,
        gated_mlp,
    )


# columns: name, HF repo, layers, hidden, attention heads, KV heads, head dim, intermediate, vocab (padded),
# experts, experts per token
_MODELS = (
    _m("Llama-2-7b-hf", "meta-llama/Llama-2-7b-hf", 32, 4096, 32, 32, 128, 11008, 32000, None, None),
    _m("Llama-2-13b-hf", "meta-llama/Llama-2-13b-hf", 40, 5120, 40, 40, 128, 13824, 32000, None, None),
    _m("Llama-2-70b-hf", "meta-llama/Llama-2-70b-hf", 80, 8192, 64, 8, 128, 28672, 32000, None, None),
    _m("Llama-3-8B", "meta-llama/Meta-Llama-3-8B", 32, 4096, 32, 8, 128, 14336, 128256, None, None),
    _m("Llama-3-70B", "meta-llama/Meta-Llama-3-70B", 80, 8192, 64, 8, 128, 28672, 128256, None, None),
    _m("Llama-3.1-8B", "meta-llama/Meta-Llama-3.1-8B", 32, 4096, 32, 8, 128, 14336, 128256, None, None),
    _m("Llama-3.1-70B", "meta-llama/Meta-Llama-3.1-70B", 80, 8192, 64, 8, 128, 28672, 128256, None, None),
    _m(
        "Llama-3.1-405B", "meta-llama/Meta-Llama-3.1-405B", 126, 16384, 128, 8, 128, 53248, 128256, None, None
    ),
    _m(
        "Llama-3.2-1B",
        "meta-llama/Llama-3.2-1B",
        16,
        2048,
        32,
        8,
        64,
        8192,
        128256,
        None,
        None,
        tied_embeddings=True,
    ),
    _m(
        "Llama-3.2-3B",
        "meta-llama/Llama-3.2-3B",
        28,
        3072,
        24,
        8,
        128,
        8192,
        128256,
        None,
        None,
        tied_embeddings=True,
    ),
    _m("Mistral-7B-v0.1", "mistralai/Mistral-7B-v0.1", 32, 4096, 32, 8, 128, 14336, 32000, None, None),
    _m(
        "Mistral-7B-Instruct-v0.2",
        "mistralai/Mistral-7B-Instruct-v0.2",
        32,
        4096,
        32,
        8,
        128,
        14336,
        32000,
        None,
        None,
    ),
    _m("Mistral-7B-v0.3", "mistralai/Mistral-7B-v0.3", 32, 4096, 32, 8, 128, 14336, 32768, None, None),
    _m("Mixtral-8x7B-v0.1", "mistralai/Mixtral-8x7B-v0.1", 32, 4096, 32, 8, 128, 14336, 32000, 8, 2),
    _m("Mixtral-8x22B-v0.1", "mistralai/Mixtral-8x22B-v0.1", 56, 6144, 48, 8, 128, 16384, 32768, 8, 2),
    _m(
        "Qwen2.5-0.5B",
        "Qwen/Qwen2.5-0.5B",
        24,
        896,
        14,
        2,
        64,
        4864,
        151936,
        None,
        None,
        tied_embeddings=True,
    ),
    _m(
        "Qwen2.5-1.5B",
        "Qwen/Qwen2.5-1.5B",
        28,
        1536,
        12,
        2,
        128,
        8960,
        151936,
        None,
        None,
        tied_embeddings=True,
    ),
    _m(
        "Qwen2.5-3B", "Qwen/Qwen2.5-3B", 36, 2048, 16, 2, 128, 11008, 151936, None, None, tied_embeddings=True
    ),
    _m("Qwen2.5-7B", "Qwen/Qwen2.5-7B", 28, 3584, 28, 4, 128, 18944, 152064, None, None),
    _m("Qwen2.5-14B", "Qwen/Qwen2.5-14B", 48, 5120, 40, 8, 128, 13824, 152064, None, None),
    _m("Qwen2.5-32B", "Qwen/Qwen2.5-32B", 64, 5120, 40, 8, 128, 27648, 152064, None, None),
    _m("Qwen2.5-72B", "Qwen/Qwen2.5-72B", 80, 8192, 64, 8, 128, 29568, 152064, None, None),
    _m("Qwen3-8B", "Qwen/Qwen3-8B", 36, 4096, 32, 8, 128, 12288, 151936, None, None),
    _m("Qwen3-32B", "Qwen/Qwen3-32B", 64, 5120, 64, 8, 128, 25600, 151936, None, None),
    _m(
        "Phi-3-mini-4k-instruct",
        "microsoft/Phi-3-mini-4k-instruct",
        32,
        3072,
        32,
        32,
        96,
        8192,
        32064,
        None,
        None,
    ),
    _m(
        "falcon-7b",
        "tiiuae/falcon-7b",
        32,
        4544,
        71,
        1,
        64,
        18176,
        65024,
        None,
        None,
        tied_embeddings=True,
        gated_mlp=False,
    ),
)
MODELS: dict[str, ModelSpec] = {m.name: m for m in _MODELS}


def instance_type(name: str) -> InstanceType:
    try:
        return INSTANCE_TYPES[name]
    except KeyError:
        raise KeyError(f"unknown instance type {name!r}; known: {', '.join(INSTANCE_TYPES)}") from None


def model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None
