"""Public facts about GPUs, EC2 GPU instance types and open models, written into code.

The figures were transcribed from public sources (vendor datasheets; Karpenter's instance-type reference and
price table, Vantage's instance data, the AWS Spot Advisor feed, SkyPilot's catalog; litgpt's transcription
of each model's config.json; vLLM startup logs for the memory a driver reports) so that the project stands
alone: nothing here is read or downloaded at run time.
Prices are us-east-1 Linux: on-demand mid-2026, 1-year standard no-upfront reserved late 2025.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import NamedTuple

from optiinfra_assets.models import DeploymentConfig, EngineConfig, KvCacheDtype, Lifecycle, Quantization

# ------------------------------------------------------------------------------------------------ GPUs

# Datatype features a GPU's tensor cores (and vLLM's kernels for them) provide. NVIDIA's follow from the
# compute capability: bf16 from Ampere (8.0, vLLM refuses bf16 below it), native FP8 from Ada/Hopper (8.9),
# and vLLM's INT8 W8A8 (CUTLASS) and 4-bit AWQ/GPTQ kernels from Turing (7.5).
FEATURE_MIN_CAPABILITY: dict[str, tuple[int, int]] = {
    "fp16": (7, 0),
    "bf16": (8, 0),
    "fp8": (8, 9),
    "int8": (7, 5),
    "int4": (7, 5),
}


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_bandwidth_gb_s: float
    fp16_tflops: float  # dense fp16/bf16 tensor-core throughput (no sparsity)
    tdp_w: float
    idle_w: float
    memory_gb: float  # nominal, as sold ("80 GB")
    # Total memory as the driver reports it to the process (torch.cuda.mem_get_info()[1]), which is what vLLM
    # multiplies by gpu_memory_utilization: an "80 GB" H100 reports 79.19 GiB, not 80.
    memory_gib_reported: float
    fp8_tflops: float | None  # dense FP8 tensor throughput; None where there are no FP8 tensor cores
    int8_tops: float | None  # dense INT8 tensor throughput
    compute_capability: tuple[int, int] | None  # NVIDIA only
    features: frozenset[str]
    link_gb_s: float  # per-GPU bandwidth a tensor-parallel all-reduce sees: NVLink/xGMI, else PCIe
    aliases: tuple[str, ...]

    @property
    def supports_fp8(self) -> bool:
        return "fp8" in self.features

    @property
    def nvlink(self) -> bool:
        return self.link_gb_s >= NVLINK_MIN_GB_S

    def gemm_tflops(self, kind: str) -> float:
        """Dense tensor throughput for GEMMs of a kind ("fp16", "fp8", "int8"), fp16 where it lacks one."""
        rate = {"fp8": self.fp8_tflops, "int8": self.int8_tops}.get(kind)
        return rate if rate is not None else self.fp16_tflops


# Bandwidth, dense tensor TFLOPS, compute capability and TDP are vendor datasheet figures (GeForce cards:
# fp16 with fp32 accumulate, what PyTorch and vLLM use). Idle power: an NVML reading on a real H100 80GB HBM3
# gave ~125 W idle against its 700 W limit (~18%); the other GPUs are scaled by the same fraction of their
# TDP. It is an estimate, not a measurement.
_IDLE_FRACTION = 125.0 / 700.0
# Effective per-direction bandwidth of the link an all-reduce crosses: half the NVLink aggregate, or PCIe
# Gen4 x16 (~25 GB/s achieved; Gen3 ~12).
NVLINK_MIN_GB_S = 100.0
PCIE4_GB_S = 25.0
PCIE3_GB_S = 12.0
# Reported totals from vLLM logs that name the GPU: H100 SXM 79.19 GiB (llm-d-planner accuracy logs, vLLM
# 0.19.0), A100 40GB 39.38 GiB (vllm-project/vllm#16570), RTX 3090 23.58 GiB (vllm-project/vllm#10517).
# Marked "est." below: figures seen in logs that do not name the GPU (14.74 GiB for a 15 GB card, 22.07 for
# a 24 GB A10-class one, 79.15 for an 80 GB A100-era card) or nvidia-smi's total less the ~0.45 GiB the
# driver keeps, the gap seen on the H100 (79.65 -> 79.19).


def _capability_features(cc: tuple[int, int]) -> frozenset[str]:
    return frozenset(f for f, need in FEATURE_MIN_CAPABILITY.items() if cc >= need)


def _gpu(
    name: str,
    *,
    memory_gb: float,
    reported_gib: float,
    bandwidth: float,
    tflops: float,
    fp8: float | None,
    int8: float | None,
    cc: tuple[int, int] | None,
    tdp: float,
    link: float,
    aliases: tuple[str, ...] = (),
    features: frozenset[str] | None = None,
) -> GpuSpec:
    if features is None:
        assert cc is not None, name
        features = _capability_features(cc)
    return GpuSpec(
        name=name,
        memory_bandwidth_gb_s=bandwidth,
        fp16_tflops=tflops,
        tdp_w=tdp,
        idle_w=round(tdp * _IDLE_FRACTION, 1),
        memory_gb=memory_gb,
        memory_gib_reported=reported_gib,
        fp8_tflops=fp8,
        int8_tops=int8,
        compute_capability=cc,
        features=features,
        link_gb_s=link,
        aliases=aliases,
    )


# fmt: off
T4 = _gpu("T4", memory_gb=16, reported_gib=14.74, bandwidth=320.0, tflops=65.0, fp8=None, int8=130.0,
          cc=(7, 5), tdp=70.0, link=PCIE3_GB_S, aliases=("tesla t4",))  # est.
V100 = _gpu("V100", memory_gb=16, reported_gib=15.77, bandwidth=900.0, tflops=125.0, fp8=None, int8=None,
            cc=(7, 0), tdp=300.0, link=150.0, aliases=("v100 16gb", "tesla v100", "v100 sxm2 16gb"))  # est.
V100_32 = _gpu("V100 32GB", memory_gb=32, reported_gib=31.74, bandwidth=900.0, tflops=125.0, fp8=None,
               int8=None, cc=(7, 0), tdp=300.0, link=150.0, aliases=("v100 sxm2 32gb",))  # est.
A10G = _gpu("A10G", memory_gb=24, reported_gib=22.07, bandwidth=600.0, tflops=125.0, fp8=None, int8=250.0,
            cc=(8, 6), tdp=300.0, link=PCIE4_GB_S, aliases=("a10", "a10 24gb"))  # est.
L4 = _gpu("L4", memory_gb=24, reported_gib=22.05, bandwidth=300.0, tflops=121.0, fp8=242.5, int8=242.5,
          cc=(8, 9), tdp=72.0, link=PCIE4_GB_S)  # est.
A40 = _gpu("A40", memory_gb=48, reported_gib=44.53, bandwidth=696.0, tflops=149.7, fp8=None, int8=299.3,
           cc=(8, 6), tdp=300.0, link=PCIE4_GB_S)  # est.
L40S = _gpu("L40S", memory_gb=48, reported_gib=44.53, bandwidth=864.0, tflops=362.0, fp8=733.0, int8=733.0,
            cc=(8, 9), tdp=350.0, link=PCIE4_GB_S)  # est.
A6000 = _gpu("RTX A6000", memory_gb=48, reported_gib=47.54, bandwidth=768.0, tflops=154.8, fp8=None,
             int8=309.7, cc=(8, 6), tdp=300.0, link=PCIE4_GB_S, aliases=("a6000",))  # est.
RTX3090 = _gpu("RTX 3090", memory_gb=24, reported_gib=23.58, bandwidth=936.0, tflops=35.6, fp8=None,
               int8=142.0, cc=(8, 6), tdp=350.0, link=PCIE4_GB_S, aliases=("3090",))
RTX4090 = _gpu("RTX 4090", memory_gb=24, reported_gib=23.55, bandwidth=1008.0, tflops=165.2, fp8=330.3,
               int8=660.6, cc=(8, 9), tdp=450.0, link=PCIE4_GB_S, aliases=("4090",))  # est.
A100_40 = _gpu("A100 40GB", memory_gb=40, reported_gib=39.38, bandwidth=1555.0, tflops=312.0, fp8=None,
               int8=624.0, cc=(8, 0), tdp=400.0, link=300.0, aliases=("a100 sxm4 40gb",))
A100_80 = _gpu("A100 80GB", memory_gb=80, reported_gib=79.15, bandwidth=2039.0, tflops=312.0, fp8=None,
               int8=624.0, cc=(8, 0), tdp=400.0, link=300.0, aliases=("a100 sxm4 80gb",))  # est.
H100 = _gpu("H100 SXM", memory_gb=80, reported_gib=79.19, bandwidth=3350.0, tflops=989.0, fp8=1979.0,
            int8=1979.0, cc=(9, 0), tdp=700.0, link=450.0,
            aliases=("h100", "h100 80gb", "h100 sxm5", "h100 80gb hbm3", "h100 sxm 80gb"))
H200 = _gpu("H200", memory_gb=141, reported_gib=139.8, bandwidth=4800.0, tflops=989.0, fp8=1979.0,
            int8=1979.0, cc=(9, 0), tdp=700.0, link=450.0, aliases=("h200 141gb", "h200 sxm"))  # est.
# Workstation and PCIe data-center cards people also serve on (datasheet figures; reported totals est.).
H100_PCIE = _gpu("H100 PCIe", memory_gb=80, reported_gib=79.19, bandwidth=2000.0, tflops=756.0, fp8=1513.0,
                 int8=1513.0, cc=(9, 0), tdp=350.0, link=50.0, aliases=("h100 pcie 80gb",))  # est.
H100_NVL = _gpu("H100 NVL", memory_gb=94, reported_gib=93.1, bandwidth=3900.0, tflops=835.0, fp8=1671.0,
                int8=1671.0, cc=(9, 0), tdp=400.0, link=300.0, aliases=("h100 nvl 94gb",))  # est.
L40 = _gpu("L40", memory_gb=48, reported_gib=44.53, bandwidth=864.0, tflops=181.0, fp8=362.0, int8=362.0,
           cc=(8, 9), tdp=300.0, link=PCIE4_GB_S)  # est.
RTX6000_ADA = _gpu("RTX 6000 Ada", memory_gb=48, reported_gib=47.5, bandwidth=960.0, tflops=364.2,
                   fp8=728.5, int8=728.5, cc=(8, 9), tdp=300.0, link=PCIE4_GB_S,
                   aliases=("rtx 6000 ada generation", "6000 ada"))  # est.
A5000 = _gpu("RTX A5000", memory_gb=24, reported_gib=23.68, bandwidth=768.0, tflops=111.1, fp8=None,
             int8=222.2, cc=(8, 6), tdp=230.0, link=PCIE4_GB_S, aliases=("a5000",))  # est.
A4000 = _gpu("RTX A4000", memory_gb=16, reported_gib=15.72, bandwidth=448.0, tflops=76.7, fp8=None,
             int8=153.4, cc=(8, 6), tdp=140.0, link=PCIE4_GB_S, aliases=("a4000",))  # est.
MI300X = _gpu("MI300X", memory_gb=192, reported_gib=191.5, bandwidth=5300.0, tflops=1307.4, fp8=2614.9,
              int8=2614.9, cc=None, tdp=750.0, link=448.0, aliases=("instinct mi300x",),
              features=frozenset({"fp16", "bf16", "fp8", "int8", "int4"}))  # est.
# fmt: on
GPUS: dict[str, GpuSpec] = {
    g.name: g
    for g in (
        T4,
        V100,
        V100_32,
        A10G,
        L4,
        A40,
        L40S,
        A6000,
        RTX3090,
        RTX4090,
        A100_40,
        A100_80,
        H100,
        H100_PCIE,
        H100_NVL,
        L40,
        RTX6000_ADA,
        A5000,
        A4000,
        H200,
        MI300X,
    )
}

# Vendor words people add to a GPU's name that do not tell GPUs apart.
_NOISE_WORDS = re.compile(r"\b(nvidia|geforce|tesla|amd|radeon)\b")


def _gpu_key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", _NOISE_WORDS.sub("", text.lower()))


_GPU_KEYS: dict[str, GpuSpec] = {
    _gpu_key(alias): g for g in GPUS.values() for alias in (g.name, *g.aliases, g.name.replace("RTX ", ""))
}


def gpu(name: str) -> GpuSpec:
    """A GPU by the name people write: "A100-80GB", "a100 80gb", "Tesla T4", "RTX 4090", "H100"."""
    key = _gpu_key(name)
    found = _GPU_KEYS.get(key) or _GPU_KEYS.get(re.sub(r"(sxm\d?|pcie|hbm\d?e?)", "", key))
    if found is not None:
        return found
    similar = sorted(g.name for g in GPUS.values() if key and _gpu_key(g.name).startswith(key))
    hint = f" (did you mean {' or '.join(similar)}?)" if similar else ""
    raise KeyError(f"unknown GPU {name!r}{hint}; known: {', '.join(GPUS)}")


# -------------------------------------------------------------------------------------- quantization


@dataclass(frozen=True)
class QuantFormat:
    """How a weight format is stored and run: bytes per linear-layer weight (scales included), the tensor
    rate its GEMMs run at, and the GPU feature vLLM's kernels for it need."""

    weight_bytes: float
    gemm: str  # "fp16", "fp8" or "int8"
    feature: str


# 4-bit AWQ/GPTQ checkpoints store, per group of 128 weights, an fp16 scale and a 4-bit zero point.
_INT4_GROUP = 128
QUANT_FORMATS: dict[Quantization, QuantFormat] = {
    Quantization.FP16: QuantFormat(2.0, "fp16", "fp16"),
    Quantization.BF16: QuantFormat(2.0, "fp16", "bf16"),
    Quantization.FP8: QuantFormat(1.0, "fp8", "fp8"),
    Quantization.INT8: QuantFormat(1.0, "int8", "int8"),
    # W4A16: weights dequantized to fp16 inside the GEMM, so the math runs at the fp16 rate.
    Quantization.INT4_AWQ: QuantFormat(0.5 + 2.5 / _INT4_GROUP, "fp16", "int4"),
    Quantization.INT4_GPTQ: QuantFormat(0.5 + 2.5 / _INT4_GROUP, "fp16", "int4"),
}
KV_DTYPE_BYTES: dict[KvCacheDtype, int] = {
    KvCacheDtype.AUTO: 2,
    KvCacheDtype.FP16: 2,
    KvCacheDtype.BF16: 2,
    KvCacheDtype.FP8: 1,
}
_FEATURE_WHY = {
    "bf16": "bfloat16 needs compute capability 8.0 (Ampere) or newer",
    "fp8": "FP8 needs FP8 tensor cores: compute capability 8.9 or newer (L4, L40S, RTX 4090, H100, H200)",
    "int8": "INT8 W8A8 kernels need compute capability 7.5 or newer",
    "int4": "4-bit AWQ/GPTQ kernels need compute capability 7.5 or newer",
    "fp16": "fp16 tensor cores need compute capability 7.0 or newer",
}


def unsupported_feature(g: GpuSpec, feature: str) -> str | None:
    """Why a GPU cannot run a datatype feature, or None when it can."""
    if feature in g.features:
        return None
    has = (
        f"compute capability {g.compute_capability[0]}.{g.compute_capability[1]}"
        if g.compute_capability
        else "none"
    )
    return f"{_FEATURE_WHY[feature]}; {g.name} has {has}"


def quantization_problem(g: GpuSpec, quantization: Quantization) -> str | None:
    return unsupported_feature(g, QUANT_FORMATS[quantization].feature)


def kv_dtype_problem(g: GpuSpec, kv: KvCacheDtype) -> str | None:
    feature = {KvCacheDtype.FP8: "fp8", KvCacheDtype.BF16: "bf16"}.get(kv)
    return None if feature is None else unsupported_feature(g, feature)


def vllm_default_limits(g: GpuSpec) -> tuple[int, int]:
    """(max_num_seqs, max_num_batched_tokens) vLLM V1's OpenAI server picks for a GPU (engine/arg_utils.py
    _set_default_args): 1024 and 8192 on GPUs with >= 70 GiB other than A100, else 256 and 2048."""
    big = g.memory_gib_reported >= 70 and not g.name.startswith("A100")
    return (1024, 8192) if big else (256, 2048)


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
    def interconnect(self) -> str:
        """What a tensor-parallel all-reduce between this type's GPUs crosses: "nvlink" (NVLink/NVSwitch or
        AMD xGMI: p3, p4d, p4de, p5, p5en), "pcie" (g4dn, g5, g6, g6e) or "none" on a one-GPU type."""
        if self.gpu_count == 1:
            return "none"
        return "nvlink" if self.gpu.nvlink else "pcie"

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


# ---------------------------------------------------------------------------------------------- models


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
    max_position_embeddings: int | None = None  # vLLM caches rotary cos/sin for every position
    torch_dtype: str = "bfloat16"  # the checkpoint's dtype (config.json torch_dtype)
    quantization: Quantization | None = None  # a pre-quantized checkpoint's format (quantization_config)
    moe_intermediate_size: int | None = (
        None  # one expert's MLP width, where it differs from intermediate_size
    )
    shared_expert_intermediate_size: int = 0  # always-active shared expert MLP width (Qwen-MoE style)

    @property
    def is_moe(self) -> bool:
        return bool(self.n_expert and self.n_expert_per_token)

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """Bytes of K and V cached per token over all layers."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes

    def attention_params(self) -> int:
        """Q, K, V and output projections of one layer (grouped-query attention)."""
        q_width, kv_width = self.num_attention_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return 2 * self.hidden_size * q_width + 2 * self.hidden_size * kv_width

    def _mlp_params(self, width: int) -> int:
        return (3 if self.gated_mlp else 2) * self.hidden_size * width

    def expert_params(self) -> int:
        """One routed expert's MLP (a dense model's whole MLP)."""
        return self._mlp_params(self.moe_intermediate_size or self.intermediate_size)

    def layer_linear_params(self, active_only: bool = False) -> int:
        """Weights of one layer's matmuls; with active_only, only the experts a token is routed to."""
        if not self.is_moe:
            return self.attention_params() + self.expert_params()
        experts = (self.n_expert_per_token if active_only else self.n_expert) or 1
        shared = self._mlp_params(self.shared_expert_intermediate_size)
        return self.attention_params() + experts * self.expert_params() + shared

    def embedding_params(self) -> int:
        """Input embedding and LM head (one matrix when tied)."""
        return self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)

    def param_count(self) -> int:
        """Parameters from the architecture: embeddings, GQA attention, (MoE) MLP, router, norms."""
        h = self.hidden_size
        router = h * self.n_expert if self.n_expert else 0
        per_layer = self.layer_linear_params() + router + 2 * h
        return self.num_layers * per_layer + self.embedding_params() + h

    def active_param_count(self) -> int:
        """Parameters touched per token: a MoE model runs only n_expert_per_token of its experts."""
        idle = self.layer_linear_params() - self.layer_linear_params(active_only=True)
        return self.param_count() - self.num_layers * idle

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
    max_pos: int | None = None,
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
        max_pos,
    )


# columns: name, HF repo, layers, hidden, attention heads, KV heads, head dim, intermediate, vocab (padded),
# experts, experts per token; max_position_embeddings from the same config.json
_MODELS = (
    _m(
        "Llama-2-7b-hf",
        "meta-llama/Llama-2-7b-hf",
        32,
        4096,
        32,
        32,
        128,
        11008,
        32000,
        None,
        None,
        max_pos=4096,
    ),
    _m(
        "Llama-2-13b-hf",
        "meta-llama/Llama-2-13b-hf",
        40,
        5120,
        40,
        40,
        128,
        13824,
        32000,
        None,
        None,
        max_pos=4096,
    ),
    _m(
        "Llama-2-70b-hf",
        "meta-llama/Llama-2-70b-hf",
        80,
        8192,
        64,
        8,
        128,
        28672,
        32000,
        None,
        None,
        max_pos=4096,
    ),
    _m(
        "Llama-3-8B",
        "meta-llama/Meta-Llama-3-8B",
        32,
        4096,
        32,
        8,
        128,
        14336,
        128256,
        None,
        None,
        max_pos=8192,
    ),
    _m(
        "Llama-3-70B",
        "meta-llama/Meta-Llama-3-70B",
        80,
        8192,
        64,
        8,
        128,
        28672,
        128256,
        None,
        None,
        max_pos=8192,
    ),
    _m(
        "Llama-3.1-8B",
        "meta-llama/Meta-Llama-3.1-8B",
        32,
        4096,
        32,
        8,
        128,
        14336,
        128256,
        None,
        None,
        max_pos=131072,
    ),
    _m(
        "Llama-3.1-70B",
        "meta-llama/Meta-Llama-3.1-70B",
        80,
        8192,
        64,
        8,
        128,
        28672,
        128256,
        None,
        None,
        max_pos=131072,
    ),
    _m(
        "Llama-3.1-405B",
        "meta-llama/Meta-Llama-3.1-405B",
        126,
        16384,
        128,
        8,
        128,
        53248,
        128256,
        None,
        None,
        max_pos=131072,
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
        max_pos=131072,
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
        max_pos=131072,
        tied_embeddings=True,
    ),
    _m(
        "Mistral-7B-v0.1",
        "mistralai/Mistral-7B-v0.1",
        32,
        4096,
        32,
        8,
        128,
        14336,
        32000,
        None,
        None,
        max_pos=32768,
    ),
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
        max_pos=32768,
    ),
    _m(
        "Mistral-7B-v0.3",
        "mistralai/Mistral-7B-v0.3",
        32,
        4096,
        32,
        8,
        128,
        14336,
        32768,
        None,
        None,
        max_pos=32768,
    ),
    _m(
        "Mixtral-8x7B-v0.1",
        "mistralai/Mixtral-8x7B-v0.1",
        32,
        4096,
        32,
        8,
        128,
        14336,
        32000,
        8,
        2,
        max_pos=32768,
    ),
    _m(
        "Mixtral-8x22B-v0.1",
        "mistralai/Mixtral-8x22B-v0.1",
        56,
        6144,
        48,
        8,
        128,
        16384,
        32768,
        8,
        2,
        max_pos=65536,
    ),
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
        max_pos=32768,
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
        max_pos=131072,
        tied_embeddings=True,
    ),
    _m(
        "Qwen2.5-3B",
        "Qwen/Qwen2.5-3B",
        36,
        2048,
        16,
        2,
        128,
        11008,
        151936,
        None,
        None,
        max_pos=32768,
        tied_embeddings=True,
    ),
    _m("Qwen2.5-7B", "Qwen/Qwen2.5-7B", 28, 3584, 28, 4, 128, 18944, 152064, None, None, max_pos=131072),
    _m("Qwen2.5-14B", "Qwen/Qwen2.5-14B", 48, 5120, 40, 8, 128, 13824, 152064, None, None, max_pos=131072),
    _m("Qwen2.5-32B", "Qwen/Qwen2.5-32B", 64, 5120, 40, 8, 128, 27648, 152064, None, None, max_pos=131072),
    _m("Qwen2.5-72B", "Qwen/Qwen2.5-72B", 80, 8192, 64, 8, 128, 29568, 152064, None, None, max_pos=131072),
    _m("Qwen3-8B", "Qwen/Qwen3-8B", 36, 4096, 32, 8, 128, 12288, 151936, None, None, max_pos=40960),
    _m("Qwen3-32B", "Qwen/Qwen3-32B", 64, 5120, 64, 8, 128, 25600, 151936, None, None, max_pos=40960),
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
        max_pos=4096,
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
        max_pos=2048,
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


def slice_type(itype: InstanceType, gpus: int | None) -> InstanceType:
    """What a replica on ``gpus`` whole GPUs of ``itype`` serves and costs like: the type cut down to that many
    GPUs (its own engine on its own GPUs, as consolidation models a shared placement) at that share of its
    prices. ``None`` or every GPU: ``itype`` itself."""
    if gpus is None or gpus == itype.gpu_count:
        return itype
    if not 1 <= gpus < itype.gpu_count:
        raise ValueError(
            f"gpus_per_replica: {gpus} is not a slice of the {itype.gpu_count} GPUs of {itype.name}"
        )
    share = gpus / itype.gpu_count

    def part(price: float | None) -> float | None:
        return None if price is None else price * share

    return replace(
        itype,
        gpu_count=gpus,
        ondemand_usd_hour=itype.ondemand_usd_hour * share,
        reserved_1y_usd_hour=part(itype.reserved_1y_usd_hour),
        spot_usd_hour=part(itype.spot_usd_hour),
    )


def replica_type(config: DeploymentConfig) -> InstanceType:
    """What one replica of ``config`` runs on: its instance type, or its slice of a shared host."""
    return slice_type(instance_type(config.instance_type), config.gpus_per_replica)


def model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None


def default_engine(g: GpuSpec, gpus: int, **engine: object) -> EngineConfig:
    """vLLM's defaults on ``gpus`` GPUs of a kind, tensor parallel over all of them: its dtype "auto" (bf16,
    fp16 where the GPU has no bf16) and its per-GPU scheduler limits; ``engine`` overrides any field."""
    max_num_seqs, max_num_batched_tokens = vllm_default_limits(g)
    dtype = Quantization.BF16 if "bf16" in g.features else Quantization.FP16
    settings: dict[str, object] = {
        "tensor_parallel_size": gpus,
        "quantization": dtype,
        "max_num_seqs": max_num_seqs,
        "max_num_batched_tokens": max_num_batched_tokens,
    }
    return EngineConfig.model_validate(settings | engine)


def default_config(instance_type_name: str, replicas: int, **engine: object) -> DeploymentConfig:
    """A deployment of ``replicas`` on-demand instances of a type, tensor parallel over all its GPUs (one
    replica per instance, as vLLM is usually deployed), with vLLM's defaults otherwise."""
    itype = instance_type(instance_type_name)
    return DeploymentConfig(
        instance_type=itype.name,
        on_demand_replicas=replicas,
        max_replicas=max(64, replicas),
        engine=default_engine(itype.gpu, itype.gpu_count, **engine),
    )


# ------------------------------------------------------------------------------- commitments (issue 7)

# Standard reserved instances and compute savings plans, us-east-1 Linux, shared tenancy, as effective hourly
# rates (an upfront fee amortized over the term, 8760 h a year). The published rates below are transcribed
# from a file generated from AWS's own price list files (the meteredUnitMaps behind the EC2 Reserved
# Instance and Savings Plans pricing pages); its on-demand prices and 1-year no-upfront rates equal the
# catalog's columns above for every type it lists. AWS publishes no reserved instance of p5en.48xlarge and
# only 3-year ones of p5. A type missing from the table (p3: the source skipped it) falls back to estimates,
# labelled as such on every offer: its reserved options scaled from its 1-year no-upfront rate by AWS's
# typical payment-option ratios (none where it has no such rate), its savings plans at the typical discount
# of the GPU families.
COMMITMENT_RATES_SOURCE = (
    "addisonj/pricesim@cbdb505146ff2c34ea44b6b5deaf6083643d5b5f src/catalog/aws/ec2.gen.ts "
    "(AWS price list, us-east-1 Linux shared tenancy, retrieved 2026-09-24)"
)
ESTIMATED_RESERVED_SOURCE = "estimated from the 1y no-upfront rate by AWS's typical payment-option ratios"
ESTIMATED_SAVINGS_PLAN_SOURCE = "estimated at AWS's typical compute savings plan discount of its GPU families"


@dataclass(frozen=True)
class CommitmentOption:
    """One way to commit: a term and a payment option. ``fraction_of_on_demand`` is the typical effective
    rate relative to on-demand, used only for a type without published rates."""

    name: str  # "ri-1y-partial-upfront", "sp-3y-no-upfront"
    kind: str  # "reserved_instance" (one instance of a type) or "savings_plan" ($/h of compute spend)
    term_years: int
    payment: str  # "no_upfront", "partial_upfront", "all_upfront"
    fraction_of_on_demand: float  # typical effective $/h over the term (upfront amortized) / on-demand $/h
    upfront_share: float  # share of the term's cost paid at purchase (partial: about half)

    @property
    def term_hours(self) -> float:
        return self.term_years * 8760.0


RI_1Y_NO_UPFRONT_FRACTION = 0.63  # the reference the estimated reserved options are scaled from
RESERVED_OPTIONS: tuple[CommitmentOption, ...] = (
    CommitmentOption("ri-1y-no-upfront", "reserved_instance", 1, "no_upfront", 0.63, 0.0),
    CommitmentOption("ri-1y-partial-upfront", "reserved_instance", 1, "partial_upfront", 0.60, 0.5),
    CommitmentOption("ri-1y-all-upfront", "reserved_instance", 1, "all_upfront", 0.59, 1.0),
    CommitmentOption("ri-3y-no-upfront", "reserved_instance", 3, "no_upfront", 0.45, 0.0),
    CommitmentOption("ri-3y-partial-upfront", "reserved_instance", 3, "partial_upfront", 0.42, 0.5),
    CommitmentOption("ri-3y-all-upfront", "reserved_instance", 3, "all_upfront", 0.39, 1.0),
)
SAVINGS_PLAN_OPTIONS: tuple[CommitmentOption, ...] = (
    CommitmentOption("sp-1y-no-upfront", "savings_plan", 1, "no_upfront", 0.76, 0.0),
    CommitmentOption("sp-3y-no-upfront", "savings_plan", 3, "no_upfront", 0.55, 0.0),
)


class PublishedRates(NamedTuple):
    """A type's published effective $/h: of each of RESERVED_OPTIONS in order (None: AWS offers no such
    reserved instance) and of each of SAVINGS_PLAN_OPTIONS in order."""

    reserved: tuple[float | None, ...]
    savings_plans: tuple[float, ...]


# per type: ((reserved $/h of RESERVED_OPTIONS), (savings plan $/h of SAVINGS_PLAN_OPTIONS)), from
# COMMITMENT_RATES_SOURCE with the six significant digits it gives
_PUBLISHED: dict[str, tuple[tuple[float | None, ...], tuple[float, ...]]] = {
    "g4dn.xlarge": ((0.331, 0.315763, 0.309247, 0.227, 0.210213, 0.197793), (0.381, 0.273)),
    "g4dn.2xlarge": ((0.474, 0.451571, 0.442123, 0.325, 0.300419, 0.282763), (0.545, 0.39)),
    "g4dn.4xlarge": ((0.759, 0.722187, 0.707991, 0.52, 0.481791, 0.452702), (0.872, 0.624)),
    "g4dn.8xlarge": ((1.371, 1.30585, 1.27945, 0.94, 0.870198, 0.818189), (1.577, 1.128)),
    "g4dn.12xlarge": ((2.465, 2.34763, 2.30023, 1.69, 1.56438, 1.47093), (2.834, 2.028)),
    "g4dn.16xlarge": ((2.742, 2.61159, 2.55902, 1.88, 1.7404, 1.63634), (3.153, 2.256)),
    "g4dn.metal": ((4.929, 4.69415, 4.60046, 3.38, 3.1298, 2.94182), (5.668, 4.056)),
    "g5.xlarge": ((0.63378, 0.603626, 0.591553, 0.43459, 0.402418, 0.378272), (0.79223, 0.54324)),
    "g5.2xlarge": ((0.76356, 0.727184, 0.712671, 0.52358, 0.48479, 0.455708), (0.95445, 0.65448)),
    "g5.4xlarge": ((1.02312, 0.974415, 0.954909, 0.70157, 0.64961, 0.610616), (1.2789, 0.87696)),
    "g5.8xlarge": ((1.54224, 1.46876, 1.43938, 1.05754, 0.979212, 0.920434), (1.9278, 1.32192)),
    "g5.12xlarge": ((3.57336, 3.4032, 3.33516, 2.4503, 2.2688, 2.13269), (4.4667, 3.06288)),
    "g5.16xlarge": ((2.58048, 2.45757, 2.40845, 1.76947, 1.63842, 1.54011), (3.2256, 2.21184)),
    "g5.24xlarge": ((5.13072, 4.88635, 4.7887, 3.51821, 3.25761, 3.06214), (6.4134, 4.39776)),
    "g5.48xlarge": ((10.2614, 9.77282, 9.5774, 7.03642, 6.51521, 6.12428), (12.8268, 8.79552)),
    "g6.xlarge": ((0.52392, 0.499033, 0.489041, 0.3694, 0.342025, 0.321499), (0.65491, 0.46175)),
    "g6.2xlarge": ((0.63642, 0.606142, 0.59395, 0.44872, 0.415465, 0.390563), (0.79552, 0.5609)),
    "g6.4xlarge": ((0.8614, 0.82035, 0.803995, 0.60735, 0.562344, 0.528615), (1.07675, 0.75919)),
    "g6.8xlarge": ((1.31137, 1.24889, 1.22397, 0.92461, 0.856104, 0.804756), (1.63922, 1.15576)),
    "g6.12xlarge": ((2.99564, 2.85298, 2.79589, 2.11213, 1.95569, 1.83836), (3.74455, 2.64017)),
    "g6.16xlarge": ((2.21132, 2.10598, 2.06393, 1.55913, 1.44362, 1.35704), (2.76415, 1.94891)),
    "g6.24xlarge": ((4.34556, 4.1386, 4.05582, 3.06392, 2.83697, 2.66674), (5.43194, 3.8299)),
    "g6.48xlarge": ((8.69111, 8.2772, 8.11176, 6.12783, 5.67391, 5.33349), (10.86389, 7.65979)),
    "g6e.xlarge": ((1.17243, 1.11663, 1.09429, 0.80395, 0.744384, 0.699734), (1.40692, 0.96474)),
    "g6e.2xlarge": ((1.41251, 1.34522, 1.31838, 0.96858, 0.896822, 0.843037), (1.69501, 1.16229)),
    "g6e.4xlarge": ((1.89267, 1.80253, 1.76644, 1.29783, 1.20169, 1.1296), (2.2712, 1.5574)),
    "g6e.8xlarge": ((2.85299, 2.71713, 2.66279, 1.95634, 1.81142, 1.70274), (3.42359, 2.3476)),
    "g6e.12xlarge": ((6.61036, 6.29562, 6.16963, 4.53282, 4.19705, 3.94524), (7.93243, 5.43938)),
    "g6e.16xlarge": ((4.77363, 4.54633, 4.45537, 3.27335, 3.03089, 2.84901), (5.72836, 3.92802)),
    "g6e.24xlarge": ((9.49132, 9.03931, 8.85856, 6.50834, 6.02625, 5.66465), (11.38959, 7.81)),
    "g6e.48xlarge": ((18.9826, 18.0787, 17.7171, 13.0167, 12.0525, 11.3293), (22.77917, 15.62)),
    "p4d.24xlarge": ((13.9211, 13.2582, 12.993, 9.37422, 8.67983, 8.15906), (16.7053123, 14.9987536)),
    "p4de.24xlarge": ((17.4014, 16.5728, 16.2413, 11.7178, 10.8498, 10.1988), (20.8816385, 18.748442)),
    "p5.4xlarge": ((None, None, None, 2.97216, 2.75199, 2.58687), (5.418, 5.05267)),
    "p5.48xlarge": ((None, None, None, 23.7773, 22.016, 20.6951), (43.344, 40.42138)),
    "p5en.48xlarge": ((None, None, None, None, None, None), (49.8456, 46.52467)),
}
PUBLISHED_COMMITMENT_RATES: dict[str, PublishedRates] = {
    name: PublishedRates(reserved, plans) for name, (reserved, plans) in _PUBLISHED.items()
}


@dataclass(frozen=True)
class ReservedOffer:
    """A reserved-instance option priced for one instance type, with where its rate comes from."""

    instance_type: str
    option: CommitmentOption
    effective_usd_hour: float  # what one reserved instance costs per hour of its term, upfront included
    upfront_usd: float
    recurring_usd_hour: float
    rate_source: str  # COMMITMENT_RATES_SOURCE or ESTIMATED_RESERVED_SOURCE


def _offer(itype: InstanceType, option: CommitmentOption, rate: float, source: str) -> ReservedOffer:
    # Sources give the effective rate only: an all-upfront term is all upfront, a partial-upfront one is split
    # about half and half (as AWS prices it: m5.large 1y, $252 upfront and $0.029/h).
    upfront = rate * option.upfront_share * option.term_hours
    return ReservedOffer(itype.name, option, rate, upfront, rate * (1.0 - option.upfront_share), source)


def _host_share(itype: InstanceType) -> float:
    """The share of its catalog type's prices a type pays: under 1 for a slice of a host (slice_type)."""
    return itype.ondemand_usd_hour / INSTANCE_TYPES[itype.name].ondemand_usd_hour


def reserved_offers(itype: InstanceType) -> list[ReservedOffer]:
    """The standard reserved-instance options of a type: its published ones, else estimates from its 1-year
    no-upfront rate (none where the catalog has no such rate)."""
    published = PUBLISHED_COMMITMENT_RATES.get(itype.name)
    if published is not None:
        share = _host_share(itype)
        return [
            _offer(itype, option, rate * share, COMMITMENT_RATES_SOURCE)
            for option, rate in zip(RESERVED_OPTIONS, published.reserved, strict=True)
            if rate is not None
        ]
    if itype.reserved_1y_usd_hour is None:
        return []
    return [
        _offer(
            itype,
            option,
            itype.reserved_1y_usd_hour * option.fraction_of_on_demand / RI_1Y_NO_UPFRONT_FRACTION,
            ESTIMATED_RESERVED_SOURCE,
        )
        for option in RESERVED_OPTIONS
    ]


@dataclass(frozen=True)
class SavingsPlanRate:
    """What a compute savings plan charges for an hour of one instance type, relative to on-demand."""

    instance_type: str
    option: CommitmentOption
    fraction_of_on_demand: float
    rate_source: str  # COMMITMENT_RATES_SOURCE or ESTIMATED_SAVINGS_PLAN_SOURCE


def savings_plan_rate(option: CommitmentOption, itype: InstanceType) -> SavingsPlanRate:
    """A savings plan's rate for a type: published, else the typical discount."""
    published = PUBLISHED_COMMITMENT_RATES.get(itype.name)
    if published is None:
        return SavingsPlanRate(
            itype.name, option, option.fraction_of_on_demand, ESTIMATED_SAVINGS_PLAN_SOURCE
        )
    names = [plan.name for plan in SAVINGS_PLAN_OPTIONS]
    if option.name not in names:
        raise KeyError(f"unknown savings plan option {option.name!r}; known: {', '.join(names)}")
    full_type = INSTANCE_TYPES[itype.name]  # a slice of a host pays the same fraction as the whole host
    rate = published.savings_plans[names.index(option.name)]
    return SavingsPlanRate(itype.name, option, rate / full_type.ondemand_usd_hour, COMMITMENT_RATES_SOURCE)


def config_usd_hour(config: DeploymentConfig) -> float:
    """What a config costs per hour at catalog prices (on-demand and spot replicas at their prices; a slice of a
    shared host at its share of the host's)."""
    itype = replica_type(config)
    return sum(
        config.replicas_on(lc) * itype.price_usd_hour(lc) for lc in Lifecycle if config.replicas_on(lc)
    )
