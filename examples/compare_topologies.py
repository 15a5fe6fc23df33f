"""Train a causal decoder, a prefix decoder and a RedLLM encoder-decoder of equal size on the same
tokens, and set the survey's claims about the three topologies beside what they measure.

    python examples/compare_topologies.py --plot runs/topologies.png --json runs/topologies.json

The three share llama-tiny's width and heads, the seed, the optimizer and schedule, and the training
blocks in the same order (steps x batch x block tokens each). RedLLM has 2 encoder + 2 decoder layers
against the decoders' 4 and a narrower FFN (288 against 352 at hidden 128), which pays for its
cross-attention: the parameter counts match to 0.05%. Each trains on its own objective (the decoder
every token; the prefix decoder and RedLLM the second half of a block given the first) and all are
scored on one task, the loss of the second half of held-out blocks given the first half.

Printed and drawn: that loss along training; greedy decoding tokens/s at batch 1; the generation
cache per token, measured after generate() and from `hf_llmarch.accounting`; and perplexity at 1x,
2x and 4x the training block. Then four claims, each with its measurement and a verdict: RedLLM
extrapolates better (survey 002); pretraining compute efficiency decoder > prefix > encoder-decoder
(004, 002), read at the smallest of the three training-FLOP totals, where the longer runs are caught
mid-schedule (not yet annealed, a handicap to them); a decoder-only model caches less (004); RedLLM is
cheaper at inference (002).

The default run (300 steps of 16 x 64 tokens, hidden 128) takes about 2 minutes (1:42 to 2:05
measured, one thread, while other jobs shared the 2-core machine); `--tiny` is a 15-second smoke run.
"""

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, get_cosine_schedule_with_warmup

import hf_llmarch  # registers the llmarch_* model types with the Auto classes
from hf_llmarch.accounting import count_parameters, flops_per_token, summarize
from hf_llmarch.compat import output_cache
from hf_llmarch.data import PrefixLMCollator, PrefixToSeq2SeqCollator, byte_tokenizer, load_text, make_lm_datasets
from hf_llmarch.training_report import require_matplotlib

PAD = 257
KINDS = ("decoder", "prefix", "redllm")
LABELS = {"decoder": "causal decoder", "prefix": "prefix decoder", "redllm": "RedLLM (enc-dec)"}
LENGTHS = (1, 2, 4)  # evaluation lengths, in training blocks
EVALS = 8  # eval points along the run, besides step 0
CURVE_BLOCKS = 64  # held-out blocks per eval point along the run
GEN_PROMPTS, GEN_REPEATS = 3, 3
# Below these gaps a verdict is "undecided", not a coin flip. Loss (nats/token): a second seed of the
# default run moved the losses and the 1x -> 4x rises compared here by up to 0.055. Speed: a ratio.
LOSS_TOL, SPEED_TOL = 0.05, 0.05
TINY = dict(steps=4, block=16, batch=2, hidden=32, new_tokens=8, eval_blocks=4)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--block", type=int, default=64, help="training block length L (tokens)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=128, help="width of all three (a multiple of 4: 4 heads)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--new-tokens", type=int, default=64, help="greedy tokens per generate() for the speed")
    parser.add_argument("--eval-blocks", type=int, default=None, help="held-out blocks of 4L (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    # One thread: at these widths a second one gains little, and threads that share their cores with other
    # processes spin-wait (the default run took 16 minutes with 2 threads on a busy 2-core machine, 2 with 1).
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--plot", default=None, help="write the four panels to this PNG")
    parser.add_argument("--json", default=None, help="write every figure to this JSON file")
    parser.add_argument("--tiny", action="store_true", help=f"a seconds-long smoke run: {TINY}")
    args = parser.parse_args(argv)
    if args.tiny:  # TINY becomes the defaults, so a flag given explicitly still wins
        parser.set_defaults(**TINY)
        args = parser.parse_args(argv)
    return args


def configs(hidden: int, max_positions: int) -> dict:
    """The three configs: llama-tiny's shape at `hidden`, and RedLLM with its FFN narrowed until the
    parameter counts match (its decoder layers carry cross-attention the decoder's do not)."""
    shape = dict(hidden_size=hidden, intermediate_size=round(2.75 * hidden), num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=max_positions)
    decoder = hf_llmarch.load_preset("llama-tiny", **shape)
    target = count_parameters(decoder)["total"]

    def redllm(intermediate):
        fields = shape | dict(head_dim=hidden // 4, intermediate_size=intermediate)
        return hf_llmarch.load_preset("redllm-tiny", **fields)

    # The count is linear in the FFN width: one step of it gives the slope.
    wide = shape["intermediate_size"]
    slope = count_parameters(redllm(wide))["total"] - count_parameters(redllm(wide - 1))["total"]
    excess = count_parameters(redllm(wide))["total"] - target
    return {
        "decoder": decoder,
        "prefix": hf_llmarch.load_preset("llama-tiny", attention_mask_kind="prefix", **shape),
        "redllm": redllm(wide - round(excess / slope)),
    }


def build(kind: str, config, seed: int):
    torch.manual_seed(seed)  # the same initial draw for every topology
    auto = AutoModelForSeq2SeqLM if kind == "redllm" else AutoModelForCausalLM
    return auto.from_config(config)


def data(block: int, eval_blocks: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(train [N, L], held-out [M, 4L]) token blocks. Split at the longest evaluation length and cut
    the training blocks from that split, so no held-out text is trained on at any length."""
    longest = LENGTHS[-1] * block
    train_ds, eval_ds = make_lm_datasets(load_text(), byte_tokenizer(), block_size=longest)
    held_out = eval_ds.blocks[:eval_blocks]
    return train_ds.blocks.reshape(-1, block), held_out


def batch_for(kind: str, blocks: torch.Tensor, training: bool) -> dict:
    """One batch of `blocks` [B, T] in each topology's format. For the scores, every topology
    predicts exactly the second half: the decoder's first-half labels are masked."""
    examples = [{"input_ids": row} for row in blocks]
    if kind == "prefix":
        return PrefixLMCollator(pad_token_id=PAD, prefix_fraction=0.5)(examples)
    if kind == "redllm":
        # No eos after the targets: blocks are cut mid-text, and an eos would teach the decoder to stop
        # after L/2 tokens, which the longer evaluations would pay for.
        return PrefixToSeq2SeqCollator(pad_token_id=PAD, prefix_fraction=0.5)(examples)
    labels = blocks.clone()
    if not training:
        labels[:, : blocks.shape[1] // 2] = -100
    return {"input_ids": blocks, "labels": labels}


@torch.no_grad()
def second_half_loss(model, kind: str, blocks: torch.Tensor, chunk: int = 16) -> float:
    """Mean loss (nats/token) of the second half of each block given the first half."""
    model.eval()
    losses = [model(**batch_for(kind, blocks[i : i + chunk], training=False)).loss.item() * len(blocks[i : i + chunk])
              for i in range(0, len(blocks), chunk)]  # every row has the same number of targets
    model.train()
    return sum(losses) / len(blocks)


def train_flops_per_token(kind: str, config, block: int) -> float:
    """Training FLOPs per input token (accounting: 3x forward, each token at its full context)."""
    if kind != "redllm":
        return flops_per_token(config, block)["training"]
    half = block // 2
    flops = flops_per_token(config, half, encoder_context=half)
    return (flops["encoder"]["training"] + flops["training"]) / 2  # half encoder, half decoder tokens


def train(kind: str, config, train_blocks: torch.Tensor, curve_blocks: torch.Tensor, args) -> dict:
    """AdamW with warmup and cosine decay over the same shuffled blocks; the fair loss along the way."""
    model = build(kind, config, args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, args.steps // 10), args.steps)
    order = torch.randperm(len(train_blocks), generator=torch.Generator().manual_seed(args.seed))
    tokens_per_step = args.batch * args.block
    evals = {round(i * args.steps / EVALS) for i in range(1, EVALS + 1)}
    curve, seconds = [(0, second_half_loss(model, kind, curve_blocks))], 0.0
    for step in range(1, args.steps + 1):
        start = time.perf_counter()  # training steps only: the evaluations are not training cost
        rows = order[torch.arange((step - 1) * args.batch, step * args.batch) % len(order)]
        model(**batch_for(kind, train_blocks[rows], training=True)).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - start
        if step in evals:
            curve.append((step * tokens_per_step, second_half_loss(model, kind, curve_blocks)))
            print(f"  [{kind}] step {step}/{args.steps}, {step * tokens_per_step:,} tokens: held-out "
                  f"second-half loss {curve[-1][1]:.3f} ({seconds:.0f} s training)", flush=True)
    return {"model": model, "curve": curve, "train_s": seconds}


def extrapolation(model, kind: str, held_out: torch.Tensor, block: int) -> dict[int, float]:
    """Second-half loss at each length in LENGTHS x block: the held-out blocks cut to that length."""
    return {k: second_half_loss(model, kind, held_out.reshape(-1, k * block)) for k in LENGTHS}


def greedy(model, prompt: torch.Tensor, new_tokens: int, **extra):
    """Exactly `new_tokens` greedy tokens after `prompt` [T] (min = max: no early eos), batch 1."""
    ids = prompt[None]
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False, pad_token_id=PAD, **extra)


@torch.no_grad()
def decode_speed(models: dict, prompts: torch.Tensor, new_tokens: int) -> dict[str, float]:
    """Greedy tokens/s per model: the median over prompts x repeats, after a warm-up. The models take
    turns, so a load change on the machine hits all three alike."""
    for model in models.values():
        greedy(model.eval(), prompts[0], new_tokens)
    seconds = {kind: [] for kind in models}
    for _ in range(GEN_REPEATS):
        for prompt in prompts:
            for kind, model in models.items():
                start = time.perf_counter()
                greedy(model, prompt, new_tokens)
                seconds[kind].append(time.perf_counter() - start)
    return {kind: new_tokens / statistics.median(s) for kind, s in seconds.items()}


@torch.no_grad()
def cache_size(model, kind: str, config, prompt: torch.Tensor, new_tokens: int) -> dict:
    """Bytes the cache holds after one generate(), per token it holds, beside the accounting's figure."""
    cache = output_cache(greedy(model.eval(), prompt, new_tokens, return_dict_in_generate=True))
    prompt_len = len(prompt)
    if kind == "redllm":  # self K/V of the decoder tokens (the start token, all new ones but the last) + cross K/V
        stacks, held = [cache.self_attention_cache, cache.cross_attention_cache], new_tokens + prompt_len
        figures = summarize(config, context=new_tokens, dtype=torch.float32, encoder_context=prompt_len)["cache"]
        predicted = figures["sequence_total_bytes"]
    else:  # the last new token is never fed back
        stacks, held = [cache], prompt_len + new_tokens - 1
        figures = summarize(config, context=held, dtype=torch.float32)["cache"]
        predicted = figures["total_bytes"]
    tensors = [t for stack in stacks for layer in stack.layers for t in (layer.keys, layer.values)]
    measured = sum(t.numel() * t.element_size() for t in tensors)
    return {"cache_bytes_per_token": measured / held, "accounting_bytes_per_token": predicted / held,
            "accounting_cache": figures}


def at_flops(curve: list, flops_per_tok: float, budget: float) -> float:
    """The loss a curve of (tokens, loss) reaches at `budget` training FLOPs (linear in between)."""
    tokens, losses = zip(*curve)
    return float(np.interp(budget, np.array(tokens) * flops_per_tok, losses))


def compare(a: float, b: float, tol: float) -> str:
    return "<" if a < b - tol else ">" if a > b + tol else "="


def claims(r: dict) -> list[str]:
    """Each survey claim, its measurement and a verdict: holds / does not hold / undecided."""
    dec, pre, red = (r[k] for k in KINDS)
    longest = LENGTHS[-1]
    rise = {k: r[k]["extrapolation"][longest] - r[k]["extrapolation"][1] for k in KINDS}
    order = compare(rise["redllm"], rise["decoder"], LOSS_TOL)
    lines = [_claim(
        "RedLLM extrapolates beyond its training length better than the decoder-only model (survey 002)",
        f"second-half loss rise from 1x to {longest}x the training block: RedLLM {rise['redllm']:+.3f}, decoder "
        f"{rise['decoder']:+.3f}, prefix decoder {rise['prefix']:+.3f}",
        {"<": "holds", ">": "does not hold"}.get(order, "undecided"),
    )]
    budget = min(r[k]["train_flops"] for k in KINDS)
    loss = {k: at_flops(r[k]["curve"], r[k]["train_flops_per_token"], budget) for k in KINDS}
    steps = [compare(loss["decoder"], loss["prefix"], LOSS_TOL), compare(loss["prefix"], loss["redllm"], LOSS_TOL)]
    verdict = "holds" if steps == ["<", "<"] else "does not hold" if ">" in steps else "undecided"
    lines.append(_claim(
        "pretraining compute efficiency: causal decoder > prefix decoder > encoder-decoder (survey 004; 002: DecLLM "
        "dominates the compute-optimal frontier)",
        f"held-out second-half loss at the same training compute ({budget:.3g} FLOPs): decoder {loss['decoder']:.3f}, "
        f"prefix {loss['prefix']:.3f}, RedLLM {loss['redllm']:.3f} (at the same tokens: "
        + ", ".join(f"{k} {r[k]['curve'][-1][1]:.3f}" for k in KINDS) + ")",
        verdict,
    ))
    cache = {k: r[k]["cache_bytes_per_token"] for k in KINDS}
    lines.append(_claim(
        "a decoder-only model keeps one K/V cache, an encoder-decoder two, so it needs less cache (survey 004)",
        f"cache bytes per sequence token: decoder {cache['decoder']:,.0f}, RedLLM {cache['redllm']:,.0f}",
        "holds" if cache["decoder"] < cache["redllm"] else "does not hold",
    ))
    speed = red["tok_s"] / dec["tok_s"]
    # The prefix decoder decodes with the decoder's very layers: their gap is the timing noise.
    tol = max(SPEED_TOL, abs(pre["tok_s"] / dec["tok_s"] - 1))
    lines.append(_claim(
        "RedLLM is markedly cheaper at inference than the decoder-only model (survey 002)",
        f"greedy decoding at batch 1: RedLLM {red['tok_s']:.0f} tok/s, decoder {dec['tok_s']:.0f} tok/s "
        f"(x{speed:.2f}; noise {tol:.0%}: the prefix decoder, same layers, {pre['tok_s']:.0f} tok/s)",
        "holds" if speed > 1 + tol else "does not hold" if speed < 1 - tol else "undecided",
    ))
    return lines


def _claim(claim: str, measured: str, verdict: str) -> str:
    return f"survey claim: {claim}\n  measured: {measured}\n  -> {verdict} at this scale"


def table(r: dict, block: int) -> str:
    lengths = "".join(f"{f'ppl@{k * block}':>10}" for k in LENGTHS)
    rows = [f"{'model':<18}{'params':>10}{'loss start':>12}{'end':>8}{'train s':>9}{'train GFLOP':>13}"
            f"{'tok/s':>8}{'cache B/tok':>13}{'(accounting)':>14}{lengths}"]
    for kind in KINDS:
        x = r[kind]
        ppl = "".join(f"{math.exp(x['extrapolation'][k]):>10.2f}" for k in LENGTHS)
        rows.append(f"{LABELS[kind]:<18}{x['params']:>10,}{x['curve'][0][1]:>12.3f}{x['curve'][-1][1]:>8.3f}"
                    f"{x['train_s']:>9.1f}{x['train_flops'] / 1e9:>13.1f}{x['tok_s']:>8.0f}"
                    f"{x['cache_bytes_per_token']:>13,.0f}{x['accounting_bytes_per_token']:>14,.0f}{ppl}")
    return "\n".join(rows)


def write_plot(r: dict, block: int, path: str) -> None:
    """Four panels: fair loss against tokens, perplexity against eval length, decode tok/s, cache B/token."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    curves, lengths, speed, cache = axes.flat
    for kind in KINDS:
        tokens, losses = zip(*r[kind]["curve"])
        curves.plot(tokens, losses, marker="o", markersize=3, label=f"{LABELS[kind]} ({r[kind]['params'] / 1e6:.2f}M)")
        lengths.plot([k * block for k in LENGTHS], [math.exp(r[kind]["extrapolation"][k]) for k in LENGTHS],
                     marker="o", markersize=3, label=LABELS[kind])
    curves.set(xlabel="training tokens", ylabel="held-out second-half loss (nats/token)", title="Loss, same tokens")
    lengths.axvline(block, color="gray", linestyle=":", label="training length")
    lengths.set(xscale="log", xlabel="evaluation length (tokens)", ylabel="second-half perplexity",
                title="Length extrapolation")
    lengths.set_xticks([k * block for k in LENGTHS], [str(k * block) for k in LENGTHS])
    lengths.minorticks_off()
    names = [LABELS[k] for k in KINDS]
    speed.bar(names, [r[k]["tok_s"] for k in KINDS], color=["C0", "C1", "C2"])
    speed.set(ylabel="tokens/s", title="Greedy decoding, batch 1")
    x = np.arange(len(KINDS))
    cache.bar(x - 0.2, [r[k]["cache_bytes_per_token"] for k in KINDS], 0.4, label="measured")
    cache.bar(x + 0.2, [r[k]["accounting_bytes_per_token"] for k in KINDS], 0.4, label="accounting")
    cache.set_xticks(x, names)
    cache.set(ylabel="bytes per sequence token (fp32)", title="Generation cache")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    for ax in (curves, lengths, cache):
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.plot:
        require_matplotlib()  # fail before training, not after it
    cfgs = configs(args.hidden, max(1024, LENGTHS[-1] * args.block))
    train_blocks, held_out = data(args.block, args.eval_blocks)
    short = held_out.reshape(-1, args.block)
    curve_blocks, prompts = short[:CURVE_BLOCKS], short[:GEN_PROMPTS, : args.block // 2]
    budget = args.steps * args.batch * args.block
    print(f"token budget: {args.steps} steps x {args.batch} x {args.block} = {budget:,} tokens per model "
          f"(the same blocks, in the same order); held-out: {len(held_out)} blocks of {held_out.shape[1]}")
    results, models = {}, {}
    for kind in KINDS:
        params = sum(p.numel() for p in build(kind, cfgs[kind], args.seed).parameters())  # tied weights once
        print(f"training {LABELS[kind]} ({params:,} parameters) ...", flush=True)
        run = train(kind, cfgs[kind], train_blocks, curve_blocks, args)
        models[kind] = run.pop("model")
        per_token = train_flops_per_token(kind, cfgs[kind], args.block)
        results[kind] = {**run, "params": params, "train_flops_per_token": per_token, "train_flops": per_token * budget,
                         "extrapolation": extrapolation(models[kind], kind, held_out, args.block),
                         **cache_size(models[kind], kind, cfgs[kind], prompts[0], args.new_tokens)}
        print(f"  [{kind}] second-half loss at " + ", ".join(
            f"{k * args.block} tokens {v:.3f}" for k, v in results[kind]["extrapolation"].items()), flush=True)
    print("timing greedy decoding ...", flush=True)
    for kind, tok_s in decode_speed(models, prompts, args.new_tokens).items():
        results[kind]["tok_s"] = tok_s

    spread = max(r["params"] for r in results.values()) / min(r["params"] for r in results.values()) - 1
    print(f"\nloss = held-out second-half loss (nats/token) given the first half, the same task for all three "
          f"(each trained on its own objective): start and end on {len(curve_blocks)} blocks of {args.block}, "
          f"ppl@N on all the held-out text cut to N tokens. Parameters within {spread:.2%}; cache in fp32 after "
          f"{args.block // 2} prompt + {args.new_tokens} new tokens\n")
    print(table(results, args.block))
    red = results["redllm"]["accounting_cache"]
    print(f"RedLLM cache (accounting): self K/V {red['bytes_per_token']:,.0f} B per decoder token, cross K/V "
          f"{red['cross_attention']['bytes_per_encoder_token']:,} B per encoder token\n")
    verdicts = claims(results)
    print("\n".join(verdicts))
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        write_plot(results, args.block, args.plot)
        print(f"\nplot: {args.plot}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results, "claims": verdicts}, indent=1))
        print(f"json: {args.json}")


if __name__ == "__main__":
    main()
