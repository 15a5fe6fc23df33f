"""dense suite: `llmarch_dense` vs `LlamaForCausalLM` with identical weights. Parity first (fp32
logits within PARITY_TOL and equal greedy tokens); only then forward+backward tokens/s, greedy
`generate` tokens/s and the peak memory of each."""

import torch

from .harness import (
    PARITY_TOL, cpu_peaks, cuda_peak, generate, interleave, median, parity_gate, rss_growth, train_step,
)
from .report import metric
from .settings import DTYPES, pick

DENSE_SPEED_GOAL = (">=", 0.95)  # ours within 5% of transformers
DENSE_MEMORY_GOAL = ("<=", 1.05)
DENSE_SETUP = ("hidden", "layers", "heads", "kv_heads", "vocab", "intermediate", "batch", "seq", "prompt", "new_tokens", "attn")


def dense_configs(s):
    """(LlamaConfig, LlmArchDenseConfig) of the same shape; weights map key for key."""
    from transformers import LlamaConfig

    from ..models.dense import LlmArchDenseConfig

    common = dict(
        vocab_size=s.vocab,
        hidden_size=s.hidden,
        intermediate_size=s.intermediate,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    llama = LlamaConfig(**common, num_hidden_layers=s.layers, rms_norm_eps=1e-6)
    ours = LlmArchDenseConfig(**common, layer_pattern=f"(attn/mlp)x{s.layers}", norm_eps=1e-6)
    return llama, ours


def build_dense(s, which: str, seed: int):
    from transformers import AutoModelForCausalLM

    llama_cfg, ours_cfg = dense_configs(s)
    torch.manual_seed(seed)
    cfg = ours_cfg if which == "ours" else llama_cfg
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=s.attn)


def dense_pair(s, device):
    """(ours, LlamaForCausalLM) on `device`, ours loaded with Llama's weights key for key."""
    ref = build_dense(s, "transformers", seed=0).to(device)
    ours = build_dense(s, "ours", seed=1).to(device)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def dense_calls(model, s, device) -> dict:
    """The two measured calls on fixed random inputs."""
    gen = torch.Generator().manual_seed(1)
    train_ids = torch.randint(3, s.vocab, (s.batch, s.seq), generator=gen).to(device)
    prompt = torch.randint(3, s.vocab, (s.batch, s.prompt), generator=gen).to(device)
    return {"train": lambda: train_step(model, train_ids), "decode": lambda: generate(model, prompt, s.new_tokens)}


def _tokens_differing(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int | None]:
    """(how many, first index) of the positions where two token rows [n] differ; a length
    difference counts as differing positions."""
    n = min(len(a), len(b))
    differ = torch.cat([a[:n].cpu() != b[:n].cpu(), torch.ones(abs(len(a) - len(b)), dtype=torch.bool)])
    where = differ.nonzero().flatten().tolist()
    return len(where), (where[0] if where else None)


@torch.no_grad()
def checked_dense_pair(suite: str, s, device, res: dict):
    """The dense pair on identical weights with its parity recorded in `res`: (ours, ref, the failed
    result to return when the parity gate fails, else None)."""
    ours, ref = dense_pair(s, device)
    res["parity"], failures = dense_parity(ours, ref, s, device)
    return ours, ref, parity_gate(suite, res, failures)


def dense_parity(ours, ref, s, device, tol: float = PARITY_TOL) -> tuple[dict, list[str]]:
    """fp32 logits on a random batch within `tol`, and the same greedy continuation.
    Returns (the parity fields, one line per failed check saying by how much)."""
    ids = torch.randint(3, s.vocab, (2, min(s.seq, 64)), device=device)
    ours.eval(), ref.eval()
    diff = (ours(input_ids=ids).logits - ref(input_ids=ids).logits).abs().max().item()
    prompt = ids[:1, : s.prompt]
    new = [generate(m, prompt, s.new_tokens)[0, prompt.shape[1] :] for m in (ours, ref)]  # [new_tokens] each
    differing, first = _tokens_differing(*new)
    failures = []
    if not diff <= tol:  # `not <=` so that a NaN fails too
        failures.append(f"logits: max_abs_logit_diff {diff:.3g} > tolerance {tol:g}")
    if differing:
        failures.append(f"greedy tokens: {differing} of {len(new[1])} new tokens differ, first at new token {first}")
    parity = {
        "max_abs_logit_diff": diff,
        "tolerance": tol,
        "greedy_tokens_equal": not differing,
        "greedy_tokens_differing": differing,
        "passed": not failures,
    }
    return parity, failures


def cpu_peak_worker(job: dict) -> int:
    """Runs in a fresh forked process: build one model, measure one call's peak RSS growth."""
    settings = job["settings"]
    if settings.threads:
        torch.set_num_threads(settings.threads)
    model = build_dense(settings, job["model"], seed=0).to(DTYPES[settings.dtype])
    return rss_growth(dense_calls(model, settings, torch.device("cpu"))[job["what"]])


def _dense_memory(s, models: dict, device) -> dict[str, dict]:
    """{'train'|'decode': {model: peak bytes or None}}."""
    if s.no_memory:
        return {what: dict.fromkeys(models) for what in ("train", "decode")}
    jobs = [{"settings": s, "model": m, "what": w} for w in ("train", "decode") for m in models]
    if device.type == "cuda":
        peaks = [cuda_peak(dense_calls(models[j["model"]], s, device)[j["what"]], device) for j in jobs]
    else:
        peaks = cpu_peaks("dense", jobs, cpu_peak_worker)
    out = {"train": {}, "decode": {}}
    for job, peak in zip(jobs, peaks):
        out[job["what"]][job["model"]] = peak
    return out


def bench_dense(s) -> dict:
    device, dtype = torch.device(s.device), DTYPES[s.dtype]
    res = {"title": f"llmarch_dense vs transformers LlamaForCausalLM (identical weights, {s.attn})"}
    res.update(columns=["ours", "transformers"], setup=pick(s, DENSE_SETUP))
    res["setup_text"] = (
        f"hidden {s.hidden}, {s.layers} layers, {s.heads} heads / {s.kv_heads} kv heads, vocab {s.vocab}, "
        f"intermediate {s.intermediate}; train batch {s.batch} x seq {s.seq}; generate batch {s.batch}, "
        f"prompt {s.prompt}, {s.new_tokens} new tokens; {s.device}, {s.dtype}, median of {s.repeats}"
    )
    ours, ref, failed = checked_dense_pair("dense", s, device, res)
    if failed:
        return failed
    models = {"ours": ours.to(dtype), "transformers": ref.to(dtype)}
    calls = {name: dense_calls(m, s, device) for name, m in models.items()}
    train_tokens, decode_tokens = s.batch * s.seq, s.batch * s.new_tokens
    train_fns, decode_fns = ({n: c[what] for n, c in calls.items()} for what in ("train", "decode"))
    train = interleave("dense", "train fwd+bwd", train_fns, s.repeats, device, lambda t: f"{train_tokens / t:,.0f} tok/s")
    decode = interleave("dense", "generate", decode_fns, s.repeats, device, lambda t: f"{decode_tokens / t:,.0f} tok/s")
    memory = _dense_memory(s, models, device)
    mib = {w: {n: None if b is None else b / 2**20 for n, b in peaks.items()} for w, peaks in memory.items()}
    train_tps = {n: train_tokens / median(t) for n, t in train.items()}
    decode_tps = {n: decode_tokens / median(t) for n, t in decode.items()}
    pair = ("ours", "transformers")
    res["metrics"] = {
        "train tokens/s": metric("tok/s", train_tps, pair, DENSE_SPEED_GOAL),
        "decode tokens/s": metric("tok/s", decode_tps, pair, DENSE_SPEED_GOAL),
        "train peak memory": metric("MiB", mib["train"], pair, DENSE_MEMORY_GOAL),
        "decode peak memory": metric("MiB", mib["decode"], pair, DENSE_MEMORY_GOAL),
    }
    res["raw"] = {"train_s": train, "decode_s": decode, "peak_bytes": memory}
    return {**res, "status": "ok"}
