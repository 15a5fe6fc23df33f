"""Every router against a hand computation on tiny inputs; padding, the DeepSeek bias and its
callback, gradients, the router config fields (errors and save/load)."""

import math
import pytest
import torch
from conftest import moe_block_config

from hf_llmarch.models.dense import LlmArchDenseConfig
from hf_llmarch.modules.moe import MoEFeedForward, MoEStatsCallback
from hf_llmarch.modules.moe import BiasUpdateCallback
from hf_llmarch.modules.router_registry import build_router
from hf_llmarch.modules.routers import DeepSeekRouter


def config(**overrides):
    return moe_block_config(**{"hidden_size": 2, "moe_intermediate_size": 4, "moe_impl": "naive", **overrides})


def route(router, logits, x=None, real=None, sequence_ids=None):
    n = logits.shape[0]
    x = torch.zeros(n, 2) if x is None else x
    real = torch.ones(n, dtype=torch.bool) if real is None else torch.tensor(real, dtype=torch.bool)
    ids = torch.zeros(n, dtype=torch.long) if sequence_ids is None else torch.tensor(sequence_ids)
    return router(x, logits, real, (ids, int(ids.max()) + 1), True)


def phi(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def cv2(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / len(values) / mean**2


def softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def lse(values: list[float]) -> float:
    return math.log(sum(math.exp(v) for v in values))


def test_softmax_topk_hand():
    router = build_router(config())
    out = route(router, torch.log(torch.tensor([[1.0, 2, 3, 4], [4, 3, 2, 1]])))
    assert out.topk_idx.tolist() == [[3, 2], [0, 1]]
    torch.testing.assert_close(out.topk_weight, torch.tensor([[4 / 7, 3 / 7], [4 / 7, 3 / 7]]))
    p = [(0.1 + 0.4) / 2, (0.2 + 0.3) / 2, (0.3 + 0.2) / 2, (0.4 + 0.1) / 2]
    f = [1 / 2, 1 / 2, 1 / 2, 1 / 2]  # assignments / N over both slots
    assert out.aux.losses["load_balancing"].item() == pytest.approx(4 * sum(a * b for a, b in zip(f, p)))
    assert out.aux.losses["z"].item() == pytest.approx(math.log(10) ** 2)


def noisy_router(**overrides):
    router = build_router(config(router_type="noisy_topk", **overrides))
    torch.nn.init.zeros_(router.noise.weight)  # noise std = router_noise * softplus(0) = router_noise * ln 2
    return router


def test_noisy_topk_eval_hand():
    router = noisy_router().eval()
    rows = [[2.0, 1.0, 0.0, -1.0], [0.0, 0.5, 3.0, 1.0], [9.0, 9.0, 9.0, -9.0]]
    out = route(router, torch.tensor(rows), real=[True, True, False])
    assert out.topk_idx[:2].tolist() == [[0, 1], [2, 3]]
    weights = [softmax([2.0, 1.0]), softmax([3.0, 1.0])]  # softmax over the kept k only
    torch.testing.assert_close(out.topk_weight[:2], torch.tensor(weights))

    importance = [weights[0][0], weights[0][1], weights[1][0], weights[1][1]]  # experts 0, 1, 2, 3
    std = math.log(2)

    def load_prob(row, i):
        others = sorted((v for j, v in enumerate(row) if j != i), reverse=True)
        return phi((row[i] - others[1]) / std)  # k-th (k = 2) best of the others

    load = [sum(load_prob(row, i) for row in rows[:2]) for i in range(4)]  # the padded row does not count
    assert out.aux.losses["importance"].item() == pytest.approx(cv2(importance), rel=1e-5)
    assert out.aux.losses["load"].item() == pytest.approx(cv2(load), rel=1e-5)
    assert out.aux.tokens_per_expert.tolist() == [1, 1, 1, 1]


def test_noisy_topk_noise_only_in_training():
    router = noisy_router(router_noise=2.0, num_experts_per_tok=1).train()
    logits = torch.tensor([[0.0, 0.1, 0.2, 0.3]] * 6)
    torch.manual_seed(0)
    eps = torch.randn(6, 4)
    torch.manual_seed(0)
    out = route(router, logits)
    noisy = logits + eps * 2.0 * math.log(2)
    assert torch.equal(out.topk_idx[:, 0], noisy.argmax(-1))
    assert len(set(out.topk_idx[:, 0].tolist())) > 1  # the noise changed some choices
    assert (route(router.eval(), logits).topk_idx == 3).all()


def switch_block(capacity_factor=1.0, **fields):
    block = MoEFeedForward(config(router_type="switch", num_experts=2, num_experts_per_tok=1, capacity_factor=capacity_factor, **fields))
    with torch.no_grad():
        block.gate.weight.copy_(torch.eye(2))  # logits = x
        block.experts.reset_parameters(std=0.5)
    return block


def test_switch_expert_capacity_counts_per_sequence_in_eval_too():
    """Switch Transformers' checkpoints: `expert_capacity` tokens per expert in each sequence (row), in
    token order, padding excluded; the same in eval, where no loss asks for the sequence ids."""
    block = switch_block(expert_capacity=2).eval()
    x = torch.tensor([[2.0, 0], [1, 0], [3, 0], [0, 1], [1.5, 0], [1, 0]])  # experts 0 0 0 1 0 0
    rows = torch.stack([x, x.flip(0)])  # row 1: experts 0 0 1 0 0 0
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 1, 1]])  # row 1's second token is padding
    with torch.no_grad():
        out, _ = block(rows, mask)
    kept = torch.tensor([[1, 1, 0, 1, 0, 0], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)  # the first 2 real per expert per row
    real = mask.bool()
    assert torch.equal((out.abs().sum(-1) > 0)[real], kept[real])
    assert block.last_dropped_tokens.item() == 3 + 2


def test_switch_capacity_drops_in_token_order():
    block = switch_block().train()
    x = torch.tensor([[2.0, 0], [1, 0], [3, 0], [0, 1], [1.5, 0], [1, 0]])  # prefers expert 0 except token 3
    mask = torch.tensor([[1, 0, 1, 1, 1, 1]])  # token 1 is padding: it takes no capacity
    assert block.router.capacity(torch.tensor(5)) == 3  # ceil(1.0 * 5 / 2)
    out, aux = block(x[None], mask)
    idx, weight, _ = block.route(x, mask)
    assert idx[:, 0].tolist() == [0, 0, 0, 1, 0, 0]
    probs = x.softmax(-1)
    kept_weight = probs.max(-1).values * torch.tensor([1, 1, 1, 1, 1, 0.0])  # token 5 is the 4th real one on expert 0
    torch.testing.assert_close(weight[:, 0], kept_weight)
    assert torch.equal(out[0, 5], torch.zeros(2)) and (out[0, [0, 2, 3, 4]].abs().sum(-1) > 0).all()
    assert block.last_dropped_tokens.item() == 1 and block.last_tokens_per_expert.tolist() == [3, 1]

    real = [0, 2, 3, 4, 5]
    f = [4 / 5, 1 / 5]  # load balancing counts the router's choice, before dropping
    p = [sum(probs[t, e].item() for t in real) / 5 for e in range(2)]
    z = sum(lse(x[t].tolist()) ** 2 for t in real) / 5
    assert block.last_load_balancing_loss.item() == pytest.approx(2 * (f[0] * p[0] + f[1] * p[1]), rel=1e-6)
    assert block.last_z_loss.item() == pytest.approx(z, rel=1e-6)
    torch.testing.assert_close(aux, 0.01 * block.last_load_balancing_loss + 0.001 * block.last_z_loss)

    logs = {}
    MoEStatsCallback().on_log(None, None, None, logs=logs, model=torch.nn.Sequential(block))
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert logs["moe/0/dropped_tokens"] == 1 and logs["moe/0/max_load"] == 1.5
    assert logs["moe/0/load_entropy"] == pytest.approx(entropy) and "moe/0/z" in logs

    block(x[None])  # without the mask the padded token is real and takes a place: two drops
    assert block.last_dropped_tokens.item() == 2 and switch_block(1.25).router.capacity(torch.tensor(6)) == 4


def test_hierarchical_hand():
    router = build_router(config(router_type="hierarchical", n_group=2, topk_group=1))
    with torch.no_grad():
        router.group_gate.weight.copy_(torch.tensor([[2.0, 0], [1, 3]]))
    x = torch.tensor([[1.0, 0], [0, 1]])  # group logits [2, 1] and [0, 3]
    logits = torch.tensor([[0.5, 1.5, 9.0, 8.0], [5.0, 5.0, 0.2, 1.2]])
    out = route(router, logits, x)
    assert out.topk_idx.tolist() == [[1, 0], [3, 2]]  # the best group's best experts, not the best logits
    torch.testing.assert_close(out.topk_weight, torch.tensor([softmax([1.5, 0.5]), softmax([1.2, 0.2])]))

    groups, rows = [[2.0, 1.0], [0.0, 3.0]], logits.tolist()
    probs = [[softmax(g)[e // 2] * softmax(r[e // 2 * 2 : e // 2 * 2 + 2])[e % 2] for e in range(4)] for g, r in zip(groups, rows)]
    f = [1 / 2, 1 / 2, 1 / 2, 1 / 2]
    lb = 4 * sum(f[e] * (probs[0][e] + probs[1][e]) / 2 for e in range(4))
    z = sum(lse(g) ** 2 + (lse(r[:2]) ** 2 + lse(r[2:]) ** 2) / 2 for g, r in zip(groups, rows)) / 2
    assert out.aux.losses["load_balancing"].item() == pytest.approx(lb, rel=1e-6)
    assert out.aux.losses["z"].item() == pytest.approx(z, rel=1e-6)


def deepseek_router(**overrides):
    fields = dict(router_type="deepseek", n_group=2, topk_group=1, routed_scaling_factor=2.5) | overrides
    return build_router(config(**fields))


SCORES = torch.tensor([[0.9, 0.1, 0.8, 0.7], [0.2, 0.4, 0.5, 0.1], [0.3, 0.6, 0.6, 0.5], [0.5, 0.5, 0.5, 0.5]])


def test_deepseek_group_limited_hand():
    router = deepseek_router()
    out = route(router, torch.logit(SCORES[:1]))
    # Group sums of top-2: 1.0 and 1.5, so group 1 even though expert 0 scores best.
    assert out.topk_idx.tolist() == [[2, 3]]
    torch.testing.assert_close(out.topk_weight, torch.tensor([[0.8 / 1.5 * 2.5, 0.7 / 1.5 * 2.5]]))


def test_deepseek_bias_steers_selection_only():
    router = deepseek_router()
    logits = torch.logit(SCORES[:1])
    router.e_score_correction_bias.copy_(torch.tensor([0.0, 0.0, 0.05, -0.05]))
    same = route(router, logits)
    assert same.topk_idx.tolist() == [[2, 3]]
    torch.testing.assert_close(same.topk_weight, torch.tensor([[0.8 / 1.5 * 2.5, 0.7 / 1.5 * 2.5]]))
    router.e_score_correction_bias.copy_(torch.tensor([0.6, 0.0, 0.0, 0.0]))  # group 0 sums 1.6 > 1.5
    moved = route(router, logits)
    assert moved.topk_idx.tolist() == [[0, 1]]
    torch.testing.assert_close(moved.topk_weight, torch.tensor([[0.9 * 2.5, 0.1 * 2.5]]))  # unbiased scores


def test_deepseek_sequence_balance_loss_hand():
    router = deepseek_router(n_group=1, topk_group=1, num_experts_per_tok=1)
    real = [True, True, True, False]  # sequence 1 has one real token
    out = route(router, torch.logit(SCORES), real=real, sequence_ids=[0, 0, 1, 1])
    assert out.topk_idx[:3, 0].tolist() == [0, 2, 1]
    loss = 0.0
    for tokens in ([0, 1], [2]):
        f = [4 / len(tokens) * sum(out.topk_idx[t, 0].item() == e for t in tokens) for e in range(4)]
        p = [sum(SCORES[t, e].item() / SCORES[t].sum().item() for t in tokens) / len(tokens) for e in range(4)]
        loss += sum(a * b for a, b in zip(f, p)) / 2
    assert out.aux.losses["seq_balance"].item() == pytest.approx(loss, rel=1e-6)
    assert out.aux.tokens_per_expert.tolist() == [1, 1, 1, 0]


def test_bias_update_callback_moves_bias_against_load():
    block = MoEFeedForward(config(router_type="deepseek", num_experts_per_tok=1)).train()
    with torch.no_grad():
        block.gate.weight.copy_(torch.tensor([[1.0, 0], [0, 1], [0, 0], [-1, -1]]))
    block(torch.tensor([[[3.0, 0], [2, 0], [0, 3]]]))  # loads [2, 1, 0, 0], mean 0.75
    assert block.router.load_since_update.tolist() == [2, 1, 0, 0]
    BiasUpdateCallback(gamma=0.1).on_step_end(None, None, None, model=torch.nn.Sequential(block))
    torch.testing.assert_close(block.router.e_score_correction_bias, torch.tensor([-0.1, -0.1, 0.1, 0.1]))
    assert block.router.load_since_update.sum() == 0
    block.eval()(torch.tensor([[[3.0, 0]]]))  # evaluation does not accumulate load
    assert block.router.load_since_update.sum() == 0


def test_bias_update_callback_in_trainer(tmp_path):
    from conftest import CPU_TRAINING, RepeatTask, tiny_model
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model = tiny_model("hybrid", router_type="deepseek", n_group=2, topk_group=1, bias_update_rate=0.01).train()
    routers = [m for m in model.modules() if isinstance(m, DeepSeekRouter)]
    seen = []

    logged = {}

    class RecordLoads(TrainerCallback):  # runs just before BiasUpdateCallback
        def on_step_end(self, *args, **kwargs):
            seen.extend(r.load_since_update.float().clone() for r in routers)

    class RecordLogs(TrainerCallback):  # runs after MoEStatsCallback, as a reporting integration would
        def on_log(self, *args, logs=None, **kwargs):
            logged.update(logs)

    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, **CPU_TRAINING)
    callbacks = [RecordLoads(), BiasUpdateCallback(), MoEStatsCallback(), RecordLogs()]
    Trainer(model=model, args=args, train_dataset=RepeatTask(n=2, length=8), callbacks=callbacks).train()
    assert {"moe/model.layers.0.mlp/seq_balance", "moe/model.layers.2.mlp/load_entropy"} <= logged.keys()
    assert len(seen) == len(routers) == 2
    for router, load in zip(routers, seen):
        assert load.sum() == 2 * 8 * model.config.num_experts_per_tok
        torch.testing.assert_close(router.e_score_correction_bias, 0.01 * torch.sign(load.mean() - load))
        assert router.load_since_update.sum() == 0


@pytest.mark.parametrize("router_type", ["softmax_topk", "noisy_topk", "switch", "hierarchical", "deepseek"])
def test_padding_ignored_and_gradients_reach_router(router_type):
    extra = dict(switch=dict(num_experts_per_tok=1), hierarchical=dict(n_group=2, topk_group=2), deepseek=dict(n_group=2, topk_group=2))
    torch.manual_seed(0)
    block = MoEFeedForward(config(router_type=router_type, hidden_size=8, **extra.get(router_type, {}))).eval()
    block.experts.reset_parameters(std=0.3)
    x, mask = torch.randn(2, 5, 8), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out, aux = block(x, mask)  # eval mode, but autograd records: losses are computed
    padded = dict(block.last_losses, tokens=block.last_tokens_per_expert)
    real = x[mask.bool()]
    alone_out, _ = block(real[None])
    torch.testing.assert_close(out[mask.bool()], alone_out[0], rtol=1e-5, atol=1e-6)
    assert torch.equal(padded.pop("tokens"), block.last_tokens_per_expert)
    if router_type == "deepseek":  # its balance loss is per sequence, then averaged over sequences
        block(real[None, :3])
        first = block.last_losses["seq_balance"]
        block(real[None, 3:])
        block.last_losses["seq_balance"] = (first + block.last_losses["seq_balance"]) / 2
    for name, loss in block.last_losses.items():
        torch.testing.assert_close(padded[name], loss)
    (out.square().sum() + aux).backward()
    assert block.gate.weight.grad.abs().sum() > 0
    for p in block.router.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(router_type="switch", capacity_factor=0.0), "capacity_factor=0.0"),
        (dict(router_type="deepseek", n_group=2, topk_group=3), "topk_group=3"),
        (dict(router_type="deepseek", n_group=3), "num_experts=4 is not divisible by n_group=3"),
        (dict(router_type="mixtral"), r"router_type='mixtral'.*'softmax_topk', 'noisy_topk', 'switch', 'hierarchical', 'deepseek'"),
        (dict(router_type="switch", num_experts_per_tok=2), "num_experts_per_tok=2"),
        (dict(router_type="noisy_topk", router_noise=-1.0), "router_noise"),
        (dict(router_load_loss_coef=-0.1), "router_load_loss_coef"),
    ],
)
def test_bad_router_config_raises(fields, message):
    base = dict(num_experts=4, num_experts_per_tok=2, layer_pattern="attn/moe", hidden_size=16, num_attention_heads=2)
    with pytest.raises(ValueError, match=message):
        LlmArchDenseConfig(**(base | fields))


def test_router_fields_round_trip(tmp_path):
    base = dict(layer_pattern="attn/moe", hidden_size=16, num_attention_heads=2, num_experts=4)
    default = LlmArchDenseConfig(**base)
    assert default.router_type == "softmax_topk" and default.capacity_factor == 1.25
    custom = dict(router_type="deepseek", n_group=2, topk_group=1, routed_scaling_factor=2.5, bias_update_rate=0.002)
    for cfg in (default, LlmArchDenseConfig(**base, **custom)):
        cfg.save_pretrained(tmp_path)
        loaded = LlmArchDenseConfig.from_pretrained(tmp_path)
        for name in ("router_type", "capacity_factor", "n_group", "topk_group", "routed_scaling_factor", "bias_update_rate", "router_noise"):
            assert getattr(loaded, name) == getattr(cfg, name), name
    assert loaded.router_type == "deepseek" and loaded.routed_scaling_factor == 2.5


def test_deepseek_never_selects_outside_kept_groups():
    router = deepseek_router(num_experts=8, n_group=4, topk_group=2, num_experts_per_tok=3)
    router.e_score_correction_bias.copy_(torch.randn(8))
    idx = route(router, torch.randn(64, 8)).topk_idx
    assert max(len(set((row // 2).tolist())) for row in idx) <= 2


def test_model_save_load_keeps_router_state(tmp_path):
    from conftest import tiny_model
    from transformers import AutoModelForCausalLM

    for router_type in ("deepseek", "noisy_topk"):
        model = tiny_model("hybrid", router_type=router_type)
        for buffer in model.buffers():
            if buffer.shape == (model.config.num_experts,) and buffer.is_floating_point():
                buffer.uniform_()  # e_score_correction_bias: a trained-looking value
        model.save_pretrained(tmp_path / router_type)
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / router_type)
        assert loaded.config.router_type == router_type
        want, got = model.state_dict(), loaded.state_dict()
        router_keys = [k for k in want if ".mlp.router." in k]
        assert router_keys and all(torch.equal(want[k], got[k]) for k in router_keys)
