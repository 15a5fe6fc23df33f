"""The demo's checks on a trained model: generation from a left-padded batch (each row equal to its
prompt alone), and save / reload of the model and its LoRA adapter reproducing the logits."""

import logging
import warnings
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

log = logging.getLogger("hf_llmarch.demo")

# Different lengths, so the batch is really left-padded and the padded path runs.
PROMPTS = ["Return", "If the file does not exist, the function ", "This class is "]
GENERATE_TOKENS = 64


@torch.no_grad()
def generate_samples(model, tokenizer, prompts=PROMPTS, max_new_tokens=GENERATE_TOKENS, seed=0) -> dict:
    """Greedy and sampled continuations of a left-padded batch of prompts."""
    model.eval()
    inputs = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
    lengths = inputs["attention_mask"].sum(dim=1).tolist()
    log.info(f"prompt lengths {lengths} tokens, left-padded to {inputs['input_ids'].shape[1]}")
    settings = {"greedy": dict(do_sample=False), "sampled": dict(do_sample=True, temperature=0.8, top_k=40)}
    samples = {}
    for name, kwargs in settings.items():
        torch.manual_seed(seed)
        ids = model.generate(
            **inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **kwargs
        )
        texts = tokenizer.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        samples[name] = texts
        for prompt, text in zip(prompts, texts):
            log.info(f"[{name:>7}] {prompt + text!r}")
    return samples


@torch.no_grad()
def check_padded_batch(model, tokenizer, prompts, batch_texts, max_new_tokens=GENERATE_TOKENS):
    """Each greedy row of the left-padded batch must equal its prompt generated alone, unpadded."""
    for prompt, batch_text in zip(prompts, batch_texts):
        inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        alone = tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        if alone != batch_text:
            raise RuntimeError(
                f"left padding changed the greedy continuation of {prompt!r}: "
                f"{batch_text!r} in the batch, {alone!r} alone"
            )
    log.info(f"left-padded batch: all {len(prompts)} greedy rows equal their prompt generated alone")


def prompt_logits(model, tokenizer) -> torch.Tensor:
    inputs = tokenizer(PROMPTS, return_tensors="pt", padding=True).to(model.device)
    with torch.no_grad():
        return model.eval()(**inputs).logits.cpu()


def save_model(model, tokenizer, path: Path) -> torch.Tensor:
    """Save the pretrained model and its tokenizer; returns its logits on PROMPTS for the reload check."""
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    model.name_or_path = str(path)  # PEFT records it as the adapter's base_model_name_or_path
    log.info(f"saved the pretrained model and its tokenizer to {path}")
    return prompt_logits(model, tokenizer)


def _check_reloaded(what: str, expected: torch.Tensor, model, tokenizer) -> torch.Tensor:
    actual = prompt_logits(model, tokenizer)
    diff = (expected - actual).abs().max().item()
    if not torch.allclose(expected, actual, rtol=0, atol=1e-5):
        raise RuntimeError(f"logits of the reloaded {what} differ from the in-memory ones by up to {diff:.3g}")
    log.info(f"reloaded {what}: logits match the in-memory model (max |diff| {diff:.1e})")
    return actual


def reload_and_check(tokenizer, model_dir: Path, base_logits, adapter_dir: Path | None = None, adapted_logits=None):
    """Reload the model (Auto classes) and the adapter on top of it (PEFT); each must reproduce its logits."""
    reloaded_tok = AutoTokenizer.from_pretrained(model_dir)
    if reloaded_tok(PROMPTS, padding=True)["input_ids"] != tokenizer(PROMPTS, padding=True)["input_ids"]:
        raise RuntimeError(f"the tokenizer reloaded from {model_dir} encodes the prompts differently")
    # On the device the Trainer left the in-memory models on: the same kernels give the same logits.
    base = AutoModelForCausalLM.from_pretrained(model_dir).to("cuda" if torch.cuda.is_available() else "cpu")
    base_reloaded = _check_reloaded(f"{type(base).__name__} from {model_dir}", base_logits, base, reloaded_tok)
    if adapter_dir is None:
        return
    from peft import PeftModel

    with warnings.catch_warnings():  # see lora_finetune
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        adapted = PeftModel.from_pretrained(base, adapter_dir)
    adapted_reloaded = _check_reloaded(f"LoRA adapter from {adapter_dir}", adapted_logits, adapted, reloaded_tok)
    change = (adapted_reloaded - base_reloaded).abs().max().item()
    log.info(f"the adapter changes the base model's logits by up to {change:.3f}")
