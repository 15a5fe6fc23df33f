"""The whole-model half of the moe suite: `llmarch_moe` vs `MixtralForCausalLM` with identical weights
(ours made from it by `hf_llmarch.convert.from_hf`, in memory). Parity (fp32 logits within PARITY_TOL
and equal greedy tokens, as in the dense suite) is checked by the suite before anything is timed;
then training tokens/s (forward + backward of the LM loss plus the router load-balancing loss),
greedy `generate` tokens/s and the peak memory of each.

Both train on the LM loss plus 0.001 x a load-balancing loss, and neither has a z-loss term. Mixtral
computes its loss once from every layer's router logits concatenated (`output_router_logits=True`
in the train step; generate leaves it off, as by default); ours takes the mean of the per-layer
losses inside each MoE block (the converter sets the z-loss coefficient to 0; the z-loss value is
still computed, for logging) and skips them under generate."""

import torch

from .dense import dense_parity
from .harness import cpu_peaks, cuda_peak, generate, interleave, median, rss_growth
from .report import metric
from .settings import DTYPES

MODEL_REF = "MixtralForCausalLM"
# Imported once by the forkserver of the CPU memory measurements instead of in every fresh process.
MOE_PRELOAD = ("transformers.models.mixtral.modeling_mixtral", "transformers.models.qwen3_moe.modeling_qwen3_moe")


def moe_model_config(s):
    from transformers import MixtralConfig

    return MixtralConfig(
        vocab_size=s.vocab,
        hidden_size=s.hidden,
        intermediate_size=s.moe_intermediate,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
        num_local_experts=s.experts,
        num_experts_per_tok=s.top_k,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        router_jitter_noise=0.0,
        router_aux_loss_coef=0.001,
    )


def build_moe_model(s, which: str):
    """A random MixtralForCausalLM (seed 0), or ours converted from it with the same weights."""
    from transformers import AutoModelForCausalLM

    from ..convert import from_hf

    torch.manual_seed(0)
    ref = AutoModelForCausalLM.from_config(moe_model_config(s), attn_implementation=s.attn)
    return ref if which == MODEL_REF else from_hf(ref)


def moe_model_pair(s, device) -> dict:
    """{"ours": llmarch_moe, MODEL_REF: MixtralForCausalLM} with identical weights, fp32 on `device`."""
    from ..convert import from_hf

    ref = build_moe_model(s, MODEL_REF)
    return {"ours": from_hf(ref).to(device), MODEL_REF: ref.to(device)}


def moe_model_text(s, ref) -> str:
    return (
        f"Model: hidden {s.hidden}, {s.layers} layers, {s.heads} heads / {s.kv_heads} kv heads, vocab {s.vocab}, "
        f"{s.experts} experts of {s.moe_intermediate}, top-{s.top_k}, {s.attn}, Mixtral experts "
        f"{ref.config._experts_implementation} (its default); train batch {s.batch} x seq {s.seq} on the LM loss + "
        f"0.001 x load-balancing loss (Mixtral: over all layers' router logits at once; ours: mean of per-layer "
        f"losses); generate batch {s.batch}, prompt {s.prompt}, {s.new_tokens} new tokens"
    )


def moe_model_parity(models: dict, s, device) -> tuple[dict, list[str]]:
    """The dense suite's check (fp32 logits, greedy tokens) on the MoE pair; failures named `model ...`."""
    parity, failures = dense_parity(models["ours"], models[MODEL_REF], s, device)
    fields = {k: v for k, v in parity.items() if k not in ("tolerance", "passed")}
    return fields, [f"model {f}" for f in failures]


def moe_model_calls(model, which: str, s, device) -> dict:
    """The two measured calls on fixed random inputs; Mixtral trains with its router loss switched on."""
    gen = torch.Generator().manual_seed(1)
    train_ids = torch.randint(3, s.vocab, (s.batch, s.seq), generator=gen).to(device)
    prompt = torch.randint(3, s.vocab, (s.batch, s.prompt), generator=gen).to(device)
    router = {"output_router_logits": True} if which == MODEL_REF else {}

    def train():
        model.train()
        model(input_ids=train_ids, labels=train_ids, use_cache=False, **router).loss.backward()
        model.zero_grad(set_to_none=True)

    return {"train": train, "decode": lambda: generate(model, prompt, s.new_tokens)}


def cpu_model_peak_worker(job: dict) -> int:
    """Runs in a fresh forked process: build one model, measure one call's peak RSS growth."""
    settings = job["settings"]
    if settings.threads:
        torch.set_num_threads(settings.threads)
    model = build_moe_model(settings, job["model"]).to(DTYPES[settings.dtype])
    return rss_growth(moe_model_calls(model, job["model"], settings, torch.device("cpu"))[job["what"]])


def _model_memory(s, models: dict, device) -> dict[str, dict]:
    """{'train'|'decode': {model: peak bytes or None}}."""
    if s.no_memory:
        return {what: dict.fromkeys(models) for what in ("train", "decode")}
    jobs = [{"settings": s, "model": m, "what": w} for w in ("train", "decode") for m in models]
    if device.type == "cuda":
        peaks = [cuda_peak(moe_model_calls(models[j["model"]], j["model"], s, device)[j["what"]], device) for j in jobs]
    else:
        peaks = cpu_peaks("moe", jobs, cpu_model_peak_worker, MOE_PRELOAD)
    out = {"train": {}, "decode": {}}
    for job, peak in zip(jobs, peaks):
        out[job["what"]][job["model"]] = peak
    return out


def bench_moe_model(s, models: dict, device, speed_goal, memory_goal) -> tuple[dict, dict]:
    """(metrics, raw) of the parity-checked pair: train and decode tokens/s and peak memory."""
    calls = {name: moe_model_calls(m, name, s, device) for name, m in models.items()}
    train_tokens, decode_tokens = s.batch * s.seq, s.batch * s.new_tokens
    train_fns, decode_fns = ({n: c[what] for n, c in calls.items()} for what in ("train", "decode"))
    train = interleave("moe", "model train fwd+bwd", train_fns, s.repeats, device, lambda t: f"{train_tokens / t:,.0f} tok/s")
    decode = interleave("moe", "model generate", decode_fns, s.repeats, device, lambda t: f"{decode_tokens / t:,.0f} tok/s")
    memory = _model_memory(s, models, device)
    mib = {w: {n: None if b is None else b / 2**20 for n, b in peaks.items()} for w, peaks in memory.items()}
    pair = ("ours", MODEL_REF)
    metrics = {
        "model train tokens/s": metric("tok/s", {n: train_tokens / median(t) for n, t in train.items()}, pair, speed_goal),
        "model decode tokens/s": metric("tok/s", {n: decode_tokens / median(t) for n, t in decode.items()}, pair, speed_goal),
        "model train peak memory": metric("MiB", mib["train"], pair, memory_goal),
        "model decode peak memory": metric("MiB", mib["decode"], pair, memory_goal),
    }
    return metrics, {"model_train_s": train, "model_decode_s": decode, "model_peak_bytes": memory}
