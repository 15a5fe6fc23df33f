"""Result rows and their console and markdown tables."""

import operator

GOAL_OPS = {">=": operator.ge, "<=": operator.le, "<": operator.lt, ">": operator.gt}


def metric(unit: str, values: dict, ratio_of=None, goal=None, ratio=None) -> dict:
    """One table row. `ratio_of=(a, b)` divides values[a] by values[b]; or pass `ratio` and a label."""
    row = {"unit": unit, "values": values}
    if isinstance(ratio_of, tuple):
        a, b = ratio_of
        ratio = values[a] / values[b] if values.get(a) is not None and values.get(b) else None
        ratio_of = f"{a}/{b}"
    if ratio_of is not None:
        row["ratio"], row["ratio_of"] = ratio, ratio_of
    if goal is not None:
        op, threshold = goal
        row["goal"] = f"{op} {threshold}"
        row["pass"] = None if ratio is None else bool(GOAL_OPS[op](ratio, threshold))
    return row


def fmt(x) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        if x and abs(x) < 1e-2:
            return f"{x:.2e}"
        return f"{x:,.3f}" if abs(x) < 10 else f"{x:,.1f}"
    return str(x)


def _table_rows(res: dict) -> tuple[list[str], list[list[str]]]:
    cols = res["columns"]
    header = ["metric", *cols, "ratio", "ratio of", "goal", "status"]
    rows = []
    for name, m in res["metrics"].items():
        status = {True: "PASS", False: "MISS", None: "n/a"}[m.get("pass")] if "goal" in m else ""
        if "skipped" in m:  # a comparison this run could not make; the reason is in the setup text
            status = "SKIPPED"
        cells = [fmt(m["values"].get(c)) if c in m["values"] else "" for c in cols]
        tail = [fmt(m.get("ratio")), m.get("ratio_of", ""), m.get("goal", ""), status]
        rows.append([f"{name} ({m['unit']})", *cells, *tail])
    return header, rows


def format_table(suite: str, res: dict) -> str:
    lines = [f"== {suite}: {res.get('title', '')} =="]
    if res["status"] == "skipped":
        return "\n".join([*lines, f"SKIPPED: {res['reason']}"])
    if "parity" in res:
        lines.append("parity: " + ", ".join(f"{k}={fmt(v)}" for k, v in res["parity"].items()))
    if res["status"] == "failed":
        return "\n".join([*lines, f"FAILED: {res['reason']}"])
    header, rows = _table_rows(res)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def format_markdown(suite: str, res: dict) -> str:
    lines = [f"### {suite}: {res.get('title', '')}", "", res.get("setup_text", ""), ""]
    if res["status"] != "ok":
        return "\n".join([*lines, f"*{res['status']}: {res['reason']}*", ""])
    if "parity" in res:
        lines += ["Parity: " + ", ".join(f"{k} = {fmt(v)}" for k, v in res["parity"].items()), ""]
    header, rows = _table_rows(res)
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join([*lines, ""])


def plot_decode_latency(suite: str, path: str, ms: dict) -> None:
    """`ms` {context: {model: ms/token}} as one line per model over context (a model may miss contexts)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in sorted({n for t in ms.values() for n in t}):
        points = [(c, t[name]) for c, t in ms.items() if name in t]
        ax.plot(*zip(*points), marker="o", label=name)
    ax.set(xscale="log", xlabel="context (tokens)", ylabel="decode ms/token (median)", title=f"{suite} suite: decode latency")
    ax.set_xticks(list(ms), [str(c) for c in ms])
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
