"""The serving model's decode latency and throughput against public vLLM measurements.

Each reference is a published run (source URL below): GPU, model, concurrency, prompt/output lengths and the
figure it reports. Prints measured, predicted and the error per reference, and whether the reference was
used to calibrate (BANDWIDTH_EFFICIENCY and STEP_OVERHEAD_MS in optiinfra_assets/serving.py were fitted to
the two single-stream points, so only the others are checks). Last line: checks=N median_abs_error_pct=M
max_abs_error_pct=X over the checks.

Closed-loop throughput at concurrency C (every request is replaced as it finishes) is read from the
model's step times: a cycle runs the C prefills one after another and the output tokens' decode steps at
batch C, so throughput = C x output / (C x prefill + output x step(C)).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

from optiinfra_assets.catalog import (
    A40,
    A100_40,
    H100,
    GpuSpec,
    InstanceType,
    ModelSpec,
    default_engine,
    model,
)
from optiinfra_assets.serving import ServingCapacity, Workload, decode_itl_ms, serving_capacity


@dataclass(frozen=True)
class Reference:
    name: str
    source: str
    gpu: GpuSpec
    model: ModelSpec
    workload: Workload
    metric: str
    measured: float
    predict: Callable[[ServingCapacity], float]
    calibration: bool = False


def single_gpu(g: GpuSpec) -> InstanceType:
    """A one-GPU machine of a kind, for GPUs the EC2 catalog does not sell alone."""
    return InstanceType(
        f"1x {g.name}", "bench", 0, 0.0, g, 1, g.memory_gib_reported, 0.0, None, None, None, None, None
    )


def tpot_ms(batch: int) -> Callable[[ServingCapacity], float]:
    return lambda cap: float(decode_itl_ms(cap, batch))


def closed_loop_tokens_per_s(cap: ServingCapacity, concurrency: int, output: int) -> float:
    cycle_ms = concurrency * cap.prefill_ms + output * float(decode_itl_ms(cap, concurrency))
    return concurrency * output / cycle_ms * 1e3


def throughput_ratio(concurrency: int, output: int) -> Callable[[ServingCapacity], float]:
    return lambda cap: (
        closed_loop_tokens_per_s(cap, concurrency, output) / closed_loop_tokens_per_s(cap, 1, output)
    )


def burst_tokens_per_s(requests: int, generated: int, longest: int) -> Callable[[ServingCapacity], float]:
    """All ``requests`` arrive at once: one prefill of them all, then ``longest`` decode steps whose batch
    shrinks as requests finish (mean batch = generated / longest)."""

    def predict(cap: ServingCapacity) -> float:
        prefill_ms = requests * cap.prefill_ms
        duration_ms = prefill_ms + longest * float(decode_itl_ms(cap, generated / longest))
        return generated / duration_ms * 1e3

    return predict


LLAMA_8B = model("Llama-3.1-8B")
YOBITEL = "https://yobitelcomm.github.io/bench/recipes/concurrency-sweep/"
MUSGRAVE = "https://johnmusgrave.com/p/vllm-throughput-latency-sweep-on"
DBMART = "https://databasemart.com/blog/vllm-gpu-benchmark-a40"
# yobitelcomm's "chatbot-short" prompts are not published; its 14 ms first-token time at one request puts
# them at a few hundred tokens. Assumed 300 in, 300 out.
CHATBOT_SHORT = Workload(avg_prompt_tokens=300, avg_output_tokens=300)
REFERENCES = (
    Reference(
        "H100 SXM, Llama-3.1-8B fp16, vLLM 0.21, 1 stream",
        YOBITEL,
        H100,
        LLAMA_8B,
        CHATBOT_SHORT,
        "TPOT p50 ms",
        6.48,
        tpot_ms(1),
        calibration=True,
    ),
    Reference(
        "H100 SXM, Llama-3.1-8B fp16, vLLM 0.21, 4 streams",
        YOBITEL,
        H100,
        LLAMA_8B,
        CHATBOT_SHORT,
        "TPOT p50 ms",
        6.59,
        tpot_ms(4),
    ),
    Reference(
        "H100 SXM, Llama-3.1-8B fp16, vLLM 0.21, 16 streams",
        YOBITEL,
        H100,
        LLAMA_8B,
        CHATBOT_SHORT,
        "TPOT p50 ms",
        10.94,
        tpot_ms(16),
    ),
    Reference(
        "A100 40GB, Llama-3.1-8B bf16, vLLM 0.23, 1 stream, 1024 in",
        MUSGRAVE,
        A100_40,
        LLAMA_8B,
        Workload(avg_prompt_tokens=1024, avg_output_tokens=128),
        "decode tokens/s",
        75.0,
        lambda cap: 1e3 / float(decode_itl_ms(cap, 1)),
        calibration=True,
    ),
    Reference(
        "A100 40GB, Llama-3.1-8B bf16, vLLM 0.23, 8 vs 1 streams, 1024/128",
        MUSGRAVE,
        A100_40,
        LLAMA_8B,
        Workload(avg_prompt_tokens=1024, avg_output_tokens=128),
        "throughput ratio",
        6.6,
        throughput_ratio(8, 128),
    ),
    Reference(
        "A40, Llama-3.1-8B fp16, 50 requests at once, 100 in / <=600 out",
        DBMART,
        A40,
        LLAMA_8B,
        Workload(avg_prompt_tokens=100, avg_output_tokens=443),
        "output tokens/s",
        1016.6,
        burst_tokens_per_s(50, 22170, 600),
    ),
    Reference(
        "A40, Qwen2.5-7B fp16, 50 requests at once, 100 in / <=600 out",
        DBMART,
        A40,
        model("Qwen2.5-7B"),
        Workload(avg_prompt_tokens=100, avg_output_tokens=514),
        "output tokens/s",
        1094.5,
        burst_tokens_per_s(50, 25703, 600),
    ),
)


def main() -> None:
    errors: list[float] = []
    for ref in REFERENCES:
        itype = single_gpu(ref.gpu)
        engine = default_engine(ref.gpu, 1, max_model_len=8192)
        cap = serving_capacity(ref.model, itype, engine, ref.workload)
        predicted = ref.predict(cap)
        error = (predicted - ref.measured) / ref.measured * 100.0
        role = "calibration" if ref.calibration else "check"
        if not ref.calibration:
            errors.append(error)
        print(
            f"{ref.name:66} {ref.metric:>17} measured={ref.measured:>8.2f} predicted={predicted:>8.2f} "
            f"error={error:+6.1f}% ({role})  {ref.source}"
        )
    abs_errors = [abs(e) for e in errors]
    print(
        f"checks={len(errors)} median_abs_error_pct={statistics.median(abs_errors):.1f} "
        f"max_abs_error_pct={max(abs_errors):.1f}"
    )


if __name__ == "__main__":
    main()
