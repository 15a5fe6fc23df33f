import json
import logging
import sys
from types import ModuleType

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_llmarch
import hf_llmarch.convert
import hf_llmarch.ops.moe as moe_ops
import hf_llmarch.ops.retention as retention_ops
from hf_llmarch import environment
from hf_llmarch.accounting import count_parameters
from hf_llmarch.cli import _parse_overrides, main
from hf_llmarch.compat import TESTED_TRANSFORMERS

SUBCOMMANDS = ["list", "init", "info", "card", "env", "convert", "upcycle", "export", "demo", "bench"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("llama-tiny")
    assert main(["init", "llama-tiny", "--out", str(out), "--seed", "3"]) == 0
    return out


def test_list_shows_families_and_presets(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "llmarch_dense" in out and "llmarch_hybrid" in out
    for name, preset in hf_llmarch.list_presets().items():
        assert name in out and preset.get("_description", "") in out


def test_init_saves_a_loadable_model_and_tokenizer(tiny_checkpoint):
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    assert model.config.model_type == "llmarch_dense"
    assert sum(p.numel() for p in model.parameters()) == count_parameters(model.config)["total"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    ids = tokenizer("héllo", return_tensors="pt").input_ids
    assert tokenizer.decode(ids[0]) == "héllo"
    assert model(ids).logits.shape == (1, ids.shape[1], 258)


def test_init_seed_decides_the_weights(tiny_checkpoint, tmp_path):
    assert main(["init", "llama-tiny", "--out", str(tmp_path / "same"), "--seed", "3"]) == 0
    assert main(["init", "llama-tiny", "--out", str(tmp_path / "other"), "--seed", "4"]) == 0
    ref = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).state_dict()
    same = AutoModelForCausalLM.from_pretrained(tmp_path / "same").state_dict()
    other = AutoModelForCausalLM.from_pretrained(tmp_path / "other").state_dict()
    key = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(ref[key], same[key])
    assert not torch.equal(ref[key], other[key])


def test_init_set_overrides_config_fields(tmp_path):
    out = tmp_path / "small"
    argv = ["init", "llama-tiny", "--out", str(out), "--set", "hidden_size=64", "--set", "layer_pattern=(attn/mlp)x2"]
    assert main([*argv, "--set", "tie_word_embeddings=false", "--set", "norm_eps=1e-5"]) == 0
    config = AutoModelForCausalLM.from_pretrained(out).config
    assert (config.hidden_size, config.num_hidden_layers) == (64, 2)
    assert config.tie_word_embeddings is False and config.norm_eps == 1e-5


def test_set_values_are_json_or_strings():
    parsed = _parse_overrides(["a=4", "b=0.5", "c=true", "d=silu", "e=[1, 2]", 'f="x y"', "g=null", "h=a=b"])
    assert parsed == {"a": 4, "b": 0.5, "c": True, "d": "silu", "e": [1, 2], "f": "x y", "g": None, "h": "a=b"}


def test_info_llama3_8b_exact_parameter_count(capsys):
    assert main(["info", "llama3-8b"]) == 0
    out = capsys.readouterr().out
    assert "8,030,261,248" in out and "8.03B" in out
    assert main(["info", "llama3-8b", "--json", "--context", "8192", "--dtype", "fp32"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["parameters"]["total"] == 8_030_261_248
    assert summary["cache"]["bytes_per_token"] == 32 * 2 * 8 * 128 * 4
    assert summary["context"] == 8192


def test_info_reads_a_checkpoint_dir(tiny_checkpoint, capsys):
    assert main(["info", str(tiny_checkpoint), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["parameters"]["total"] == count_parameters(hf_llmarch.load_preset("llama-tiny"))["total"]
    assert summary["layer_pattern"] == "(attn/mlp)x4"


@pytest.mark.parametrize("native", ["qwen2", "gpt2"])
def test_info_reads_a_native_checkpoint(native, tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    shape = dict(vocab_size=100, num_attention_heads=4)
    if native == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**shape, num_key_value_heads=2, hidden_size=64, intermediate_size=96, num_hidden_layers=3))
    else:
        model = GPT2LMHeadModel(GPT2Config(**shape, n_embd=64, n_layer=3, n_positions=32))
    model.save_pretrained(tmp_path)
    assert main(["info", str(tmp_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["parameters"]["total"] == model.num_parameters()  # tied head counted once
    assert summary["layer_pattern"] == "(attn/mlp)x3"
    assert main(["card", str(tmp_path)]) == 2  # a card must describe an hf_llmarch checkpoint
    assert "convert it first" in capsys.readouterr().err


def test_info_names_an_unreadable_model_type(tmp_path, capsys):
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=1, intermediate_size=64).save_pretrained(tmp_path)
    assert main(["info", str(tmp_path)]) == 2
    assert "'bert'" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [[], *([cmd] for cmd in SUBCOMMANDS)])
def test_help_exits_zero(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    assert "usage: llmarch" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["info", "no-such-preset"], "no-such-preset"),
        (["init", "no-such-preset", "--out", "unused"], "no-such-preset"),
        (["init", "llama-tiny", "--out", "unused", "--set", "bogus_field=1"], "bogus_field"),
        (["init", "llama-tiny", "--out", "unused", "--set", "novalue"], "novalue"),
        (["init", "llama-tiny", "--out", "unused", "--set", "hidden_size=abc"], 'hidden_size="abc": hidden_size takes'),
        (["init", "llama-tiny", "--out", "unused", "--set", "tie_word_embeddings=maybe"], "takes bool"),
        (["init", "llama-tiny", "--out", "unused", "--set", "num_hidden_layers=3"], "num_hidden_layers"),
    ],
)
def test_user_errors_are_one_line_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_set_typo_gets_a_did_you_mean(tmp_path, capsys):
    assert main(["init", "llama-tiny", "--out", str(tmp_path / "m"), "--set", "hiden_size=64"]) == 2
    assert "'hiden_size'; did you mean 'hidden_size'?" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_env_report_names_versions_and_op_paths(monkeypatch, capsys):
    monkeypatch.delenv("LLMARCH_RETENTION_MODE", raising=False)
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    paths = environment.collect()["paths"]
    for needle in (torch.__version__, transformers.__version__, hf_llmarch.__version__, "flash_attn", "fla"):
        assert needle in out
    assert f"attention {paths['attention']['default']} (flash_attention_2 " in " ".join(out.split())
    assert "T=1: recurrent" in out and paths["moe"]["auto"] in out


def test_env_json_has_every_section(capsys):
    assert main(["env", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["torch"], info["transformers"]) == (torch.__version__, transformers.__version__)
    assert set(info["packages"]) == {"peft", "accelerate", "trl", "triton", "safetensors"}
    assert set(info["kernels"]) == {"flash_attn", "mamba_ssm", "causal_conv1d", "fla"}
    assert set(info["paths"]) == {"attention", "retention", "moe", "state_space"}
    assert info["paths"]["attention"]["default"] in ("sdpa", "eager")
    assert info["transformers_tested"] == list(TESTED_TRANSFORMERS)


def test_env_warns_outside_the_tested_transformers_range(monkeypatch, capsys):
    monkeypatch.setattr(environment, "TESTED_TRANSFORMERS", ("4.40", "4.57"))
    assert main(["env"]) == 0
    assert f"warning: transformers {transformers.__version__} is outside the range" in capsys.readouterr().out


@pytest.mark.parametrize("env_mode", [None, "chunk", "naive"])
def test_env_retention_path_is_what_retention_runs(env_mode, monkeypatch):
    if env_mode:
        monkeypatch.setenv("LLMARCH_RETENTION_MODE", env_mode)
    reported = environment.collect()["paths"]["retention"]["auto"]
    ran = []
    for form in ("parallel", "chunk", "recurrent", "naive"):
        monkeypatch.setattr(retention_ops, f"retention_{form}", lambda *a, form=form, **k: ran.append(form))
    for label in reported:
        q = torch.zeros(1, int(label.removeprefix("T=")), 1, 4)
        retention_ops.retention(q, q, q, torch.zeros(q.shape[:3]))
    assert ran == list(reported.values())


def test_env_state_space_paths_are_what_the_ops_run(monkeypatch, capsys):
    """CPU: chunked prefill and one-step decode for Mamba and Mamba-2, the FFT for S4D; an env var moves them."""
    for var in ("LLMARCH_SELECTIVE_SCAN_MODE", "LLMARCH_SSD_MODE", "LLMARCH_S4D_MODE", "LLMARCH_SHORT_CONV_MODE"):
        monkeypatch.delenv(var, raising=False)
    paths = environment.collect()["paths"]["state_space"]
    assert paths["mamba"] == {"prefill": "chunk", "decode": "step"} and paths["mamba2"] == {"prefill": "chunk", "decode": "step"}
    assert paths["s4d"] == {"prefill": "fft", "decode": "step"} and paths["short conv"]["prefill"] == "torch"
    monkeypatch.setenv("LLMARCH_SELECTIVE_SCAN_MODE", "naive")
    monkeypatch.setenv("LLMARCH_SSD_MODE", "slow")
    paths = environment.collect()["paths"]["state_space"]
    assert paths["mamba"] == {"prefill": "naive", "decode": "naive"} and "LLMARCH_SSD_MODE" in paths["mamba2"]["error"]
    assert main(["env"]) == 0 and "mamba auto" in capsys.readouterr().out


@pytest.mark.parametrize("env_impl", [None, "naive", "grouped"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_env_moe_path_is_what_moe_experts_runs(env_impl, dtype, monkeypatch, caplog):
    if env_impl:
        monkeypatch.setenv("LLMARCH_MOE_IMPL", env_impl)
    moe = environment.collect()["paths"]["moe"]
    device, torch_dtype = moe["device"], environment.MOE_DTYPES[dtype]
    expected = moe["paths"][dtype]
    monkeypatch.setattr(moe_ops, "_logged", set())  # the op logs its path once per (impl, device, dtype)
    caplog.set_level(logging.INFO, logger="hf_llmarch")
    x, weight = (torch.rand(32, n, device=device, dtype=torch_dtype) for n in (16, 2))
    gate_up, down = (torch.randn(shape, device=device, dtype=torch_dtype) for shape in ((4, 64, 16), (4, 16, 32)))
    idx = torch.randint(0, 4, (32, 2), device=device)
    moe_ops.moe_experts(x, idx, weight, gate_up, down, torch.nn.functional.silu)
    assert f"hf_llmarch MoE experts path: {expected}" in caplog.messages


def test_env_reports_the_triton_pick_the_op_would_make(monkeypatch):
    """On CUDA, "auto" runs Triton per call where grouped_mm cannot; env asks the op's own picker."""
    monkeypatch.setattr(moe_ops, "_auto_picks_triton", lambda *args: True)
    paths = environment.collect()["paths"]["moe"]["paths"]
    assert all(path.startswith("triton (") for path in paths.values()), paths


def test_card_for_a_checkpoint_goes_into_its_readme(tiny_checkpoint, tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"steps": 120, "eval_loss_before": 5.5, "eval_loss_after": 1.25}))
    assert main(["card", str(tiny_checkpoint), "--metrics", str(metrics), "--model-path", "me/tiny"]) == 0
    card = (tiny_checkpoint / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\nlibrary_name: transformers\n")  # Hub metadata front matter
    assert "5.5000 → 1.2500" in card and "| steps | 120 |" in card
    assert 'from_pretrained("me/tiny")' in card and "$" not in card
    n_params = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).num_parameters()
    assert f"{n_params:,}" in card
    # A second run would overwrite the user's README: refused unless --force.
    assert main(["card", str(tiny_checkpoint)]) == 2
    assert main(["card", str(tiny_checkpoint), "--force"]) == 0
    assert 'from_pretrained("' + str(tiny_checkpoint) + '")' in (tiny_checkpoint / "README.md").read_text()


@pytest.mark.parametrize("content,needle", [('{"eval_loss": 1.0}', "eval_loss"), ("[1, 2]", "JSON object"), ("{", "JSON")])
def test_card_rejects_bad_metrics(tmp_path, capsys, content, needle):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(content)
    assert main(["card", "llama-tiny", "--metrics", str(metrics), "--out", str(tmp_path / "card.md")]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "card.md").exists()


def test_info_rejects_a_dir_without_config(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err


def test_convert_and_export_delegate(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(hf_llmarch.convert, "save_from_hf", lambda src, out: calls.append(("from", src, out)), raising=False)
    monkeypatch.setattr(
        hf_llmarch.convert, "save_to_hf", lambda src, out, target: calls.append(("to", src, out, target)), raising=False
    )
    assert main(["convert", "--from-hf", "src", "--out", "dst"]) == 0
    assert main(["export", "--to-hf", "ours", "--out", "native"]) == 0
    assert main(["export", "--to-hf", "ours", "--out", "native", "--target", "qwen3"]) == 0
    assert calls == [("from", "src", "dst"), ("to", "ours", "native", None), ("to", "ours", "native", "qwen3")]


def test_export_target_is_honoured_or_refused_by_name(tiny_checkpoint, tmp_path, capsys):
    assert main(["export", "--to-hf", str(tiny_checkpoint), "--out", str(tmp_path / "m"), "--target", "mistral"]) == 0
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "m")).__name__ == "MistralForCausalLM"
    assert main(["export", "--to-hf", str(tiny_checkpoint), "--out", str(tmp_path / "q"), "--target", "qwen3"]) == 2
    assert "qk_norm" in capsys.readouterr().err


def test_delegated_subcommand_gets_its_own_arguments(monkeypatch):
    fake = ModuleType("hf_llmarch.bench")
    fake.add_arguments = lambda parser: parser.add_argument("--steps", type=int, default=1)
    fake.run = lambda args: 7 if args.steps == 5 else 1
    monkeypatch.setitem(sys.modules, "hf_llmarch.bench", fake)
    assert main(["bench", "--steps", "5"]) == 7


def test_missing_delegate_reports_clearly(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "hf_llmarch.demo", None)  # makes `import hf_llmarch.demo` fail
    assert main(["demo"]) == 2
    assert "hf_llmarch.demo" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    assert main(["list"]) == 0
