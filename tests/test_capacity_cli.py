"""`optiinfra plan capacity`: the JSON answer, config.json models, and refusals that name the flag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optiinfra_assets.cli import main

KEYS = ["fits", "weights_gib_per_gpu", "kv_cache_tokens", "num_gpu_blocks", "max_concurrency", "reason"]
QWEN3_14B = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "num_hidden_layers": 40,
    "hidden_size": 5120,
    "num_attention_heads": 40,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 17408,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTIINFRA_HOME", str(tmp_path / "home"))


def plan(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict | None, str]:
    code = main(["plan", "capacity", *args, "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def test_prints_exactly_the_documented_keys(capsys: pytest.CaptureFixture[str]) -> None:
    code, result, _ = plan(
        capsys, "--model", "Llama-3.1-8B", "--gpu", "H100", "--gpus", "1",
        "--gpu-memory-utilization", "0.95", "--max-model-len", "16384",
    )  # fmt: skip
    assert code == 0 and result is not None and list(result) == KEYS
    # vLLM 0.19.0 logged 476,016 tokens for this start (bench/kv_capacity_cases.json)
    assert result["fits"] is True and result["weights_gib_per_gpu"] == pytest.approx(14.99, abs=0.02)
    assert result["kv_cache_tokens"] == pytest.approx(476_016, rel=0.005)
    assert result["kv_cache_tokens"] == 16 * result["num_gpu_blocks"]
    assert result["max_concurrency"] == pytest.approx(result["kv_cache_tokens"] / 16384, abs=0.01)


def test_a_config_json_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    folder = tmp_path / "Qwen3-14B"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(QWEN3_14B))
    args = ["--gpu", "h100", "--gpu-memory-utilization", "0.95", "--max-model-len", "8192"]
    code, by_file, _ = plan(capsys, "--model", str(folder / "config.json"), *args)
    assert code == 0 and by_file is not None
    # vLLM 0.18.0 logged 27.52 GiB of weights and 45.23 GiB of KV cache: 45.23 GiB / 160 KiB per token
    assert by_file["weights_gib_per_gpu"] == pytest.approx(27.52, abs=0.05)
    assert by_file["kv_cache_tokens"] == pytest.approx(45.23 * 2**30 / (40 * 8 * 128 * 2 * 2), rel=0.01)
    _, by_folder, _ = plan(capsys, "--model", str(folder), *args)
    assert by_folder == by_file


def test_int4_fits_one_h100_where_bf16_does_not(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--model", "Llama-3.1-70B", "--gpu", "H100", "--max-model-len", "8192"]
    code, bf16, _ = plan(capsys, *args)
    assert code == 0 and bf16 is not None and bf16["fits"] is False
    assert bf16["kv_cache_tokens"] == 0 and "131.45 GiB of weights" in bf16["reason"]
    _, int4, _ = plan(capsys, *args, "--quantization", "awq")
    assert int4 is not None and int4["fits"] is True and int4["weights_gib_per_gpu"] < 40


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--model", "Llama-3.1-8B", "--gpu", "A100-80GB", "--quantization", "fp8"], "--quantization=fp8"),
        (["--model", "Llama-3.1-8B", "--gpu", "H100", "--gpus", "3"], "--gpus=3"),
        (["--model", "Llama-3.1-8B", "--gpu", "A10G", "--kv-cache-dtype", "fp8"], "--kv-cache-dtype=fp8"),
        (["--model", "Llama-3.1-8B", "--gpu", "Tesla T4", "--dtype", "bf16"], "--dtype=bf16"),
        (["--model", "Llama-3.1-8B", "--gpu", "B300"], "--gpu=B300"),
        (["--model", "GPT-9", "--gpu", "H100"], "--model=GPT-9"),
        (["--model", "Llama-3.1-8B", "--gpu", "H100", "--max-model-len", "200000"], "--max-model-len=200000"),
    ],
)
def test_refusals_name_the_flag(capsys: pytest.CaptureFixture[str], args: list[str], flag: str) -> None:
    code, result, err = plan(capsys, *args)
    assert code == 2 and result is None
    assert err.startswith(f"optiinfra: error: {flag}:")


@pytest.mark.parametrize(
    ("flag", "value"), [("--gpus", "-1"), ("--gpu-memory-utilization", "1.5"), ("--max-model-len", "0")]
)
def test_bad_numbers_exit_2_naming_the_flag(
    capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(["plan", "capacity", "--model", "Llama-3.1-8B", "--gpu", "H100", flag, value])
    assert excinfo.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


def test_config_json_missing_a_field_names_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({k: v for k, v in QWEN3_14B.items() if k != "num_attention_heads"}))
    code, _, err = plan(capsys, "--model", str(path), "--gpu", "H100")
    assert code == 2 and "num_attention_heads" in err
