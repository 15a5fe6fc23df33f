"""mtp suite: self-speculative decoding with DeepSeek-V3's multi-token prediction on a tiny trained
model. A `deepseek-v3-tiny`-shaped model with one MTP module is trained (`--mtp-steps` AdamW steps,
LM + MTP loss) on the embedded corpus with the byte tokenizer; then greedy `generate()` and
`generate(custom_generate=mtp_generate)` decode the same held-out prompts, interleaved. Before any
timing both must give identical tokens. Reported: the drafter's acceptance rate, main-model
forwards per generated token, and the tokens/s of each with their ratio."""

import torch

from ..data.corpus import default_corpus
from ..data.lm_data import make_lm_datasets
from ..data.tokenizer import byte_tokenizer
from .harness import interleave, log, median, parity_gate
from .report import metric
from .settings import pick

MTP_SETUP = ("mtp_steps", "prompt", "new_tokens", "repeats")
BLOCK = 128
PROMPTS = 4


def bench_mtp(s) -> dict:
    from ..models.mtp_generate import mtp_generate

    res = {"title": "MTP self-speculative decoding vs greedy (same trained model)", "columns": ["greedy", "mtp"]}
    res["setup"] = pick(s, MTP_SETUP)
    model, prompts, final_loss = _trained_model(s)
    runs = {
        "greedy": lambda: [_decode(model, p, s.new_tokens) for p in prompts],
        "mtp": lambda: [_decode(model, p, s.new_tokens, custom_generate=mtp_generate) for p in prompts],
    }
    outputs = {name: run() for name, run in runs.items()}
    stats = _speculation_stats(model, prompts, s.new_tokens, mtp_generate)
    same = all(torch.equal(a, b) for a, b in zip(outputs["greedy"], outputs["mtp"]))
    res["parity"] = {"identical_tokens": same, "passed": same}
    if failed := parity_gate("mtp", res, [] if same else ["mtp_generate's tokens differ from greedy's"]):
        return failed
    tokens = PROMPTS * s.new_tokens
    times = interleave("mtp", "decode", runs, s.repeats, torch.device("cpu"), lambda t: f"{tokens / t:,.1f} tok/s")
    tps = {name: tokens / median(t) for name, t in times.items()}
    metrics = {
        "decode tokens/s": metric("tok/s", tps, ("mtp", "greedy")),
        "draft acceptance rate": metric("accepted/drafted", {"mtp": stats["acceptance_rate"]}),
        "main-model forwards per token": metric("forwards", {"greedy": 1.0, "mtp": stats["main_forwards"] / tokens}),
    }
    res["setup_text"] = (
        f"deepseek-v3-tiny shape with one MTP module, trained {s.mtp_steps} steps (batch 8 x {BLOCK} bytes, AdamW "
        f"3e-3, mtp_loss_weight 0.3) on the embedded corpus, final train loss {final_loss:.3f}; {PROMPTS} held-out "
        f"prompts of {s.prompt} bytes, {s.new_tokens} new tokens each, batch 1, cpu, fp32, median of {s.repeats}."
    )
    return {**res, "metrics": metrics, "raw": {"decode_s": times, "speculation": stats}, "status": "ok"}


def _trained_model(s):
    """(model, held-out prompts [1, prompt] each, last training loss)."""
    from .. import load_preset
    from ..models.deepseek import LlmArchDeepseekForCausalLM

    tokenizer = byte_tokenizer()
    train, held_out = make_lm_datasets(default_corpus(400_000), tokenizer, block_size=BLOCK)
    torch.manual_seed(0)
    model = LlmArchDeepseekForCausalLM(load_preset("deepseek-v3-tiny", num_nextn_predict_layers=1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    loader = torch.utils.data.DataLoader(train, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
    loss = None
    for step, batch in zip(range(s.mtp_steps), _forever(loader)):
        loss = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0:
            log.info(f"[mtp] train step {step}/{s.mtp_steps} loss {loss.item():.3f}")
    prompts = [held_out[i]["input_ids"][: s.prompt][None] for i in range(min(PROMPTS, len(held_out)))]
    return model.eval(), prompts, loss.item()


def _forever(loader):
    while True:
        yield from loader


def _decode(model, prompt, new_tokens: int, **kwargs):
    return model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, **kwargs)


def _speculation_stats(model, prompts, new_tokens: int, mtp_generate) -> dict:
    """Drafts, acceptances and main forwards summed over the prompts."""
    totals = {"drafted": 0, "accepted": 0, "main_forwards": 0}
    for prompt in prompts:
        _decode(model, prompt, new_tokens, custom_generate=mtp_generate)
        for key in totals:
            totals[key] += model.last_mtp_generation[key]
    return {**totals, "acceptance_rate": totals["accepted"] / max(totals["drafted"], 1)}
