"""topology suite: the non-causal topologies against transformers' own models, each pair converted
with `from_hf` from a random native model (same weights, `--attn` on both): `llmarch_encoder` vs
`BertModel` (forward tokens/s without grad, peak memory), `llmarch_seq2seq` vs
`T5ForConditionalGeneration` and `BartForConditionalGeneration` (greedy `generate` tokens/s, peak
memory) and vs the T5 again for a training step (forward + backward tokens/s, peak memory).

Parity of every pair first: the encoder's last_hidden_state within PARITY_TOL at the real positions
of a right-padded batch; the seq2seq logits within PARITY_TOL given decoder inputs (right-padded
encoder batch), and identical greedy tokens on the timed prompt. Only then is anything timed.
`--quick` takes the shared tiny shape flags (hidden, layers, heads, intermediate, vocab) for every
model and the tiny batch / seq / prompt / new-tokens for the workloads."""

import torch

from .dense import _tokens_differing
from .harness import PARITY_TOL, cpu_peaks, cuda_peak, interleave, median, parity_gate, rss_growth
from .report import metric
from .settings import DTYPES

TOPOLOGY_SPEED_GOAL = (">=", 1.0)
PAIR = ("ours", "transformers")
ENCODER, T5, BART = "BertModel", "T5ForConditionalGeneration", "BartForConditionalGeneration"
# The full shapes: (hidden, layers per stack, heads, feed-forward width, vocab).
SHAPES = {
    ENCODER: dict(hidden=512, layers=8, heads=8, ffn=2048, vocab=30522),
    T5: dict(hidden=512, layers=6, heads=8, ffn=1024, vocab=32128),
    BART: dict(hidden=512, layers=6, heads=8, ffn=2048, vocab=50265),
}
T5_HEAD_DIM = 64  # d_kv
# encode: batch x seq of the encoder forward; generate: batch 1, input tokens, new tokens (min = max,
# so both decode the same length); train: batch x (input, target) tokens of the T5 step.
WORKLOAD = dict(encode_batch=8, encode_seq=128, gen_input=128, gen_new=64, train_batch=4, train_input=128, train_target=64)
# What is measured of which reference.
MEASURED = {ENCODER: ("encode",), T5: ("generate", "train"), BART: ("generate",)}
PRELOAD = tuple(f"transformers.models.{m}.modeling_{m}" for m in ("bert", "t5", "bart"))


def shapes(s) -> dict:
    """{reference: shape}; under --quick every model takes the shared (tiny) shape flags."""
    if not s.quick:
        return SHAPES
    tiny = dict(hidden=s.hidden, layers=s.layers, heads=s.heads, ffn=s.intermediate, vocab=s.vocab)
    return dict.fromkeys(SHAPES, tiny)


def workload(s) -> dict:
    if not s.quick:
        return WORKLOAD
    return dict(
        encode_batch=max(s.batch, 2), encode_seq=s.seq, gen_input=s.prompt, gen_new=s.new_tokens,
        train_batch=s.batch, train_input=s.seq, train_target=s.prompt,
    )


def _bert(shape: dict, attn: str):
    from transformers import AutoModel, BertConfig

    cfg = BertConfig(
        vocab_size=shape["vocab"], hidden_size=shape["hidden"], num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"], intermediate_size=shape["ffn"],
    )
    return AutoModel.from_config(cfg, attn_implementation=attn)


def _t5(shape: dict, attn: str):
    """T5 v1.1-style: gated-gelu, untied output layer. The start id as t5's config.json has it: 5.24's
    T5Config no longer sets one, and its training forward (labels shifted right) needs it."""
    from transformers import AutoModelForSeq2SeqLM, T5Config

    cfg = T5Config(
        vocab_size=shape["vocab"], d_model=shape["hidden"], d_kv=min(T5_HEAD_DIM, shape["hidden"] // shape["heads"]),
        d_ff=shape["ffn"], num_layers=shape["layers"], num_decoder_layers=shape["layers"], num_heads=shape["heads"],
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0,
    )
    return AutoModelForSeq2SeqLM.from_config(cfg, attn_implementation=attn)


def _bart(shape: dict, attn: str):
    from transformers import AutoModelForSeq2SeqLM, BartConfig

    cfg = BartConfig(
        vocab_size=shape["vocab"], d_model=shape["hidden"], encoder_layers=shape["layers"], decoder_layers=shape["layers"],
        encoder_attention_heads=shape["heads"], decoder_attention_heads=shape["heads"], encoder_ffn_dim=shape["ffn"],
        decoder_ffn_dim=shape["ffn"],
    )
    return AutoModelForSeq2SeqLM.from_config(cfg, attn_implementation=attn)


BUILDERS = {ENCODER: _bert, T5: _t5, BART: _bart}


def build_pair(s, ref: str) -> dict:
    """{"ours": from_hf(native), "transformers": native}, fp32 on CPU, identical weights (seed 0)."""
    from ..convert import from_hf

    torch.manual_seed(0)
    native = BUILDERS[ref](shapes(s)[ref], s.attn)
    return {"ours": from_hf(native), "transformers": native}


def _ids(vocab: int, shape: tuple, seed: int, device) -> torch.Tensor:
    return torch.randint(3, vocab, shape, generator=torch.Generator().manual_seed(seed)).to(device)


def _right_padded(vocab: int, batch: int, seq: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) with the last row right-padded (pad id 0) from about two thirds in."""
    ids, mask = _ids(vocab, (batch, seq), 2, device), torch.ones(batch, seq, dtype=torch.long, device=device)
    ids[-1, 2 * seq // 3 :], mask[-1, 2 * seq // 3 :] = 0, 0
    return ids, mask


def _start(model) -> int:
    """The decoder's first token: the generation config's, the config's, else the pad id (T5's start,
    which transformers 5.24's T5Config no longer names)."""
    for source in (model.generation_config, model.config):
        if (start := getattr(source, "decoder_start_token_id", None)) is not None:
            return start
    return model.config.pad_token_id


def _generate(model, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy, exactly `new_tokens` new tokens; T5 from a config lacks the start id in its generation config."""
    model.eval()
    return model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, num_beams=1, min_new_tokens=new_tokens,
        max_new_tokens=new_tokens, use_cache=True, decoder_start_token_id=_start(model),
    )


def calls(model, s, ref: str, device) -> dict:
    """The measured calls of one model on fixed random inputs: {what: fn}."""
    w, vocab = workload(s), shapes(s)[ref]["vocab"]
    out = {}
    if "encode" in MEASURED[ref]:
        ids = _ids(vocab, (w["encode_batch"], w["encode_seq"]), 1, device)

        @torch.no_grad()
        def encode():
            model.eval()
            model(input_ids=ids, attention_mask=torch.ones_like(ids))

        out["encode"] = encode
    if "generate" in MEASURED[ref]:
        prompt = _ids(vocab, (1, w["gen_input"]), 1, device)
        out["generate"] = lambda: _generate(model, prompt, w["gen_new"])
    if "train" in MEASURED[ref]:
        src = _ids(vocab, (w["train_batch"], w["train_input"]), 3, device)
        labels = _ids(vocab, (w["train_batch"], w["train_target"]), 4, device)

        def train():
            model.train()
            model(input_ids=src, attention_mask=torch.ones_like(src), labels=labels, use_cache=False).loss.backward()
            model.zero_grad(set_to_none=True)

        out["train"] = train
    return out


def tokens_per_call(s) -> dict:
    w = workload(s)
    return {
        "encode": w["encode_batch"] * w["encode_seq"],
        "generate": w["gen_new"],  # batch 1
        "train": w["train_batch"] * (w["train_input"] + w["train_target"]),  # encoder and decoder tokens
    }


@torch.no_grad()
def parity(pairs: dict, s, device) -> tuple[dict, list[str]]:
    """Encoder: last_hidden_state at real positions of a right-padded batch. Seq2seq: logits given
    decoder inputs (right-padded encoder batch), and the greedy tokens of the timed prompt."""
    fields, failures, w = {}, [], workload(s)
    for ref, pair in pairs.items():
        vocab = shapes(s)[ref]["vocab"]
        for m in pair.values():
            m.eval()
        if ref == ENCODER:
            ids, mask = _right_padded(vocab, 2, min(w["encode_seq"], 64), device)
            ours, theirs = (m(input_ids=ids, attention_mask=mask).last_hidden_state for m in pair.values())
            real = mask.bool()
            diff = (ours[real] - theirs[real]).abs().max().item()
            fields[f"max_abs_hidden_diff[{ref}]"] = diff
            if not diff <= PARITY_TOL:  # `not <=` so that a NaN fails too
                failures.append(f"{ref} last_hidden_state: max_abs_hidden_diff {diff:.3g} > tolerance {PARITY_TOL:g}")
            continue
        ids, mask = _right_padded(vocab, 2, min(w["gen_input"], 64), device)
        decoder_ids = _ids(vocab, (2, min(w["gen_new"], 32)), 5, device)
        ours, theirs = (m(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits for m in pair.values())
        diff = (ours - theirs).abs().max().item()
        fields[f"max_abs_logit_diff[{ref}]"] = diff
        if not diff <= PARITY_TOL:
            failures.append(f"{ref} logits: max_abs_logit_diff {diff:.3g} > tolerance {PARITY_TOL:g}")
        prompt = _ids(vocab, (1, w["gen_input"]), 1, device)  # the timed prompt
        new = [_generate(m, prompt, w["gen_new"])[0, 1:] for m in pair.values()]  # after the start token
        differing, first = _tokens_differing(*new)
        fields[f"greedy_tokens_differing[{ref}]"] = differing
        if differing:
            failures.append(f"{ref} greedy tokens: {differing} of {len(new[1])} new tokens differ, first at new token {first}")
    return {**fields, "tolerance": PARITY_TOL, "passed": not failures}, failures


def cpu_peak_worker(job: dict) -> int:
    """Runs in a fresh forked process: build one pair, measure one model's call's peak RSS growth."""
    settings = job["settings"]
    if settings.threads:
        torch.set_num_threads(settings.threads)
    model = build_pair(settings, job["ref"])[job["model"]].to(DTYPES[settings.dtype])
    return rss_growth(calls(model, settings, job["ref"], torch.device("cpu"))[job["call"]])


def _memory(s, pairs: dict, device) -> dict:
    """{(ref, call): {model: peak bytes or None}}."""
    keys = [(ref, call) for ref in pairs for call in MEASURED[ref]]
    if s.no_memory:
        return {key: dict.fromkeys(PAIR) for key in keys}
    # `what` labels cpu_peaks' log line; `call` is the measured call.
    jobs = [{"settings": s, "ref": ref, "call": call, "model": m, "what": f"{call}/{ref[:4]}"} for ref, call in keys for m in PAIR]
    if device.type == "cuda":
        peaks = [cuda_peak(calls(pairs[j["ref"]][j["model"]], s, j["ref"], device)[j["call"]], device) for j in jobs]
    else:
        peaks = cpu_peaks("topology", jobs, cpu_peak_worker, PRELOAD)
    out = {key: {} for key in keys}
    for job, peak in zip(jobs, peaks):
        out[(job["ref"], job["call"])][job["model"]] = peak
    return out


ROW_NAMES = {"encode": "encoder forward", "generate": "generate", "train": "train"}


def bench_topology(s) -> dict:
    device, dtype = torch.device(s.device), DTYPES[s.dtype]
    res = {"title": f"topologies: llmarch_encoder vs BertModel, llmarch_seq2seq vs T5 / BART (same weights, {s.attn})"}
    res.update(columns=list(PAIR), setup={"shapes": shapes(s), **workload(s), "repeats": s.repeats, "attn": s.attn})
    pairs = {ref: {n: m.to(device) for n, m in build_pair(s, ref).items()} for ref in BUILDERS}
    res["setup_text"] = describe(s, pairs)
    res["parity"], failures = parity(pairs, s, device)
    if failed := parity_gate("topology", res, failures):
        return failed
    pairs = {ref: {n: m.to(dtype) for n, m in pair.items()} for ref, pair in pairs.items()}
    per_call, times = tokens_per_call(s), {}
    for ref, pair in pairs.items():
        fns = {n: calls(m, s, ref, device) for n, m in pair.items()}
        for what in MEASURED[ref]:
            tokens = per_call[what]
            label = f"{ROW_NAMES[what]} vs {ref.removesuffix('ForConditionalGeneration')}"
            times[(ref, what)] = interleave(
                "topology", label, {n: f[what] for n, f in fns.items()}, s.repeats, device, lambda t, k=tokens: f"{k / t:,.0f} tok/s"
            )
    peaks = _memory(s, pairs, device)
    metrics = {}
    for (ref, what), t in times.items():
        tps = {n: per_call[what] / median(x) for n, x in t.items()}
        mib = {n: None if b is None else b / 2**20 for n, b in peaks[(ref, what)].items()}
        metrics[f"{ROW_NAMES[what]} tokens/s vs {ref}"] = metric("tok/s", tps, PAIR, TOPOLOGY_SPEED_GOAL)
        metrics[f"{ROW_NAMES[what]} peak memory vs {ref}"] = metric("MiB", mib, PAIR)
    raw = {
        "seconds": {f"{what}/{ref}": t for (ref, what), t in times.items()},
        "peak_bytes": {f"{what}/{ref}": p for (ref, what), p in peaks.items()},
    }
    return {**res, "metrics": metrics, "raw": raw, "status": "ok"}


def describe(s, pairs: dict) -> str:
    """Shapes, workloads, dtype, threads and repeats of this run."""
    w, sh = workload(s), shapes(s)
    t5 = pairs[T5]["transformers"].config
    bert, bart = sh[ENCODER], sh[BART]
    return (
        f"BertModel: hidden {bert['hidden']}, {bert['layers']} layers, {bert['heads']} heads, intermediate {bert['ffn']}, "
        f"vocab {bert['vocab']}; T5ForConditionalGeneration: d_model {t5.d_model}, d_kv {t5.d_kv}, d_ff {t5.d_ff} "
        f"gated-gelu, {t5.num_layers}+{t5.num_decoder_layers} layers, {t5.num_heads} heads, vocab {t5.vocab_size}, untied "
        f"output; BartForConditionalGeneration: d_model {bart['hidden']}, {bart['layers']}+{bart['layers']} layers, "
        f"{bart['heads']} heads, ffn {bart['ffn']}, vocab {bart['vocab']}; ours from `from_hf` of each (seed 0). "
        f"Encoder: forward without grad (eval) of batch {w['encode_batch']} x seq {w['encode_seq']}. Generate: greedy, "
        f"batch 1, input {w['gen_input']} tokens, {w['gen_new']} new tokens (min_new_tokens = max_new_tokens), the "
        f"native generation config on both. Train (T5 pair): forward + backward of the LM loss (dropout on) at batch "
        f"{w['train_batch']} x ({w['train_input']} in, {w['train_target']} out), tokens/s counting input and target "
        f"tokens. Peak memory: growth during one call. {s.attn}, {s.device}, {s.dtype}, {torch.get_num_threads()} "
        f"threads, median of {s.repeats} interleaved repeats after a warm-up."
    )
