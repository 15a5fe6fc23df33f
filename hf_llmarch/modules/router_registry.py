"""The router registry: `router_type` names, every router's config fields with their defaults, their
checks, and `build_router`. The routers themselves are in `routers.py`."""

from .routers import (
    SHARED_FIELDS,
    DeepSeekRouter,
    HierarchicalRouter,
    NoisyTopKRouter,
    Router,
    SoftmaxTopKRouter,
    SwitchRouter,
    _check,
)

ROUTERS = {
    "softmax_topk": SoftmaxTopKRouter,
    "noisy_topk": NoisyTopKRouter,
    "switch": SwitchRouter,
    "hierarchical": HierarchicalRouter,
    "deepseek": DeepSeekRouter,
}
GROUP_FIELDS = {"n_group": 1, "topk_group": 1}  # shared by softmax_topk (DeepSeek-V2), hierarchical and deepseek
LOSS_COEF_FIELDS = (
    "router_aux_loss_coef", "router_z_loss_coef", "router_importance_loss_coef", "router_load_loss_coef",
    "router_seq_aux_loss_coef", "bias_update_rate",
)


def router_fields() -> dict:
    """Every router field with its default (the saved config.json holds them flat)."""
    fields = dict(SHARED_FIELDS, **GROUP_FIELDS)
    for cls in ROUTERS.values():
        fields.update(cls.FIELDS)
    return fields


def validate_router_config(config) -> None:
    """Fill absent router fields with their defaults, then raise a ValueError naming any bad one."""
    for name, default in router_fields().items():
        if getattr(config, name, None) is None:
            setattr(config, name, default)
    _check(
        config.router_type in ROUTERS,
        f"router_type={config.router_type!r} is unknown; valid: {list(ROUTERS)}",
    )
    for name in ("capacity_factor", "routed_scaling_factor"):
        _check(getattr(config, name) > 0, f"{name}={getattr(config, name)!r} must be > 0")
    for name in LOSS_COEF_FIELDS:
        _check(getattr(config, name) >= 0, f"{name}={getattr(config, name)!r} must be >= 0")
    for name in ("n_group", "topk_group"):
        value = getattr(config, name)
        _check(isinstance(value, int) and value >= 1, f"{name}={value!r} must be a positive integer")
    _check(
        config.topk_group <= config.n_group,
        f"topk_group={config.topk_group} is larger than n_group={config.n_group}: cannot keep more groups than exist",
    )
    _check(
        config.num_experts % config.n_group == 0,
        f"num_experts={config.num_experts} is not divisible by n_group={config.n_group}: experts split into equal groups",
    )
    ROUTERS[config.router_type].validate(config)


def build_router(config) -> Router:
    return ROUTERS[config.router_type](config)
