"""A training run's losses for a person: the thinned loss table, loss_curve.csv and the plot of
the train and eval curves (loss_curve.png)."""

import csv
import logging
import math
from pathlib import Path

log = logging.getLogger("hf_llmarch.demo")


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 50 else float("inf")


def print_loss_table(log_history: list[dict], max_rows: int = 12):
    rows = [entry for entry in log_history if "loss" in entry]
    if len(rows) > max_rows:  # keep the first and last, evenly thinned in between
        rows = [rows[round(i * (len(rows) - 1) / (max_rows - 1))] for i in range(max_rows)]
    log.info(f"{'step':>6}  {'train loss':>10}  {'lr':>9}")
    for entry in rows:
        log.info(f"{entry['step']:>6}  {entry['loss']:>10.4f}  {entry.get('learning_rate', 0.0):>9.2e}")


def write_loss_curve(log_history: list[dict], eval_points: list[tuple[int, float]], out: Path, title: str) -> Path:
    """loss_curve.csv (step, train_loss, eval_loss) and the plot of both, loss_curve.png."""
    by_step: dict[int, dict] = {}
    for entry in log_history:
        if "loss" in entry:
            by_step.setdefault(entry["step"], {})["train_loss"] = entry["loss"]
    for step, loss in eval_points:
        by_step.setdefault(step, {})["eval_loss"] = loss
    path = out / "loss_curve.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "train_loss", "eval_loss"])
        for step in sorted(by_step):
            row = by_step[step]
            writer.writerow([step, row.get("train_loss", ""), row.get("eval_loss", "")])
    _plot_loss_curve(by_step, out / "loss_curve.png", title)
    return path


def require_matplotlib():
    """Fail before training, not after it, when the loss plot cannot be drawn."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(
            'the loss plot needs matplotlib: pip install matplotlib (or pip install -e ".[dev]", '
            "which bash scripts/setup_env.sh runs)"
        ) from exc
    matplotlib.use("Agg")  # draws to files only: no display needed


def _plot_loss_curve(by_step: dict[int, dict], path: Path, title: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("train_loss", "eval_loss"):
        points = [(step, row[key]) for step, row in sorted(by_step.items()) if key in row]
        ax.plot(*zip(*points), marker="o" if key == "eval_loss" else None, label=key.replace("_", " "))
    ax.set_title(title)
    ax.set_xlabel("training step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    log.info(f"wrote {path}")
