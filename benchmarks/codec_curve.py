"""The codec's learning curve as a picture: PESQ, STOI and mel distance against training hours,
Opus drawn as horizontal lines at each bitrate (issue 12's docs/codec.md figure).

    python benchmarks/codec_curve.py benchmarks/results/codec_curve.jsonl -o docs/codec_curve.png

Input: JSON lines, one per evaluated checkpoint: ``{"run": ..., "step": ..., "hours": ...,
"codeclm@3": {"pesq": .., "stoi": .., "mel": ..}, "codeclm@6": {...}}``, and lines with
``"opus": true`` holding ``opus@5`` / ``opus@6`` rows measured on the same files (the evaluator
of ``benchmarks/codec_quality.py``: ``codeclm.evaluation.codec_eval.evaluate_codec``).
``hours`` counts CPU training hours from scratch (a run started from another run's export adds
that run's hours).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

METRICS = (("pesq", "PESQ (wideband)"), ("stoi", "STOI"), ("mel", "mel distance (lower is better)"))


def read_curve(path: str | Path) -> tuple[list[dict], dict]:
    points, opus = [], {}
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("opus"):
            opus.update({k: v for k, v in row.items() if k.startswith("opus@")})
        else:
            points.append(row)
    return sorted(points, key=lambda r: r["hours"]), opus


def plot(points: list[dict], opus: dict, out: str | Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(dict.fromkeys(p.get("run", "codeclm") for p in points))  # one line per run, in order
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    for ax, (metric, label) in zip(axes, METRICS):
        for j, run in enumerate(runs):
            for rate, style in (("3", "o:"), ("6", "s-")):
                rows = [(p["hours"], p[f"codeclm@{rate}"][metric]) for p in points
                        if p.get("run", "codeclm") == run and f"codeclm@{rate}" in p]
                if rows:
                    ax.plot(*zip(*rows), style, ms=3, color=f"C{j}", alpha=1.0 if rate == "6" else 0.5,
                            label=f"{run}, 6 kbps (dotted: 3)" if rate == "6" else None)
        for i, (name, row) in enumerate(sorted(opus.items())):
            if row.get(metric) is not None:
                ax.axhline(row[metric], ls="--", color="k", lw=1, alpha=0.6 + 0.2 * i,
                           label=name.replace("@", " ") + " kbps")
        ax.set_xlabel("training hours (CPU, one process of 1-2 threads)")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("curve", help="JSON lines (see the module notes)")
    p.add_argument("-o", "--output", default="docs/codec_curve.png")
    p.add_argument("--title", default="checkpoints/codec on held-out real speech (Asterisk), beside Opus")
    args = p.parse_args(argv)
    points, opus = read_curve(args.curve)
    if not points:
        print(f"error: {args.curve}: no evaluated checkpoints", file=sys.stderr)
        return 1
    plot(points, opus, args.output, args.title)
    print(f"{args.output}: {len(points)} checkpoints, Opus rows {sorted(opus)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
