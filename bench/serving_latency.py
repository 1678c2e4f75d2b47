"""The serving model's decode, prefill and batching latency and throughput against public vLLM measurements.

Each case of ``serving_latency_cases.json`` (next to this file) is one published run, with its source URL:
GPU, model, prompt/output lengths and the figure it reports. Prints measured, predicted and the error per
case, and whether the case was used to calibrate (BANDWIDTH_EFFICIENCY and STEP_OVERHEAD_MS in
optiinfra_assets/serving.py were fitted to the two single-stream points, so only the others are checks).
Then the median and largest absolute error over the checks: all of them, per GPU and per metric. The
model is never tuned per case: every case runs vLLM's defaults for its GPU at one GPU.

Closed-loop throughput at concurrency C (every request is replaced as it finishes) is read from the
model's step times: a cycle runs the C prefills one after another and the output tokens' decode steps at
batch C, so throughput = C x output / (C x prefill + output x step(C)). Requests sent at once ("burst")
are prefilled together, then decoded for as many steps as the longest output, the batch shrinking as
requests finish (mean batch = generated / longest); their first token waits for that whole prefill.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optiinfra_assets.catalog import GpuSpec, InstanceType, default_engine, gpu, model
from optiinfra_assets.serving import ServingCapacity, Workload, decode_itl_ms, serving_capacity

CASES = Path(__file__).with_name("serving_latency_cases.json")


def single_gpu(g: GpuSpec) -> InstanceType:
    """A one-GPU machine of a kind, for GPUs the EC2 catalog does not sell alone."""
    return InstanceType(
        f"1x {g.name}", "bench", 0, 0.0, g, 1, g.memory_gib_reported, 0.0, None, None, None, None, None
    )


def closed_loop_tokens_per_s(cap: ServingCapacity, concurrency: int, output: int) -> float:
    cycle_ms = concurrency * cap.prefill_ms + output * float(decode_itl_ms(cap, concurrency))
    return concurrency * output / cycle_ms * 1e3


def tpot_ms(cap: ServingCapacity, batch: int) -> float:
    return float(decode_itl_ms(cap, batch))


def decode_tokens_per_s(cap: ServingCapacity) -> float:
    return 1e3 / float(decode_itl_ms(cap, 1))


def throughput_ratio(cap: ServingCapacity, concurrency: int, output: int) -> float:
    return closed_loop_tokens_per_s(cap, concurrency, output) / closed_loop_tokens_per_s(cap, 1, output)


def burst_tokens_per_s(cap: ServingCapacity, requests: int, generated: int, longest: int) -> float:
    duration_ms = burst_ttft_ms(cap, requests) + longest * float(decode_itl_ms(cap, generated / longest))
    return generated / duration_ms * 1e3


def burst_ttft_ms(cap: ServingCapacity, requests: int) -> float:
    """First token of requests sent at once: the prefill of all their prompts (compute-bound)."""
    return requests * cap.prefill_ms


PREDICTORS: dict[str, Callable[..., float]] = {
    "tpot_ms": tpot_ms,
    "decode_tokens_per_s": decode_tokens_per_s,
    "throughput_ratio": throughput_ratio,
    "burst_tokens_per_s": burst_tokens_per_s,
    "burst_ttft_ms": burst_ttft_ms,
}


@dataclass(frozen=True)
class Case:
    name: str
    source: str
    gpu: GpuSpec
    model_name: str
    workload: Workload
    metric: str
    measured: float
    predictor: str
    args: dict[str, Any]
    calibration: bool

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Case:
        if body["predictor"] not in PREDICTORS:
            raise ValueError(
                f"predictor {body['predictor']!r} of case {body['name']!r} is not one of {list(PREDICTORS)}"
            )
        return cls(
            name=body["name"],
            source=body["source"],
            gpu=gpu(body["gpu"]),
            model_name=body["model"],
            workload=Workload(
                avg_prompt_tokens=body["prompt_tokens"], avg_output_tokens=body["output_tokens"]
            ),
            metric=body["metric"],
            measured=float(body["measured"]),
            predictor=body["predictor"],
            args=body.get("args", {}),
            calibration=bool(body.get("calibration", False)),
        )

    def predict(self) -> float:
        engine = default_engine(self.gpu, 1, max_model_len=8192)
        cap = serving_capacity(model(self.model_name), single_gpu(self.gpu), engine, self.workload)
        if not cap.fits:
            raise ValueError(f"case {self.name!r}: {cap.reason}")
        return PREDICTORS[self.predictor](cap, **self.args)


def load_cases(path: Path = CASES) -> list[Case]:
    return [Case.from_json(body) for body in json.loads(path.read_text())["cases"]]


def _summary(label: str, errors: list[float]) -> str:
    abs_errors = [abs(e) for e in errors]
    return (
        f"{label}: checks={len(errors)} median_abs_error_pct={statistics.median(abs_errors):.1f} "
        f"max_abs_error_pct={max(abs_errors):.1f}"
    )


def main() -> None:
    by_gpu: dict[str, list[float]] = defaultdict(list)
    by_metric: dict[str, list[float]] = defaultdict(list)
    checks: list[float] = []
    for case in load_cases():
        predicted = case.predict()
        error = (predicted - case.measured) / case.measured * 100.0
        role = "calibration" if case.calibration else "check"
        if not case.calibration:
            checks.append(error)
            by_gpu[case.gpu.name].append(error)
            by_metric[case.metric].append(error)
        print(
            f"{case.name:66} {case.metric:>17} measured={case.measured:>8.2f} predicted={predicted:>8.2f} "
            f"error={error:+6.1f}% ({role})"
        )
    for name, errors in sorted(by_gpu.items()):
        print(_summary(f"gpu {name}", errors))
    for name, errors in sorted(by_metric.items()):
        print(_summary(f"metric {name}", errors))
    print(_summary("all", checks))


if __name__ == "__main__":
    main()
