"""RWKV-4 (transformers `rwkv`) <-> ours: parity where transformers is right (unpadded batches, one
row's greedy decoding), an exact round trip, and ours right where transformers is not
(recurrent_mixers.md §6): batched one-token decode keeps each row's state, and the attention mask
is honoured, so batched greedy equals each row alone and padded rows equal unpadded ones."""

import pytest
import torch
from transformers import DynamicCache, RwkvConfig, RwkvForCausalLM

import hf_llmarch  # noqa: F401  (registers our Auto classes)
from hf_llmarch.convert import from_hf, infer_target, to_hf

VOCAB, SEQ = 128, 12


def _native(rescale_every: int = 0, layers: int = 2, tied: bool = False, attention_hidden: int = 64) -> RwkvForCausalLM:
    """attention_hidden_size != hidden_size: transformers' own cache is then sized wrongly (it cannot
    generate), so only the round trip uses it."""
    torch.manual_seed(0)
    config = RwkvConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=layers, attention_hidden_size=attention_hidden, intermediate_size=96,
        context_length=64, rescale_every=rescale_every, tie_word_embeddings=tied, bos_token_id=0, eos_token_id=0,
    )
    model = RwkvForCausalLM(config)
    with torch.no_grad():  # spread what init leaves flat, so a swapped tensor would show
        for name, param in model.named_parameters():
            if "ln" in name or "time_" in name:
                param.add_(0.3 * torch.randn_like(param))
            if "embeddings" in name:
                param.normal_(0, 1.0)
    return model.eval()


def _ids(batch=2, seed=1):
    return torch.randint(1, VOCAB, (batch, SEQ), generator=torch.Generator().manual_seed(seed))


def _greedy(model, ids, **kwargs):
    return model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0, **kwargs)[:, ids.shape[1] :]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    native = _native()
    path = tmp_path_factory.mktemp("rwkv")
    native.save_pretrained(path)
    return native, from_hf(path)


def test_logits_and_single_row_greedy_match_transformers(pair):
    native, ours = pair
    assert ours.num_parameters() == native.num_parameters()
    assert infer_target(ours.config) == "rwkv"
    with torch.no_grad():
        assert (native(_ids()).logits - ours(_ids()).logits).abs().max() < 1e-4
    for row in _ids():
        assert torch.equal(_greedy(ours, row[None]), _greedy(native, row[None]))
    assert torch.equal(_greedy(ours, _ids()[:1], use_cache=False), _greedy(native, _ids()[:1]))


@pytest.mark.parametrize("rescale_every,layers,tied,attention_hidden", [(0, 2, False, 48), (2, 5, True, 64)])
def test_round_trip_is_exact(rescale_every, layers, tied, attention_hidden):
    """rescale_every halves transformers' stream in eval mode (not in training mode); the LayerNorms make
    that a no-op up to their eps, so eval-mode logits agree to a relative 1e-4."""
    native = _native(rescale_every, layers, tied, attention_hidden)
    native_state = {key: value.clone() for key, value in native.state_dict().items()}  # eval rescales in place
    ours = from_hf(native)
    with torch.no_grad():
        expected = ours(_ids()).logits
        assert (native.train()(_ids(), use_cache=False).logits - expected).abs().max() < 1e-4
        eval_logits = native.eval()(_ids(), use_cache=False).logits
    assert (eval_logits - expected).abs().max() < 1e-4 * expected.abs().max()
    back = to_hf(ours)
    assert type(back) is RwkvForCausalLM
    back_state = back.state_dict()
    assert native_state.keys() == back_state.keys()
    assert all(torch.equal(native_state[key], back_state[key]) for key in native_state)


def test_batched_greedy_equals_each_row_alone(pair):
    """transformers broadcasts a one-token decode's token shift across the batch ([B, B, V] logits)."""
    _, ours = pair
    batch = _greedy(ours, _ids())
    for row, tokens in zip(_ids(), batch):
        assert torch.equal(_greedy(ours, row[None])[0], tokens)


def test_left_and_right_padding_are_honoured(pair):
    """transformers ignores the attention mask: a padded row's outputs change. Ours: a left-padded
    row equals it alone, and a right-padded prefill leaves the state its real tokens give."""
    _, ours = pair
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    greedy = _greedy(ours, ids, attention_mask=mask)
    assert torch.equal(greedy[1], _greedy(ours, ids[1:, 5:])[0])
    real, tail = ids[:1, :7], torch.zeros(1, 5, dtype=torch.long)
    follow = _ids(1, seed=2)[:, :3]
    logits = []
    for prompt, prompt_mask in ((real, None), (torch.cat([real, tail], 1), torch.tensor([[1] * 7 + [0] * 5]))):
        cache = DynamicCache(config=ours.config)
        with torch.no_grad():
            ours(prompt, attention_mask=prompt_mask, past_key_values=cache, use_cache=True)
            logits.append(ours(follow, past_key_values=cache, use_cache=True).logits)
    torch.testing.assert_close(logits[1], logits[0])


def test_a_norm_eps_transformers_cannot_hold_is_refused():
    with pytest.raises(ValueError, match="layer_norm_epsilon"):
        from_hf(RwkvForCausalLM(RwkvConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, layer_norm_epsilon=1e-6)))
