"""ELECTRA pre-training: a small masked-LM generator fills the masked positions with sampled tokens,
and the discriminator learns which tokens were replaced (replaced-token detection). Both are
ordinary encoder heads (`LlmArchEncoderForMaskedLM`, `LlmArchEncoderForReplacedTokenDetection`);
this module only ties their embeddings and computes the joint loss, as in Clark et al. 2020:
loss = MLM(generator) + rtd_loss_weight * RTD(discriminator), sampling without a gradient."""

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers.modeling_outputs import ModelOutput

from ..data.masking import IGNORE_INDEX, replaced_token_detection_labels
from .encoder import LlmArchEncoderConfig
from .encoder_heads import LlmArchEncoderForMaskedLM, LlmArchEncoderForReplacedTokenDetection

# The tables the two models share, and the config field that sizes each.
SHARED_EMBEDDINGS = {"embed_tokens": "vocab_size", "embed_positions": "max_position_embeddings", "embed_token_types": "type_vocab_size"}


@dataclass
class ElectraPretrainingOutput(ModelOutput):
    """`corrupted_ids` [B, T]: the discriminator's input; `rtd_labels` [B, T]: 1 where it differs from
    the original, 0 where not, -100 on padding."""

    loss: torch.FloatTensor | None = None
    mlm_loss: torch.FloatTensor | None = None
    rtd_loss: torch.FloatTensor | None = None
    generator_logits: torch.FloatTensor | None = None
    discriminator_logits: torch.FloatTensor | None = None
    corrupted_ids: torch.LongTensor | None = None
    rtd_labels: torch.LongTensor | None = None


class ElectraPretrainer(nn.Module):
    """Trains with transformers' Trainer on MLM batches (`hf_llmarch.data.MLMCollator`); saves the two
    models side by side (`generator/`, `discriminator/`), as ELECTRA's checkpoints are released."""

    def __init__(self, generator: LlmArchEncoderForMaskedLM, discriminator: LlmArchEncoderForReplacedTokenDetection,
                 rtd_loss_weight: float = 50.0, sampling_generator: torch.Generator | None = None):
        super().__init__()
        if not rtd_loss_weight > 0:
            raise ValueError(f"rtd_loss_weight={rtd_loss_weight!r} must be > 0 (ELECTRA uses 50)")
        _share_embeddings(generator, discriminator)
        self.generator, self.discriminator = generator, discriminator
        self.rtd_loss_weight = rtd_loss_weight
        self.sampling_generator = sampling_generator

    @classmethod
    def from_config(cls, discriminator_config: LlmArchEncoderConfig, generator_scale: float = 0.25, **kwargs):
        """A discriminator of `discriminator_config` and a generator `generator_scale` as wide and as
        deep-as-ever (ELECTRA's recipe), embedding in the discriminator's width."""
        if not 0 < generator_scale <= 1:
            raise ValueError(f"generator_scale={generator_scale!r} must be in (0, 1]")
        generator_config = copy.deepcopy(discriminator_config)
        embed_width = discriminator_config.embedding_size or discriminator_config.hidden_size
        heads = max(1, round(discriminator_config.num_attention_heads * generator_scale))
        hidden = max(heads, round(discriminator_config.hidden_size * generator_scale) // heads * heads)
        generator_config.update(dict(
            hidden_size=hidden, head_dim=hidden // heads, num_attention_heads=heads, num_key_value_heads=heads,
            intermediate_size=max(1, round(discriminator_config.intermediate_size * generator_scale)),
            embedding_size=embed_width,
        ))
        generator_config.validate_llmarch()
        return cls(LlmArchEncoderForMaskedLM(generator_config), LlmArchEncoderForReplacedTokenDetection(discriminator_config), **kwargs)

    def forward(self, input_ids, attention_mask=None, labels=None, token_type_ids=None, **kwargs) -> ElectraPretrainingOutput:
        """`input_ids` masked and `labels` the original ids at masked positions (-100 elsewhere)."""
        if labels is None:
            raise ValueError("ElectraPretrainer needs labels (an MLM batch: original ids at masked positions, -100 elsewhere)")
        generated = self.generator(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, labels=labels)
        masked = labels != IGNORE_INDEX  # [B, T]
        original = torch.where(masked, labels, input_ids)
        corrupted = original.clone()
        with torch.no_grad():  # the discriminator's loss does not reach the generator (sampling is not differentiable)
            probs = generated.logits[masked].float().softmax(-1)  # [N, V]
            corrupted[masked] = torch.multinomial(probs, 1, generator=self.sampling_generator).squeeze(-1)
        rtd_labels = replaced_token_detection_labels(original, corrupted, attention_mask if attention_mask is not None else torch.ones_like(input_ids))
        judged = self.discriminator(corrupted, attention_mask=attention_mask, token_type_ids=token_type_ids, labels=rtd_labels)
        return ElectraPretrainingOutput(
            loss=generated.loss + self.rtd_loss_weight * judged.loss, mlm_loss=generated.loss, rtd_loss=judged.loss,
            generator_logits=generated.logits, discriminator_logits=judged.logits, corrupted_ids=corrupted, rtd_labels=rtd_labels,
        )

    def save_pretrained(self, directory, **kwargs):
        directory = Path(directory)
        self.generator.save_pretrained(directory / "generator", **kwargs)
        self.discriminator.save_pretrained(directory / "discriminator", **kwargs)


def _share_embeddings(generator, discriminator) -> None:
    """The generator reads the discriminator's token, position and token-type tables (one set of
    parameters, trained by both losses), and its output layer stays tied to the token table."""
    for name, field in SHARED_EMBEDDINGS.items():
        theirs, ours = getattr(discriminator.model, name, None), getattr(generator.model, name, None)
        if (theirs is None) != (ours is None) or (theirs is not None and theirs.weight.shape != ours.weight.shape):
            raise ValueError(
                f"generator and discriminator must share {name}: {field} and embedding_size must match "
                f"(generator {None if ours is None else tuple(ours.weight.shape)}, discriminator {None if theirs is None else tuple(theirs.weight.shape)})"
            )
        if theirs is not None:
            setattr(generator.model, name, theirs)
    generator.lm_head.weight = discriminator.model.embed_tokens.weight
