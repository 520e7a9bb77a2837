"""The loss curves of an ablation as a PNG (matplotlib, from the ``ablate`` extra).

Left: training loss against tokens seen, per release: the mean over seeds (a running mean over
``smooth`` steps, so the noise of single batches does not hide the trend) with the band between
the lowest and highest seed. Right: bits per byte of each held-out set at the evaluation points,
mean over seeds with error bars of one standard deviation. Colours follow the release order.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa


def _running_mean(x: np.ndarray, k: int) -> np.ndarray:
    if k <= 1 or x.size < k:
        return x
    c = np.cumsum(np.insert(x, 0, 0.0))
    head = c[1:k] / np.arange(1, k)
    return np.concatenate([head, (c[k:] - c[:-k]) / k])


def plot_ablation(evals: dict[tuple[str, int], pa.Table], releases: list[str], out_path: str, title: str,
                  smooth: int = 10) -> str:
    """Write the figure to ``out_path`` (local path) from each (release, seed)'s evals table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_bpb) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = ["o", "s", "^", "D", "v"]
    bpb_sets: set[str] = set()
    for i, rel in enumerate(releases):
        colour = colours[i % len(colours)]
        curves, bpb = [], defaultdict(lambda: defaultdict(list))  # type: ignore[var-annotated]
        tokens: np.ndarray | None = None
        for (r, _seed), t in sorted(evals.items()):
            if r != rel:
                continue
            rows = t.to_pydict()
            loss = [(tok, v) for m, tok, v in zip(rows["metric"], rows["tokens_seen"], rows["value"]) if m == "train/loss"]
            if loss:
                tokens = np.array([x for x, _ in loss], dtype=float)
                curves.append(_running_mean(np.array([v for _, v in loss], dtype=float), smooth))
            for m, tok, v in zip(rows["metric"], rows["tokens_seen"], rows["value"]):
                if m.startswith("bpb/"):
                    bpb[m[4:]][tok].append(v)
        if curves and tokens is not None:
            n = min(len(c) for c in curves)
            stack = np.stack([c[:n] for c in curves])
            ax_loss.plot(tokens[:n], stack.mean(0), color=colour, label=f"{rel} ({len(curves)} seeds)")
            ax_loss.fill_between(tokens[:n], stack.min(0), stack.max(0), color=colour, alpha=0.2, linewidth=0)
        for j, (name, by_tok) in enumerate(sorted(bpb.items())):
            bpb_sets.add(name)
            xs = sorted(by_tok)
            means = [float(np.mean(by_tok[x])) for x in xs]
            sds = [float(np.std(by_tok[x], ddof=1)) if len(by_tok[x]) > 1 else 0.0 for x in xs]
            ax_bpb.errorbar(xs, means, yerr=sds, color=colour, marker=markers[j % len(markers)], capsize=3,
                            linestyle="-" if j == 0 else "--", label=f"{rel}: {name}")
    ax_loss.set(xlabel="tokens seen", ylabel=f"training loss (nats/token, running mean of {smooth} steps)",
                title="training loss")
    ax_bpb.set(xlabel="tokens seen", ylabel="bits per byte (mean ± sd over seeds)",
               title="held-out bits per byte" if bpb_sets else "held-out bits per byte (no held-out sets)")
    for ax in (ax_loss, ax_bpb):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return out_path


def plot_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


__all__: list[Any] = ["plot_ablation", "plot_available"]
