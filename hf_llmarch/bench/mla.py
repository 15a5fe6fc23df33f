"""mla suite: our `llmarch_deepseek`, converted with `from_hf` from a random `DeepseekV3ForCausalLM`,
against that very model. Both cache the same bytes (per layer the normed latent c_kv and the rotated
shared RoPE key, in transformers' DynamicCache); ours decodes with kv_b_proj absorbed into the
query and the output, transformers' re-expands the whole cache through kv_b_proj at every step.
Parity first (fp32 logits, a cached decode step's logits, greedy tokens); then per context decode
ms/token and tokens/s of each (`mla_decode`), the cache each holds after the prefill beside the
accounting's figure, and peak memory growth of the decode steps; last, the survey's "MLA cuts the
KV cache by 93% (213.5 GB -> 7.6 GB)" recomputed from our accounting (layers.md §2d)."""

import ctypes
import ctypes.util
import gc

import torch

from .. import compat
from .dense import dense_parity
from .harness import PARITY_TOL, cpu_peaks, log, parity_gate, rss_growth
from .mla_decode import PREFILL_CHUNK, context_ids, decode_at, decode_call, per_token, prefill
from .report import metric, plot_decode_latency
from .settings import DTYPES, pick

MLA_SPEED_GOAL = (">=", 2.0)  # ours' decode tokens/s over transformers' at MLA_GOAL_CONTEXT
MLA_GOAL_CONTEXT = 4096
WIDENING_GOAL = (">", 1.0)  # the speedup at the longest context over the one at the shortest
MLA_SETUP = (
    *("hidden", "mla_layers", "heads", "vocab", "experts", "top_k", "attn"),
    *("mla_contexts", "decode_steps", "prompt", "new_tokens", "repeats"),
)
PAIR = ("ours", "transformers")
# DeepSeek-V2 (arXiv 2405.04434) as our config: the claims' other model, no preset yet.
DEEPSEEK_V2 = dict(
    vocab_size=102400, hidden_size=5120, num_attention_heads=128, num_key_value_heads=128, q_lora_rank=1536,
    kv_lora_rank=512, qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128, head_dim=64,
    layer_pattern="mla/mlp (mla/moe)x59", num_experts=160, num_experts_per_tok=6, moe_intermediate_size=1536,
    shared_expert_intermediate_size=3072, intermediate_size=12288, router_type="softmax_topk",
)
DEEPSEEK_67B_GQA_BYTES = 95 * 8 * 128 * 2 * 2  # layers x KV heads x head dim x (K, V) x bf16 bytes
KV_BITS_FOR_93 = 6  # V2's 93.3% needs its cache at ~6 bits a value against 67B's bf16 (layers.md §2d)
CLAIM_CONTEXT = 128 * 1024
V3_WIDTH = 7168  # hidden size: the claim takes K and V as d_model wide each


def _native(s):
    """A random DeepseekV3ForCausalLM of the suite's shape. The MLA widths scale with hidden as V3's
    (latent hidden/4, RoPE key half a head); the FFNs keep V3's ratio, dense MLP 2x hidden and
    experts hidden/2, so attention is not drowned by the MLPs in the per-token time."""
    from transformers import AutoModelForCausalLM, DeepseekV3Config

    head = s.hidden // s.heads
    steps = s.decode_steps * (s.repeats + 2)  # warm-up, repeats, and a CUDA peak call
    cfg = DeepseekV3Config(
        vocab_size=s.vocab, hidden_size=s.hidden, num_hidden_layers=s.mla_layers, num_attention_heads=s.heads,
        num_key_value_heads=s.heads, q_lora_rank=s.hidden // 2, kv_lora_rank=s.hidden // 4, qk_nope_head_dim=head,
        qk_rope_head_dim=head // 2, v_head_dim=head, intermediate_size=2 * s.hidden, moe_intermediate_size=s.hidden // 2,
        first_k_dense_replace=1, n_routed_experts=s.experts, num_experts_per_tok=s.top_k, n_group=1, topk_group=1,
        n_shared_experts=1, max_position_embeddings=max(s.mla_contexts) + steps + 1, tie_word_embeddings=False,
    )
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=s.attn)


def build_pair(s) -> dict:
    """{"ours": from_hf(native), "transformers": native}, fp32, identical weights (seed 0)."""
    from ..convert import from_hf

    torch.manual_seed(0)
    native = _native(s)
    return {"ours": from_hf(native), "transformers": native}


@torch.no_grad()
def _parity(pair: dict, s, device) -> tuple[dict, list[str]]:
    """The dense suite's checks (one forward: both expand), and the logits of one cached step after
    a prefix, where ours takes the absorbed path that is timed."""
    parity, failures = dense_parity(pair["ours"], pair["transformers"], s, device)
    ids = torch.randint(3, s.vocab, (1, min(s.seq, 64)), generator=torch.Generator().manual_seed(2)).to(device)
    last = []
    for m in pair.values():
        cache = compat.output_cache(m(input_ids=ids[:, :-1], use_cache=True))
        last.append(m(input_ids=ids[:, -1:], use_cache=True, **{compat.CACHE_ARG: cache}).logits[:, -1])
    diff = (last[0] - last[1]).abs().max().item()
    if not diff <= PARITY_TOL:  # `not <=` so that a NaN fails too
        failures.append(f"cached step logits: max_abs_decode_logit_diff {diff:.3g} > tolerance {PARITY_TOL:g}")
    parity = {**parity, "max_abs_decode_logit_diff": diff, "passed": not failures}
    return parity, failures


def cpu_decode_peak_worker(job: dict) -> int:
    """Runs in a fresh forked process: build the pair, prefill one model at one context, take one step,
    measure the peak RSS growth of one call of `decode_steps` steps."""
    settings = job["settings"]
    if settings.threads:
        torch.set_num_threads(settings.threads)
    model = build_pair(settings)[job["model"]].to(DTYPES[settings.dtype])
    state = prefill(model, context_ids(settings, job["context"], torch.device("cpu")))
    decode_call(model, state, 1)()  # first-step imports and one-time buffers are not the steady decode
    _return_freed_memory()
    return rss_growth(decode_call(model, state, settings.decode_steps))


def _return_freed_memory() -> None:
    """Hands the heap the prefill freed back to the OS: glibc keeps it (its mmap threshold rises to the
    prefill's blocks), and the decode steps would reuse it without RSS growing (measured: 0.0 MiB)."""
    gc.collect()
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if hasattr(libc, "malloc_trim"):  # glibc only
        libc.malloc_trim(0)


def _cpu_memory(s) -> dict:
    """{context: {model: peak bytes or None}} from forked workers (CUDA: measured in `decode_at`)."""
    if s.no_memory:
        return {c: dict.fromkeys(PAIR) for c in s.mla_contexts}
    jobs = [{"settings": s, "model": m, "context": c, "what": f"decode@{c}"} for c in s.mla_contexts for m in PAIR]
    peaks = cpu_peaks("mla", jobs, cpu_decode_peak_worker, ("transformers.models.deepseek_v3.modeling_deepseek_v3",))
    out = {c: {} for c in s.mla_contexts}
    for job, peak in zip(jobs, peaks):
        out[job["context"]][job["model"]] = peak
    return out


def _decode_metrics(s, at: dict, expected: dict) -> dict:
    """Per context: ms/token, tokens/s (the goal at MLA_GOAL_CONTEXT), cache after the prefill (ours,
    transformers, the accounting's `expected` bytes), decode peak memory; then how the speedup widens."""
    metrics, speedup = {}, {}
    for c, r in at.items():
        t = per_token(s, r["decode_s"])
        speedup[c] = t["transformers"] / t["ours"]
        goal = MLA_SPEED_GOAL if c == MLA_GOAL_CONTEXT else None
        metrics[f"decode ms/token @{c}"] = metric("ms", {n: x * 1e3 for n, x in t.items()}, PAIR)
        metrics[f"decode tokens/s @{c}"] = metric("tok/s", {n: 1 / x for n, x in t.items()}, PAIR, goal)
        held = {**r["cache_bytes"], "accounting": expected[c]}
        metrics[f"cache after prefill @{c}"] = metric("MiB", {n: b / 2**20 for n, b in held.items()}, PAIR)
        mib = {n: None if b is None else b / 2**20 for n, b in r["peak_bytes"].items()}
        metrics[f"decode peak memory @{c}"] = metric("MiB", mib, PAIR)
    lo, hi = s.mla_contexts[0], s.mla_contexts[-1]
    widening = speedup[hi] / speedup[lo]
    metrics[f"decode speedup @{hi} / @{lo}"] = metric("x", {}, f"speedup@{hi}/@{lo}", WIDENING_GOAL, widening)
    return metrics


def _reduction(unit: str, mla, baseline, label: str = "reduction %", ratio=None) -> dict:
    """A row of MLA's cache beside a baseline's, the ratio column the % saved (or a stated one)."""
    ratio = 100 * (1 - mla / baseline) if ratio is None else ratio
    return metric(unit, {"MLA": mla, "baseline": baseline}, label, ratio=ratio)


def claim_metrics() -> dict:
    """The survey's claim beside our accounting (bf16): V3 against the same heads as MHA, V2 against
    DeepSeek 67B (the paper's 93.3%), and the claim's own 128K arithmetic against ours."""
    from .. import load_preset
    from ..accounting.usage import cache_bytes_per_token
    from ..models.deepseek import LlmArchDeepseekConfig

    v3 = load_preset("deepseek-v3")
    v3_acc = cache_bytes_per_token(v3, CLAIM_CONTEXT)
    v3_mla, v3_mha = int(v3_acc["bytes_per_token"]), v3_acc["mha_equivalent_bytes_per_token"]
    v2_mla = int(cache_bytes_per_token(LlmArchDeepseekConfig(**DEEPSEEK_V2), CLAIM_CONTEXT)["bytes_per_token"])
    layers, gib = v3.num_hidden_layers, CLAIM_CONTEXT / 2**30
    return {
        "V3 cache/token vs MHA-equivalent": _reduction("B", v3_mla, v3_mha),
        "V2 cache/token vs DeepSeek 67B GQA": _reduction("B", v2_mla, DEEPSEEK_67B_GQA_BYTES),
        f"V2 cache/token at {KV_BITS_FOR_93}-bit KV vs 67B": _reduction("B", v2_mla * KV_BITS_FOR_93 // 16, DEEPSEEK_67B_GQA_BYTES),
        "V3 @128K, claim's arithmetic": _reduction("GiB", layers * v3.kv_lora_rank * 2 * gib, layers * 2 * V3_WIDTH * 2 * gib),
        "V3 @128K, our accounting vs MHA": _reduction("GiB", v3_mla * gib, v3_mha * gib),
        "V3 @128K, survey claim": _reduction("GB", 7.6, 213.5, "claimed reduction %", ratio=93.0),
    }


def bench_mla(s) -> dict:
    from ..accounting.usage import cache_bytes_per_token

    device, dtype = torch.device(s.device), DTYPES[s.dtype]
    res = {"title": f"llmarch_deepseek (absorbed MLA decode) vs transformers DeepseekV3ForCausalLM (same weights, {s.attn})"}
    res.update(columns=["ours", "transformers", "accounting", "MLA", "baseline"], setup=pick(s, MLA_SETUP))
    pair = {n: m.to(device) for n, m in build_pair(s).items()}
    res["setup_text"] = _setup_text(s, pair["transformers"].config)
    res["parity"], failures = _parity(pair, s, device)
    if failed := parity_gate("mla", res, failures):
        return failed
    models = {n: m.to(dtype) for n, m in pair.items()}
    at = {c: decode_at(s, models, c, device) for c in s.mla_contexts}
    if device.type == "cpu":
        for c, peaks in _cpu_memory(s).items():
            at[c]["peak_bytes"] = peaks
    expected = {c: cache_bytes_per_token(models["ours"].config, c, dtype)["total_bytes"] for c in s.mla_contexts}
    metrics = _decode_metrics(s, at, expected) | claim_metrics()
    if s.plot:
        plot_decode_latency("mla", s.plot, {c: {n: x * 1e3 for n, x in per_token(s, r["decode_s"]).items()} for c, r in at.items()})
        log.info(f"[mla] decode plot written to {s.plot}")
    raw = {key: {c: r[key] for c, r in at.items()} for key in ("decode_s", "cache_bytes", "peak_bytes", "prefill_logit_diff")}
    log.info(f"[mla] last-logit difference after each prefill (ours vs transformers): {raw['prefill_logit_diff']}")
    return {**res, "metrics": metrics, "raw": {**raw, "accounting_cache_bytes": expected}, "status": "ok"}


def _setup_text(s, cfg) -> str:
    return (
        f"DeepseekV3ForCausalLM: hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers (the first dense, MLP "
        f"{cfg.intermediate_size}), {cfg.num_attention_heads} heads, q_lora_rank {cfg.q_lora_rank}, kv_lora_rank "
        f"{cfg.kv_lora_rank}, qk_nope {cfg.qk_nope_head_dim} + qk_rope {cfg.qk_rope_head_dim}, v {cfg.v_head_dim}, "
        f"{cfg.n_routed_experts} experts of {cfg.moe_intermediate_size} top-{cfg.num_experts_per_tok} + 1 shared, "
        f"vocab {cfg.vocab_size}; ours from `from_hf` of it. Decode: batch 1, each context prefilled in chunks of "
        f"{PREFILL_CHUNK} (not timed), then {s.decode_steps} greedy one-token steps per call, {s.repeats} calls each "
        f"interleaved after a warm-up, median per token. Cache after prefill: the tensors each DynamicCache holds, "
        f"beside `cache_bytes_per_token` at that context. Peak memory: growth during one call of the decode steps. "
        f"{s.device}, {s.dtype}. Claim rows (bf16): V3 = preset deepseek-v3 against the MHA its heads would cache; "
        f"V2 = DeepSeek-V2's shape against DeepSeek 67B's GQA ({DEEPSEEK_67B_GQA_BYTES:,} B/token: 95 layers x 8 KV "
        f"heads x 128 x (K, V) x 2 B), unquantized and at {KV_BITS_FOR_93} bits a value (the paper's 93.3%); the "
        f"claim's 213.5 vs 7.6 at 128K tokens is 61 layers x (K, V of d_model {V3_WIDTH}) vs a latent of 512 without "
        f"the RoPE key, in GiB."
    )
