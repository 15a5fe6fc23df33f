"""recall suite: multi-query associative recall (MQAR, Zoology arXiv 2312.04927; layers.md §6a) per
token mixer. For each mixer and learning rate a 2-layer `({mixer}/mlp)x2` model of one width is
trained with AdamW on MQAR at one sequence length, its batches mixing every number of key-value
pairs; held-out examples (other seeds) then give the accuracy per number of pairs, the best over
the learning rates reported (Zoology's convention). Beside it, the bytes each layer caches at that
length from the accounting (a fixed state for the recurrent mixers, keys and values for attention),
and the survey's "Gated DeltaNet beats Mamba-2 on recall" against the two measured means."""

import math
import time

import torch

from ..data.mqar import MQARConfig, make_mqar, mqar_accuracy
from .harness import log
from .report import metric
from .settings import pick

RECALL_SETUP = (
    *("mixers", "recall_width", "recall_vocab", "recall_seq_len", "recall_kv_pairs"),
    *("recall_steps", "recall_batch", "recall_lrs", "attn"),
)
# Heads of 16 at width 64 for every mixer: attention, retention, linear attention and DeltaNet derive
# theirs from HEADS, mamba2 and rwkv7 are given the head dim below.
HEADS = 4
CHUNK = 32  # the recurrent mixers' chunk: at sequence 64 as fast as 16 and faster than 64 (measured)
MIXER_FIELDS = {
    "retention": dict(retention_chunk_size=CHUNK),
    "linear_attn": dict(linear_attn_chunk_size=CHUNK),
    "mamba2": dict(mamba2_head_dim=16, mamba2_d_state=16, mamba2_chunk_size=CHUNK),
    "deltanet": dict(delta_chunk_size=CHUNK),
    "gated_deltanet": dict(delta_chunk_size=CHUNK),
    "rwkv7": dict(rwkv7_head_dim=16),
}
TEST_EXAMPLES = 256  # per number of pairs
WEIGHT_DECAY = 0.1
CLAIM = "Gated DeltaNet beats Mamba-2 on recall"
CLAIM_PAIR = ("gated_deltanet", "mamba2")


def bench_recall(s) -> dict:
    from ..mixers import MIXER_CLASSES

    columns = [f"kv {k}" for k in s.recall_kv_pairs]
    state_col = f"cache B/layer @{s.recall_seq_len}"
    res = {"title": "MQAR recall accuracy per token mixer (2 layers, same width)", "setup": pick(s, RECALL_SETUP)}
    res["columns"] = [*columns, "mean", state_col]
    skipped = {m: "not in hf_llmarch.mixers.MIXER_CLASSES" for m in s.mixers if m not in MIXER_CLASSES}
    train, tests = _data(s)
    metrics, raw = {}, {}
    for mixer in s.mixers:
        if mixer in skipped:
            log.info(f"[recall] {mixer} skipped: {skipped[mixer]}")
            metrics[mixer] = {**metric("accuracy", {}), "skipped": skipped[mixer]}
            continue
        raw[mixer] = {lr: _train_and_test(s, mixer, lr, train, tests) for lr in s.recall_lrs}
        best = {k: max(r["accuracy"][k] for r in raw[mixer].values()) for k in s.recall_kv_pairs}
        values = {f"kv {k}": a for k, a in best.items()} | {"mean": sum(best.values()) / len(best)}
        metrics[mixer] = metric("accuracy", values | {state_col: _state_bytes(s, model_config(s, mixer))})
    claim = claim_line({m: r["values"]["mean"] for m, r in metrics.items() if "skipped" not in r}, chance_accuracy(s))
    log.info(f"[recall] {claim}")
    if s.plot:
        curves = {m: [r["values"][c] for c in columns] for m, r in metrics.items() if "skipped" not in r}
        plot_recall(s.plot, s.recall_kv_pairs, curves, chance_accuracy(s))
        log.info(f"[recall] accuracy plot written to {s.plot}")
    res["setup_text"] = _setup_text(s, skipped, claim)
    return {**res, "metrics": metrics, "raw": raw, "skipped": skipped, "claim": claim, "status": "ok"}


def _data(s) -> tuple[dict, dict]:
    """The training stream (every number of pairs, shuffled together) and a held-out set per number."""
    per_kv = math.ceil(s.recall_steps * s.recall_batch / len(s.recall_kv_pairs))
    parts = [make_mqar(_config(s, k, per_kv, seed=k)) for k in s.recall_kv_pairs]
    order = torch.randperm(per_kv * len(parts), generator=torch.Generator().manual_seed(0))
    train = {key: torch.cat([p[key] for p in parts])[order] for key in ("input_ids", "labels")}
    # Seeds from 10_000 never meet the training seeds (the pair counts), so no test example was trained on.
    tests = {k: make_mqar(_config(s, k, TEST_EXAMPLES, seed=10_000 + k)) for k in s.recall_kv_pairs}
    return train, tests


def _config(s, kv: int, examples: int, seed: int) -> MQARConfig:
    # Zero non-query slots as in the Zoology paper grid: random fillers slow learning at this scale.
    return MQARConfig(
        vocab_size=s.recall_vocab, input_seq_len=s.recall_seq_len, num_kv_pairs=kv, num_examples=examples,
        random_non_queries=False, seed=seed,
    )


def model_config(s, mixer: str):
    """`({mixer}/mlp)x2` of width `recall_width`; RoPE for attention only (the others are causal by construction)."""
    from ..models.hybrid import LlmArchHybridConfig

    width = s.recall_width
    return LlmArchHybridConfig(
        vocab_size=s.recall_vocab, hidden_size=width, intermediate_size=2 * width, num_attention_heads=HEADS,
        num_key_value_heads=HEADS, layer_pattern=f"({mixer}/mlp)x2", max_position_embeddings=s.recall_seq_len,
        position_embedding_type="rope" if mixer == "attn" else "none", attn_implementation=s.attn,
        **MIXER_FIELDS.get(mixer, {}),
    )


def _train_and_test(s, mixer: str, lr: float, train: dict, tests: dict) -> dict:
    """AdamW at a constant `lr` over the training stream in order, then held-out accuracy per pair count."""
    from ..models.hybrid import LlmArchHybridForCausalLM

    device = torch.device(s.device)
    torch.manual_seed(0)  # every mixer and lr starts from the same seed and sees the same batches
    model = LlmArchHybridForCausalLM(model_config(s, mixer)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    start, b = time.perf_counter(), s.recall_batch
    for step in range(s.recall_steps):
        batch = {key: t[step * b : (step + 1) * b].to(device) for key, t in train.items()}
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    accuracy = _accuracy(model.eval(), tests, device)
    accs = ", ".join(f"kv {k} {a:.3f}" for k, a in accuracy.items())
    log.info(f"[recall] {mixer:<16} lr {lr:g}: {accs} (final train loss {loss.item():.3f}, {seconds:.0f} s)")
    return {"accuracy": accuracy, "final_loss": loss.item(), "train_s": seconds}


@torch.no_grad()
def _accuracy(model, tests: dict, device) -> dict[int, float]:
    return {
        k: mqar_accuracy(model(input_ids=t["input_ids"].to(device), use_cache=False).logits.cpu(), t["labels"])
        for k, t in tests.items()
    }


def _state_bytes(s, cfg) -> int | None:
    """fp32 bytes one layer caches at `recall_seq_len` tokens; None where the accounting lacks the mixer."""
    from ..accounting import cache_bytes_per_token

    try:
        return cache_bytes_per_token(cfg, s.recall_seq_len, torch.float32)["total_bytes"] // cfg.num_hidden_layers
    except NotImplementedError:
        return None


def claim_line(means: dict[str, float], chance: float) -> str:
    """The survey's claim beside the measured mean accuracies of its two mixers."""
    a, b = CLAIM_PAIR
    if a not in means or b not in means:
        return f"survey claim: {CLAIM}; measured: not tested ({a} and {b} were not both trained)"
    verdict = "holds" if means[a] > means[b] else "does not hold"
    if max(means[a], means[b]) < 2 * chance:  # neither learned the task: the difference is noise
        verdict = f"undecided (both under twice chance, {chance:.3f}: neither learned)"
    measured = f"{a} {means[a]:.3f} vs {b} {means[b]:.3f} mean accuracy"
    return f"survey claim: {CLAIM}; measured: {measured} -> {verdict} at this scale"


def plot_recall(path: str, kv_pairs: list[int], accuracy: dict[str, list[float]], chance: float) -> None:
    """Accuracy over the number of key-value pairs, one line per mixer, and chance dotted."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for mixer, accs in accuracy.items():
        ax.plot(kv_pairs, accs, marker="o", label=mixer)
    ax.axhline(chance, color="gray", linestyle=":", label="chance")
    ax.set(xscale="log", xlabel="key-value pairs", ylabel="held-out accuracy", ylim=(-0.02, 1.02))
    ax.set_title("recall suite: MQAR")
    ax.set_xticks(kv_pairs, [str(k) for k in kv_pairs])
    ax.minorticks_off()
    ax.legend(loc="center left", bbox_to_anchor=(1, 0.5))  # outside: lines of equal accuracy overlap
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def chance_accuracy(s) -> float:
    """Accuracy of a uniform guess among the values, the upper half of the vocabulary."""
    return 1 / (s.recall_vocab - s.recall_vocab // 2)


def _setup_text(s, skipped: dict, claim: str) -> str:
    skips = "".join(f" {m}: skipped ({why})." for m, why in skipped.items())
    pairs, lrs = ", ".join(map(str, s.recall_kv_pairs)), ", ".join(f"{lr:g}" for lr in s.recall_lrs)
    return (
        f"`({{mixer}}/mlp)x2`, hidden {s.recall_width}, MLP {2 * s.recall_width}, {HEADS} heads (attention with RoPE, "
        f"the rest without positions), mamba2 and rwkv7 heads of 16, mamba2 state 16, chunk {CHUNK}; MQAR (Zoology "
        f"generator, vocab {s.recall_vocab}, sequence {s.recall_seq_len}, zero non-query slots), training batches of "
        f"{s.recall_batch} mixing {pairs} pairs, {s.recall_steps} AdamW steps (constant lr, weight decay {WEIGHT_DECAY} "
        f"on every parameter, seed 0) per lr in {lrs}; "
        f"accuracy on {TEST_EXAMPLES} held-out examples per pair count, best lr per cell; {s.device}, fp32. Cache: "
        f"fp32 bytes a layer holds after {s.recall_seq_len} tokens (`cache_bytes_per_token`): fixed state and conv "
        f"window for the recurrent mixers, keys and values (growing with length) for attention. Chance is "
        f"{chance_accuracy(s):.3f} (one of the vocabulary's upper half); a model that has learned only which tokens "
        f"are values in the context scores about 1 / pairs. {claim}.{skips}"
    )
