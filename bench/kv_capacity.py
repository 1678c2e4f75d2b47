"""The serving model's KV-cache capacity against real vLLM startup logs (bench/kv_capacity_cases.json).

Each case is a logged vLLM V1 start (model, GPU, engine settings, release); this prints, per case, what
vLLM logged, what optiinfra_assets.serving.memory_plan predicts, and the error, on the KV cache's tokens
where the log has them and its GiB otherwise; then the median and the worst absolute error. For contrast it
also prints the error of the model this replaced (nominal GPU memory, 2 bytes per parameter, a fixed
1.5 GiB reserve). Last line: cases=N median_abs_error_pct=M max_abs_error_pct=X.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from optiinfra_assets.catalog import GpuSpec, ModelSpec, gpu, model
from optiinfra_assets.hf_config import parse_hf_config
from optiinfra_assets.models import EngineConfig
from optiinfra_assets.serving import BLOCK_SIZE, GIB, KV_DTYPE_BYTES, memory_plan, vllm_release

CASES = Path(__file__).with_name("kv_capacity_cases.json")
OLD_RESERVE_GIB = 1.5  # the replaced model's fixed activation reserve


def case_model(case: dict[str, Any]) -> ModelSpec:
    if "hf_config" in case:
        return parse_hf_config(case["hf_config"], case["hf_config"].get("_name_or_path", case["id"]))
    return model(case["model"])


def old_prediction(spec: ModelSpec, g: GpuSpec, engine: EngineConfig) -> tuple[float, int]:
    """(KV GiB, KV tokens) per the replaced model: nominal memory, 2 B/param weights, fixed reserve."""
    tp = engine.tensor_parallel_size
    free = g.memory_gb * engine.gpu_memory_utilization - spec.weight_bytes(2) / tp / GIB - OLD_RESERVE_GIB
    per_token = 2 * spec.num_layers * max(1, spec.num_kv_heads // tp) * spec.head_dim * 2
    blocks = int(max(free, 0.0) * GIB // (per_token * BLOCK_SIZE))
    return free, blocks * BLOCK_SIZE


def error_pct(predicted: float, actual: float) -> float:
    return (predicted - actual) / actual * 100.0


def main() -> None:
    cases = json.loads(CASES.read_text())["cases"]
    errors: list[float] = []
    old_errors: list[float] = []
    print(
        f"{'case':40} {'vllm':>6} {'metric':>6} {'logged':>10} {'predicted':>10} {'error%':>7} "
        f"{'old model':>10} {'old err%':>8}  weights/activation/non-torch GiB: logged -> predicted"
    )
    for case in cases:
        spec = case_model(case)
        g = gpu(case["gpu"])
        engine = EngineConfig.model_validate(case["engine"])
        plan = memory_plan(
            spec,
            g,
            engine,
            gpu_memory_gib=case.get("gpu_memory_gib"),
            release=vllm_release(case["vllm_version"]),
        )
        logged = case["logged"]
        old_gib, old_tokens = old_prediction(spec, g, engine)
        if "kv_cache_tokens" in logged:
            metric, actual, predicted, old = (
                "tokens",
                logged["kv_cache_tokens"],
                plan.kv_cache_tokens,
                old_tokens,
            )
        else:
            metric, actual, predicted, old = (
                "GiB",
                logged["kv_cache_gib"],
                round(plan.kv_gib, 2),
                round(old_gib, 2),
            )
        errors.append(error_pct(predicted, actual))
        old_errors.append(error_pct(old, actual))
        parts = [
            f"{logged[k]:.2f}->{v:.2f}"
            for k, v in (
                ("weights_gib", plan.weights_gib),
                ("activation_gib", plan.activation_gib),
                ("non_torch_gib", plan.non_torch_gib),
            )
            if k in logged
        ]
        kv_dtype = (
            f" kv {KV_DTYPE_BYTES[engine.kv_cache_dtype]}B" if engine.kv_cache_dtype.value != "auto" else ""
        )
        print(
            f"{case['id']:40} {case['vllm_version']:>6} {metric:>6} {actual:>10} {predicted:>10} "
            f"{errors[-1]:>+7.2f} {old:>10} {old_errors[-1]:>+8.1f}  {' '.join(parts)}{kv_dtype}"
        )
    abs_errors = [abs(e) for e in errors]
    old_abs = [abs(e) for e in old_errors]
    print(
        f"old model: median_abs_error_pct={statistics.median(old_abs):.1f} max_abs_error_pct={max(old_abs):.1f}"
    )
    print(
        f"cases={len(cases)} median_abs_error_pct={statistics.median(abs_errors):.2f} "
        f"max_abs_error_pct={max(abs_errors):.2f}"
    )


if __name__ == "__main__":
    main()
