import os

import pytest
import torch

import hf_llmarch

# Small enough that a forward pass is milliseconds on CPU; the hybrid preset mixes retention+MoE with attention+MLP.
TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
FAMILY_CONFIGS = {
    "llama": ("llama-tiny", dict(TINY, layer_pattern="(attn/mlp)x2")),
    "gpt2": ("gpt2-tiny", dict(TINY, layer_pattern="(attn/mlp)x2", num_key_value_heads=4)),
    "mistral": ("llama-tiny", dict(TINY, layer_pattern="attn/mlp swa/mlp", sliding_window=4)),
    "hybrid": ("hybrid-tiny", dict(TINY, moe_intermediate_size=64, layer_pattern="retention/moe attn/mlp retention/moe attn/mlp")),
    # First-k-dense then routed layers (Qwen3-MoE style, fine-grained experts, QK-norm) with a gated
    # shared expert (Qwen2-MoE style); the hybrid family covers routed layers without one.
    "moe": (
        "qwen3-moe-tiny",
        dict(TINY, moe_intermediate_size=32, layer_pattern="attn/mlp attn/moe", shared_expert_intermediate_size=48, shared_expert_gate=True),
    ),
    # No attention layer: positions and cache length come from the backbone's own token count.
    "retnet": ("hybrid-tiny", dict(TINY, layer_pattern="(retention/mlp)x2")),
    "linear": ("linear-attn-tiny", dict(TINY, layer_pattern="(linear_attn/mlp)x2")),
    # RWKV-4: time mix + token-shifted channel mix sharing the shift state, LayerNorms, an embedding norm.
    "rwkv4": ("rwkv4-tiny", dict(TINY, layer_pattern="(rwkv4/rwkv_cmix)x2", rwkv4_chunk_size=8)),
    # RWKV-7: the generalised delta rule, the value residual down the stack, its own channel mix.
    "rwkv7": ("rwkv7-tiny", dict(TINY, layer_pattern="(rwkv7/rwkv_cmix)x2", rwkv7_head_dim=16, rwkv7_chunk_size=8)),
    # Hyena: implicit long convolutions, decoding from the cached input history (which grows).
    "hyena": ("hyena-tiny", dict(TINY, layer_pattern="(hyena/mlp)x2")),
    "deltanet": ("deltanet-tiny", dict(TINY, layer_pattern="(deltanet/mlp)x2", delta_chunk_size=8)),
    # Qwen3-Next-style: Gated DeltaNet with grouped value heads, gated attention with partial RoPE,
    # zero-centred norms, MoE with a gated shared expert and a dense layer.
    "qwen3next": (
        "qwen3-next-tiny",
        dict(TINY, moe_intermediate_size=32, shared_expert_intermediate_size=32, layer_pattern="gated_deltanet/moe gated_attn/moe gated_deltanet/mlp", delta_chunk_size=8),
    ),
    # State-space stacks (chunk sizes below the test lengths, so chunked and carried states both run).
    "mamba": ("mamba-tiny", dict(TINY, layer_pattern="(mamba/none)x2", mamba_d_state=8)),
    "mamba2": ("mamba2-tiny", dict(TINY, layer_pattern="(mamba2/none)x2", mamba2_chunk_size=8)),
    "s4d": ("s4d-tiny", dict(TINY, layer_pattern="(s4d/mlp)x2", s4d_d_state=16)),
    # Jamba-style: Mamba with inner norms, attention without positions, MoE every other layer.
    "jamba": ("jamba-tiny", dict(TINY, moe_intermediate_size=128, layer_pattern="mamba/mlp attn/moe mamba/mlp mamba/moe", mamba_d_state=8)),
    # Granite-4.0-H-style: Mamba-2 and attention, experts + shared MLP everywhere, muP multipliers.
    "granite": ("granite-hybrid-tiny", dict(TINY, moe_intermediate_size=32, layer_pattern="mamba2/moe attn/moe mamba2/moe", mamba2_chunk_size=8)),
    # DeepSeek-V3-style: MLA (low-rank q, latent cache, absorbed decode), a dense layer then DeepSeekMoE.
    "deepseek": (
        "deepseek-v3-tiny",
        dict(TINY, num_key_value_heads=4, moe_intermediate_size=32, shared_expert_intermediate_size=32, q_lora_rank=24,
             kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, head_dim=8),
    ),
    # Falcon-H1-style: attention beside Mamba-2 in one layer (full and sliding), its muP multipliers,
    # a Mamba-2 width not tied to expand and the gate without a norm; a plain attention layer between.
    "falcon": (
        "falcon-h1-tiny",
        dict(
            TINY, layer_pattern="par(attn,mamba2)/mlp attn/mlp par(swa,mamba2)/mlp", sliding_window=4,
            mamba2_d_inner=96, mamba2_head_dim=16, mamba2_chunk_size=8,
        ),
    ),
}


# The TrainingArguments every CPU training test shares; each test adds its steps and batch size.
CPU_TRAINING = dict(learning_rate=3e-3, logging_steps=5, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)


class RepeatTask(torch.utils.data.Dataset):
    """Sequences that repeat a random 4-token motif: learnable in a few dozen steps."""

    def __init__(self, n=64, length=32, seed=0):
        g = torch.Generator().manual_seed(seed)
        motifs = torch.randint(0, 200, (n, 4), generator=g)
        self.data = motifs.repeat(1, length // 4)

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return {"input_ids": self.data[i], "labels": self.data[i]}


def logged_losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def train(model, tmp_path, steps=40, **args) -> list[float]:
    """A short Trainer run on RepeatTask; returns the logged training losses."""
    from transformers import Trainer, TrainingArguments

    trainer_args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        max_steps=steps,
        per_device_train_batch_size=8,
        lr_scheduler_type="constant",
        **CPU_TRAINING,
        **args,
    )
    trainer = Trainer(model=model, args=trainer_args, train_dataset=RepeatTask())
    trainer.train()
    return logged_losses(trainer)


def tiny_config(family: str, **overrides):
    preset, fields = FAMILY_CONFIGS[family]
    return hf_llmarch.load_preset(preset, **{**fields, **overrides})


def moe_block_config(**overrides):
    """The fields an MoE block reads, without a whole model config; the block's validate hook fills
    the router defaults as the real config does."""
    from types import SimpleNamespace

    from hf_llmarch.modules.moe import MoEFeedForward

    fields = dict(
        hidden_size=16, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2, norm_topk_prob=True,
        hidden_act="silu", router_aux_loss_coef=0.01, router_z_loss_coef=0.001, moe_impl="auto",
        shared_expert_intermediate_size=None, shared_expert_gate=False, mlp_gated=True, mlp_bias=False,
    )
    cfg = SimpleNamespace(**(fields | overrides))
    MoEFeedForward.validate(cfg)
    return cfg


def tiny_model(family: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(tiny_config(family, **overrides)).eval()


@pytest.fixture(params=list(FAMILY_CONFIGS))
def family(request):
    return request.param


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # Tests never reach the Hub; fail fast instead of retrying the network.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config):
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
