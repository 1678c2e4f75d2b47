"""The serving model's response to every engine setting, its calibration against real vLLM logs, config
validation, the quality cost of quantization, and config.json parsing."""

from __future__ import annotations

from typing import Any

import pytest

from optiinfra_assets.catalog import default_config, gpu, instance_type, model
from optiinfra_assets.hf_config import parse_hf_config
from optiinfra_assets.models import DeploymentConfig, EngineConfig, KvCacheDtype, Quantization
from optiinfra_assets.serving import (
    VLLM_0_10,
    ConfigError,
    ServingProfile,
    Workload,
    config_problems,
    load_point,
    memory_plan,
    quality_factor,
    serving_capacity,
    validate_config,
    vllm_release,
)

H100_LOGGED = EngineConfig(
    gpu_memory_utilization=0.95, max_model_len=16384, max_num_seqs=1024, max_num_batched_tokens=8192
)
LLAMA_70B_FP8: dict[str, Any] = {
    "model_type": "llama",
    "num_hidden_layers": 80,
    "hidden_size": 8192,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "intermediate_size": 28672,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "tie_word_embeddings": False,
    "quantization_config": {
        "quant_method": "compressed-tensors",
        "config_groups": {"group_0": {"weights": {"num_bits": 8, "type": "float"}}},
    },
}


def config(itype: str, **engine: object) -> DeploymentConfig:
    return default_config(itype, 1, **engine)


# ------------------------------------------------------------------ calibration against logged vLLM starts


def test_llama_8b_on_h100_matches_the_logged_vllm_019_start() -> None:
    # vLLM 0.19.0 logged: weights 14.99 GiB, torch peak 1.89, non-torch 0.25, 58.11 GiB and 476,016 tokens
    # (llm-d-planner accuracy logs, meta-llama-llama-3-1-8b--h100-80gb--tp1pp1dp1--16384.log).
    plan = memory_plan(model("Llama-3.1-8B"), gpu("H100"), H100_LOGGED)
    assert plan.total_gib == 79.19 and plan.requested_gib == pytest.approx(75.23, abs=0.01)
    assert plan.weights_gib == pytest.approx(14.99, abs=0.02)
    assert plan.kv_cache_tokens == pytest.approx(476_016, rel=0.005)
    assert plan.kv_cache_tokens == plan.num_gpu_blocks * 16
    assert plan.max_concurrency == pytest.approx(29.05, abs=0.2)


def test_fp8_70b_at_tp2_matches_the_logged_start() -> None:
    # RedHatAI/Llama-3.3-70B-Instruct-FP8-dynamic, TP 2, vLLM 0.19.0: weights 33.88 GiB/GPU, 244,304 tokens.
    spec = parse_hf_config(LLAMA_70B_FP8, "Llama-3.3-70B-FP8")
    engine = H100_LOGGED.model_copy(update={"tensor_parallel_size": 2, "max_model_len": 8192})
    plan = memory_plan(spec, gpu("H100"), engine)
    assert plan.weights_gib == pytest.approx(33.88, abs=0.05)
    assert plan.kv_cache_tokens == pytest.approx(244_304, rel=0.01)


def test_older_release_profiles_the_sampler_bigger() -> None:
    # vLLM <= 0.16 logged 4.76 GiB of torch peak and 51.38 GiB of KV for the same model at gmu 0.9.
    engine = H100_LOGGED.model_copy(update={"gpu_memory_utilization": 0.9, "max_model_len": 16000})
    plan = memory_plan(model("Llama-3.1-8B"), gpu("H100"), engine, gpu_memory_gib=79.18, release=VLLM_0_10)
    assert plan.activation_gib == pytest.approx(4.76, abs=0.05)
    assert plan.kv_gib == pytest.approx(51.38, abs=0.3)
    assert vllm_release("0.19.0").version == "0.18" and vllm_release("0.12.1") is VLLM_0_10
    # from v0.21 the CUDA graphs come out of the KV cache's budget
    newer = memory_plan(model("Llama-3.1-8B"), gpu("H100"), H100_LOGGED, release=vllm_release("0.21.0"))
    assert newer.kv_gib == pytest.approx(plan_with().kv_gib - newer.cuda_graph_gib)


# ------------------------------------------------------------------------- every engine field matters


def plan_with(**update: object):
    return memory_plan(model("Llama-3.1-8B"), gpu("H100"), H100_LOGGED.model_copy(update=update))


def test_memory_responds_to_each_engine_field() -> None:
    base = plan_with()
    assert plan_with(gpu_memory_utilization=0.8).kv_cache_tokens < base.kv_cache_tokens
    assert plan_with(kv_cache_dtype=KvCacheDtype.FP8).kv_cache_tokens == pytest.approx(
        2 * base.kv_cache_tokens, rel=0.001
    )
    assert plan_with(quantization=Quantization.FP8).weights_gib < 0.6 * base.weights_gib
    assert (
        plan_with(quantization=Quantization.INT4_AWQ).weights_gib
        < plan_with(quantization=Quantization.FP8).weights_gib
    )
    # the profiling run's peak grows with the sampler's requests and the forward pass's tokens
    assert plan_with(max_num_seqs=256).activation_gib < base.activation_gib
    assert plan_with(max_num_seqs=256, max_num_batched_tokens=65536).activation_gib > base.activation_gib
    tp2 = memory_plan(
        model("Llama-3.1-8B"), gpu("H100"), H100_LOGGED.model_copy(update={"tensor_parallel_size": 2})
    )
    assert tp2.weights_gib == pytest.approx(base.weights_gib / 2, rel=0.01)
    assert tp2.non_torch_gib > base.non_torch_gib  # NCCL and all-reduce buffers


def test_int4_fits_where_bf16_does_not() -> None:
    bf16, int4 = config("p5.4xlarge"), config("p5.4xlarge", quantization="int4-awq")
    with pytest.raises(ConfigError) as excinfo:
        validate_config("Llama-3.1-70B", bf16)
    assert excinfo.value.field == "instance_type" and "131." in str(excinfo.value)
    validate_config("Llama-3.1-70B", int4)
    cap = serving_capacity(model("Llama-3.1-70B"), instance_type("p5.4xlarge"), int4.engine)
    assert cap.fits and 35 < cap.weight_gib_per_gpu < 40
    assert not serving_capacity(model("Llama-3.1-70B"), instance_type("p5.4xlarge"), bf16.engine).fits


def test_timing_responds_to_quantization_batch_limits_and_prefix_caching() -> None:
    h100, llama = instance_type("p5.4xlarge"), model("Llama-3.1-8B")
    base = serving_capacity(llama, h100)
    fp8 = serving_capacity(llama, h100, config("p5.4xlarge", quantization="fp8").engine)
    assert fp8.decode_base_ms < 0.6 * base.decode_base_ms  # half the bytes per step
    assert fp8.decode_compute_ms_per_seq < base.decode_compute_ms_per_seq  # FP8 tensor cores
    capped = serving_capacity(llama, h100, config("p5.4xlarge", max_num_seqs=32).engine)
    assert capped.max_batch == 32 and capped.max_requests_per_s < base.max_requests_per_s
    reuse = Workload(prefix_cache_hit_rate=0.6)
    cached = serving_capacity(llama, h100, None, reuse)
    uncached = serving_capacity(llama, h100, config("p5.4xlarge", enable_prefix_caching=False).engine, reuse)
    assert cached.prefill_ms < 0.5 * uncached.prefill_ms and cached.prefix_hit_rate == pytest.approx(0.6)
    # small chunks: more steps before the first token
    long_prompt = Workload(avg_prompt_tokens=8000)
    chunked = serving_capacity(
        llama, h100, config("p5.4xlarge", max_num_batched_tokens=1024).engine, long_prompt
    )
    whole = serving_capacity(
        llama, h100, config("p5.4xlarge", max_num_batched_tokens=8192).engine, long_prompt
    )
    assert (chunked.prefill_chunks, whole.prefill_chunks) == (8, 1)
    assert load_point(chunked, h100, 0.1).ttft_ms > load_point(whole, h100, 0.1).ttft_ms


def test_kv_offload_keeps_a_large_prefix_working_set_cached() -> None:
    l4, llama = instance_type("g6.xlarge"), model("Llama-3.1-8B")
    workload = Workload(prefix_cache_hit_rate=0.8, prefix_working_set_tokens=2_000_000)
    plain = serving_capacity(llama, l4, None, workload)
    offload = serving_capacity(llama, l4, config("g6.xlarge", kv_offload_gib=512).engine, workload)
    assert offload.kv_offload_tokens > 3_000_000
    assert offload.prefix_hit_rate > 0.75 > plain.prefix_hit_rate
    assert offload.prefill_ms < plain.prefill_ms


def test_pipeline_parallel_spreads_layers_and_costs_latency() -> None:
    p4de, llama = instance_type("p4de.24xlarge"), model("Llama-3.1-70B")
    tp8 = serving_capacity(llama, p4de)
    pp2 = serving_capacity(
        llama, p4de, config("p4de.24xlarge", tensor_parallel_size=4, pipeline_parallel_size=2).engine
    )
    assert pp2.fits and pp2.pipeline_parallel == 2
    assert load_point(pp2, p4de, 0.5).itl_ms > load_point(tp8, p4de, 0.5).itl_ms


def test_the_pre_engine_call_still_works() -> None:
    h100, llama = instance_type("p5.4xlarge"), model("Llama-3.1-8B")
    assert serving_capacity(llama, h100, ServingProfile()) == serving_capacity(llama, h100)


# -------------------------------------------------------------------------------------- validation


def test_fp8_is_rejected_on_a100_naming_the_field() -> None:
    with pytest.raises(ConfigError) as excinfo:
        validate_config("Llama-3.1-8B", config("p4de.24xlarge", quantization="fp8"))
    err = excinfo.value
    assert (err.field, err.value) == ("engine.quantization", "fp8")
    assert "A100 80GB" in str(err) and "8.9" in str(err)
    validate_config("Llama-3.1-8B", config("g6e.48xlarge", quantization="fp8"))  # L40S has FP8
    with pytest.raises(ConfigError, match=r"engine.kv_cache_dtype=fp8"):
        validate_config("Llama-3.1-8B", config("g5.xlarge", kv_cache_dtype="fp8"))


def test_tp3_is_rejected_on_32_heads() -> None:
    with pytest.raises(ConfigError) as excinfo:
        validate_config("Llama-3.1-8B", config("p5.48xlarge", tensor_parallel_size=3))
    assert (excinfo.value.field, excinfo.value.value) == ("engine.tensor_parallel_size", 3)
    assert "32 attention heads" in str(excinfo.value)


@pytest.mark.parametrize(
    ("itype", "engine", "field"),
    [
        ("p5.48xlarge", {"tensor_parallel_size": 4}, "engine.tensor_parallel_size"),  # 4 of 8 GPUs
        (
            "g5.12xlarge",
            {"tensor_parallel_size": 4, "pipeline_parallel_size": 2},
            "engine.tensor_parallel_size",
        ),
        ("g4dn.xlarge", {"quantization": "bf16"}, "engine.quantization"),  # T4 has no bf16
        ("p3.2xlarge", {"quantization": "int4-awq"}, "engine.quantization"),  # V100 is 7.0
        ("g6e.xlarge", {"max_model_len": 200_000}, "engine.max_model_len"),  # past 131072 positions
        ("g6.xlarge", {"max_model_len": 131072}, "engine.max_model_len"),  # KV cache holds ~34k tokens
        (
            "p5.4xlarge",
            {"max_num_seqs": 4096, "max_num_batched_tokens": 2048},
            "engine.max_num_batched_tokens",
        ),
        (
            "p5.4xlarge",
            {"gpu_memory_utilization": 1.0},
            "engine.gpu_memory_utilization",
        ),  # no room for graphs
    ],
)
def test_configs_vllm_would_refuse(itype: str, engine: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        validate_config("Llama-3.1-8B", config(itype, **engine))
    assert excinfo.value.field == field
    assert str(excinfo.value).startswith(field)


def test_unknown_names_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"^instance_type=x9\.huge: unknown instance type"):
        validate_config("Llama-3.1-8B", DeploymentConfig(instance_type="x9.huge", on_demand_replicas=1))
    with pytest.raises(ConfigError, match=r"^model=GPT-9: unknown model"):
        validate_config("GPT-9", config("p5.4xlarge"))


def test_the_seeded_fleet_configs_are_valid() -> None:
    for name, itype in [
        ("Llama-3.1-8B", "g6e.xlarge"),
        ("Llama-3.1-70B", "p4de.24xlarge"),
        ("Mistral-7B-Instruct-v0.2", "g5.2xlarge"),
        ("Qwen2.5-7B", "g6.xlarge"),
        ("Qwen2.5-72B", "p5.48xlarge"),
        ("Mixtral-8x7B-v0.1", "p4d.24xlarge"),
    ]:
        validate_config(name, config(itype))


# ----------------------------------------------------------------------------------------- quality


def test_quality_factor_orders_formats_and_punishes_small_models() -> None:
    llama8b = model("Llama-3.1-8B")
    factors = [
        quality_factor(llama8b, EngineConfig(quantization=q))
        for q in (
            Quantization.BF16,
            Quantization.FP8,
            Quantization.INT8,
            Quantization.INT4_AWQ,
            Quantization.INT4_GPTQ,
        )
    ]
    assert factors == sorted(factors, reverse=True) and factors[0] == 1.0
    assert factors[1] > 0.99  # FP8 ~lossless
    int4 = EngineConfig(quantization=Quantization.INT4_AWQ)
    small, large = quality_factor(model("Llama-3.2-1B"), int4), quality_factor(model("Llama-3.1-70B"), int4)
    assert small < quality_factor(llama8b, int4) < large
    assert small < 0.95 < large  # a 1B model's INT4 falls behind the 5% quality gate, a 70B's does not
    kv_fp8 = EngineConfig(kv_cache_dtype=KvCacheDtype.FP8)
    assert factors[1] < quality_factor(llama8b, kv_fp8) < 1.0


# ----------------------------------------------------------------------------------------- config.json


def test_hf_config_families_and_moe_keys() -> None:
    mixtral = parse_hf_config(
        {
            "model_type": "mixtral", "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
            "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 32000,
            "num_local_experts": 8, "num_experts_per_tok": 2,
        },
        "mixtral",
    )  # fmt: skip
    assert mixtral.param_count() == model("Mixtral-8x7B-v0.1").param_count()
    qwen_moe = parse_hf_config(
        {
            "model_type": "qwen2_moe", "num_hidden_layers": 24, "hidden_size": 2048, "num_attention_heads": 16,
            "num_key_value_heads": 16, "intermediate_size": 5632, "moe_intermediate_size": 1408,
            "shared_expert_intermediate_size": 5632, "num_experts": 60, "num_experts_per_tok": 4,
            "vocab_size": 151936,
        },
        "qwen1.5-moe",
    )  # fmt: skip
    assert qwen_moe.param_count() == pytest.approx(14.3e9, rel=0.02)  # Qwen1.5-MoE-A2.7B: 14.3B total
    assert qwen_moe.active_param_count() == pytest.approx(2.7e9, rel=0.08)
    gemma = parse_hf_config(
        {"model_type": "gemma", "num_hidden_layers": 28, "hidden_size": 3072, "num_attention_heads": 16,
         "num_key_value_heads": 16, "head_dim": 256, "intermediate_size": 24576, "vocab_size": 256000},
        "gemma-7b",
    )  # fmt: skip
    assert gemma.tied_embeddings and gemma.head_dim == 256
    assert gemma.param_count() == pytest.approx(8.54e9, rel=0.01)
    awq = parse_hf_config({**LLAMA_70B_FP8, "quantization_config": {"quant_method": "awq", "bits": 4}}, "a")
    assert awq.quantization == Quantization.INT4_AWQ


def test_hf_config_missing_field_names_it() -> None:
    broken = {k: v for k, v in LLAMA_70B_FP8.items() if k != "num_hidden_layers"}
    with pytest.raises(ConfigError, match=r"num_hidden_layers"):
        parse_hf_config(broken, "broken")
    with pytest.raises(ConfigError, match=r"quant_method=bitsandbytes"):
        parse_hf_config({**LLAMA_70B_FP8, "quantization_config": {"quant_method": "bitsandbytes"}}, "b")


def test_a_quantized_checkpoint_is_served_in_its_format() -> None:
    spec = parse_hf_config(LLAMA_70B_FP8, "fp8-70b")
    a100 = instance_type("p4de.24xlarge")
    problems = config_problems(spec, a100.gpu, a100.gpu_count, config("p4de.24xlarge").engine)
    assert [(p.field, p.value) for p in problems] == [("engine.quantization", "fp8")]
    assert memory_plan(spec, gpu("H100"), EngineConfig(tensor_parallel_size=2)).weights_gib < 34
