"""The catalog's facts and the serving physics built on them."""

from __future__ import annotations

import numpy as np
import pytest

from optiinfra_assets.catalog import GPUS, INSTANCE_TYPES, MODELS, default_config, gpu, instance_type, model
from optiinfra_assets.models import Lifecycle, Quantization
from optiinfra_assets.serving import GIB, load_point, load_points, serving_capacity

FAMILIES = {"g4dn", "g5", "g6", "g6e", "p4d", "p4de", "p5", "p5en", "p3"}


def test_catalog_covers_the_gpu_families_and_all_models() -> None:
    assert {t.family for t in INSTANCE_TYPES.values()} == FAMILIES
    assert len(INSTANCE_TYPES) == 39
    assert len(MODELS) == 26


def test_instance_type_facts() -> None:
    g6e = instance_type("g6e.xlarge")
    assert (g6e.vcpu, g6e.memory_gib, g6e.gpu.name, g6e.gpu_count) == (4, 32.0, "L40S", 1)
    assert g6e.ondemand_usd_hour == 1.861 and g6e.spot_usd_hour == 0.7816
    assert g6e.spot_interrupt_rate == (0.05, 0.10)
    p4de = instance_type("p4de.24xlarge")
    assert p4de.gpu_memory_gib_total == 640.0 and p4de.gpu.name == "A100 80GB"
    assert p4de.spot_usd_hour == 9.3119  # the observed average wins over the advisor estimate
    assert instance_type("p5.48xlarge").spot_interrupt_rate == (0.20, 0.30)
    assert instance_type("g5.xlarge").gpu_memory_gib_per_gpu == 22.35


def test_prices_by_lifecycle() -> None:
    g5 = instance_type("g5.2xlarge")
    assert g5.price_usd_hour(Lifecycle.ON_DEMAND) == 1.212
    assert g5.price_usd_hour(Lifecycle.SPOT) == 0.509
    with pytest.raises(ValueError, match=r"p5\.4xlarge"):
        instance_type("p5.4xlarge").price_usd_hour(Lifecycle.SPOT)


def test_unknown_names_say_what_is_known() -> None:
    with pytest.raises(KeyError, match=r"unknown instance type 'x1\.huge'; known: g4dn\.xlarge"):
        instance_type("x1.huge")
    with pytest.raises(KeyError, match="unknown model 'GPT-5'"):
        model("GPT-5")


# (model, KV bytes/token at fp16, at fp8) from the public config transcriptions
KV_ROWS = [
    ("Llama-2-7b-hf", 524288, 262144),
    ("Llama-3.1-8B", 131072, 65536),
    ("Llama-3.1-405B", 516096, 258048),
    ("Qwen2.5-0.5B", 12288, 6144),
    ("Mixtral-8x22B-v0.1", 229376, 114688),
    ("Phi-3-mini-4k-instruct", 393216, 196608),
    ("falcon-7b", 8192, 4096),
]


@pytest.mark.parametrize(("name", "fp16", "fp8"), KV_ROWS)
def test_kv_bytes_per_token_match_the_public_figures(name: str, fp16: int, fp8: int) -> None:
    assert model(name).kv_bytes_per_token() == fp16
    assert model(name).kv_bytes_per_token(dtype_bytes=1) == fp8


@pytest.mark.parametrize(
    ("name", "params"), [("Llama-3.1-8B", 8.0e9), ("Llama-3.1-70B", 70.6e9), ("Mixtral-8x7B-v0.1", 46.7e9)]
)
def test_param_count_from_the_architecture(name: str, params: float) -> None:
    assert model(name).param_count() == pytest.approx(params, rel=0.03)
    assert model(name).weight_bytes() == 2 * model(name).param_count()


def test_llama_8b_kv_tokens_on_g6e_xlarge() -> None:
    cap = serving_capacity(model("Llama-3.1-8B"), instance_type("g6e.xlarge"))
    # By hand: 44.53 GiB reported x 0.9 = 40.08 GiB usable; weights 8.03e9 x 2 B = 14.96 GiB (+0.03 GiB of
    # rotary cache); activations ~0.8 GiB and 0.25 GiB non-torch -> ~24.3 GiB for KV at 128 KiB/token.
    assert cap.fits and cap.tensor_parallel == 1
    assert 180_000 <= cap.kv_cache_tokens <= 200_000
    assert cap.kv_cache_tokens % 16 == 0
    assert cap.max_num_seqs == 256  # 44.7 GiB < 70 GiB
    assert cap.max_batch == cap.kv_cache_tokens // (1024 + 128)
    assert cap.weight_gib_per_gpu == pytest.approx(8.03e9 * 2 / GIB, rel=0.01)


def test_big_gpus_get_vllm_default_max_num_seqs() -> None:
    assert serving_capacity(model("Llama-3.1-8B"), instance_type("p5.4xlarge")).max_num_seqs == 1024
    assert serving_capacity(model("Llama-3.1-70B"), instance_type("p4de.24xlarge")).max_num_seqs == 256


def test_70b_does_not_fit_on_one_a10g() -> None:
    cap = serving_capacity(model("Llama-3.1-70B"), instance_type("g5.xlarge"))
    assert not cap.fits
    assert "Llama-3.1-70B" in cap.reason and "g5.xlarge" in cap.reason
    with pytest.raises(ValueError, match="does not fit"):
        load_point(cap, instance_type("g5.xlarge"), 1.0)


def test_heads_must_divide_across_tensor_parallel_gpus() -> None:
    cap = serving_capacity(model("falcon-7b"), instance_type("g5.48xlarge"))
    assert not cap.fits and "divisible" in cap.reason


def test_h100_is_faster_than_a10g() -> None:
    llama = model("Llama-3.1-8B")
    h100 = serving_capacity(llama, instance_type("p5.4xlarge"))
    a10g = serving_capacity(llama, instance_type("g5.xlarge"))
    assert h100.max_requests_per_s > 5 * a10g.max_requests_per_s
    assert h100.prefill_ms < a10g.prefill_ms
    at_1 = (
        load_point(h100, instance_type("p5.4xlarge"), 1.0),
        load_point(a10g, instance_type("g5.xlarge"), 1.0),
    )
    assert at_1[0].itl_ms < at_1[1].itl_ms and at_1[0].latency_p95_ms < at_1[1].latency_p95_ms


def test_more_load_means_higher_latency_and_everything_stays_sane() -> None:
    itype = instance_type("g6e.xlarge")
    cap = serving_capacity(model("Llama-3.1-8B"), itype)
    rates = np.linspace(0.0, 3.0 * cap.max_requests_per_s, 400)
    pts = load_points(cap, itype, rates)
    for name in ("ttft_ms", "itl_ms", "latency_p50_ms", "latency_p95_ms", "queue_length", "power_w"):
        assert np.all(np.diff(pts[name]) >= 0), name
        assert np.all(np.isfinite(pts[name])), name
    assert np.all(pts["latency_p50_ms"] <= pts["latency_p95_ms"])
    assert np.all(pts["latency_p95_ms"] <= pts["latency_p99_ms"])
    assert np.all((pts["kv_cache_usage"] >= 0) & (pts["kv_cache_usage"] <= 1))
    assert np.all((pts["gpu_util_pct"] >= 0) & (pts["gpu_util_pct"] <= 100))
    assert pts["power_w"][0] == pytest.approx(itype.gpu.idle_w)
    assert pts["power_w"][-1] == pytest.approx(itype.gpu.tdp_w)
    # Served tokens saturate at capacity; overload shows as a long (finite) queue, not more throughput.
    assert pts["tokens_per_s"][-1] == pytest.approx(cap.max_requests_per_s * 256)
    assert pts["queue_length"][-1] > 100


def test_fewer_replicas_for_the_same_load_means_higher_p95() -> None:
    itype = instance_type("g6e.xlarge")
    cap = serving_capacity(model("Llama-3.1-8B"), itype)
    total = 2.0 * cap.max_requests_per_s
    p95 = [load_point(cap, itype, total / n).latency_p95_ms for n in (4, 3, 2)]
    assert p95[0] < p95[1] < p95[2]


def test_load_point_is_the_vectorized_math() -> None:
    itype = instance_type("p4de.24xlarge")
    cap = serving_capacity(model("Llama-3.1-70B"), itype)
    one = load_point(cap, itype, 3.0)
    many = load_points(cap, itype, np.array([1.0, 3.0]))
    assert one.latency_p95_ms == many["latency_p95_ms"][1]
    assert one.utilization == pytest.approx(3.0 / cap.max_requests_per_s)


@pytest.mark.parametrize(
    ("written", "name"),
    [
        ("A100-80GB", "A100 80GB"),
        ("a100 80gb", "A100 80GB"),
        ("NVIDIA A100-SXM4-80GB", "A100 80GB"),
        ("H100", "H100 SXM"),
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("Tesla T4", "T4"),
        ("RTX 4090", "RTX 4090"),
        ("GeForce RTX 3090", "RTX 3090"),
        ("A6000", "RTX A6000"),
        ("l40s", "L40S"),
        ("MI300X", "MI300X"),
    ],
)
def test_gpus_by_the_names_people_write(written: str, name: str) -> None:
    assert gpu(written).name == name


def test_ambiguous_or_unknown_gpu_says_what_is_known() -> None:
    with pytest.raises(KeyError, match=r"did you mean A100 40GB or A100 80GB"):
        gpu("A100")
    with pytest.raises(KeyError, match=r"unknown GPU 'B300'; known: T4"):
        gpu("B300")


def test_instance_types_use_the_gpu_table() -> None:
    assert all(t.gpu is GPUS[t.gpu.name] for t in INSTANCE_TYPES.values())
    h100 = instance_type("p5.4xlarge").gpu
    # nominal vs what the driver reports (the figure vLLM multiplies by gpu_memory_utilization)
    assert (h100.memory_gb, h100.memory_gib_reported) == (80, 79.19)
    assert h100.supports_fp8 and not instance_type("p4de.24xlarge").gpu.supports_fp8
    assert instance_type("g6.xlarge").gpu.supports_fp8  # L4 is Ada


def test_default_config_follows_vllms_per_gpu_defaults() -> None:
    h100 = default_config("p5.48xlarge", 2).engine
    assert (h100.tensor_parallel_size, h100.max_num_seqs, h100.max_num_batched_tokens) == (8, 1024, 8192)
    a100 = default_config("p4de.24xlarge", 1).engine  # vLLM leaves A100s at the small defaults
    assert (a100.max_num_seqs, a100.max_num_batched_tokens) == (256, 2048)
    # T4 and V100 have no bf16: vLLM's "auto" dtype falls back to fp16
    assert default_config("g4dn.xlarge", 1).engine.quantization == Quantization.FP16
    assert default_config("g6e.xlarge", 1, max_model_len=4096).engine.max_model_len == 4096
