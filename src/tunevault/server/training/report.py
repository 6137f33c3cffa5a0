"""The per-job report: a loss-curve picture and a short Markdown summary, both made from metrics.json alone.

Everything here is derived from the metrics dict the trainer exports, so a report can always be
rebuilt from metrics.json, and it never sees (so never shows) a row of the dataset. The same
metrics give the same bytes: the PNG carries no software or date stamp.
"""

from __future__ import annotations

import atexit
import io
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

CURVE_NAME = "loss_curve.png"
REPORT_NAME = "report.md"
FIGURE_INCHES = (7.0, 4.0)
FIGURE_DPI = 100  # 700x400 px: readable in a Markdown viewer, about 40 KB


def write_report(directory: Path, metrics: dict[str, Any]) -> list[Path]:
    """Writes loss_curve.png and report.md into `directory`; returns their paths."""
    curve = _write_atomically(directory / CURVE_NAME, _loss_curve_png(metrics))
    report = _write_atomically(directory / REPORT_NAME, render_markdown(metrics).encode())
    return [curve, report]


def _write_atomically(path: Path, data: bytes) -> Path:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
    return path


# The picture --------------------------------------------------------------------------

def _matplotlib_config_dir() -> None:
    """Points matplotlib's config and font cache at a private temporary folder unless the operator chose one.

    Its default is under $HOME, which in a container with a read-only root (or a HOME shared by
    several workers) is unwritable; matplotlib would then warn and improvise. A folder of our own
    also keeps a stray matplotlibrc there from changing the picture.
    """
    if os.environ.get("MPLCONFIGDIR"):
        return
    folder = tempfile.mkdtemp(prefix="tunevault-matplotlib-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["MPLCONFIGDIR"] = folder


def _loss_curve_png(metrics: dict[str, Any]) -> bytes:
    _matplotlib_config_dir()
    # Imported here: only the worker's export pays for matplotlib, and only after the env is set.
    from matplotlib import style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    history = metrics.get("history") or []
    # Library defaults, not whatever matplotlibrc the working directory happens to hold.
    with style.context("default"):
        figure = Figure(figsize=FIGURE_INCHES, dpi=FIGURE_DPI)
        FigureCanvasAgg(figure)  # a Figure without pyplot: no global state, no GUI backend
        _draw_losses(figure.add_subplot(), history, (metrics.get("result") or {}).get("best_step"))
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _draw_losses(axes: Any, history: list[dict[str, Any]], best_step: float | None) -> None:
    train = [(h["step"], h["loss"]) for h in history if h.get("type") == "step" and _finite(h.get("loss"))]
    evals = _eval_points(history)
    if train:
        axes.plot(*zip(*train), color="tab:blue", linewidth=1.2, label="train loss")
    if evals:
        axes.plot(*zip(*evals), color="tab:orange", marker="o", linestyle="--", linewidth=1, label="eval loss")
    if best_step is not None and evals:
        axes.axvline(best_step, color="tab:green", linestyle=":", linewidth=1, label=f"best eval (step {int(best_step)})")
    if not (train or evals):
        axes.text(0.5, 0.5, "no losses recorded", ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel("step")
    axes.set_ylabel("loss (mean token cross-entropy)")
    axes.set_title("Training and validation loss (step 0: base model)")
    axes.grid(True, alpha=0.3)
    if train or evals:
        axes.legend(loc="best")


def _eval_points(history: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """The base model at step 0, then each eval as measured at its step.

    After an early stop the final eval repeats the stop step with the restored best adapter's
    loss; the first record of a step is what the weights of that step scored.
    """
    points: dict[float, float] = {}
    for record in history:
        loss = record.get("base_eval_loss") if record.get("type") == "eval.baseline" else record.get("eval_loss")
        if record.get("type") in ("eval", "eval.baseline") and _finite(loss):
            points.setdefault(record.get("step", 0), loss)
    return sorted(points.items())


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# The text -----------------------------------------------------------------------------

DATA_LABELS = {
    "train_rows": "training rows", "validation_rows": "validation rows",
    "accuracy_examples": "accuracy examples (greedy exact match)", "train_tokens": "training tokens",
    "dropped_rows": "rows dropped (too long)", "truncated_rows": "rows truncated at max_seq_len",
}


def render_markdown(metrics: dict[str, Any]) -> str:
    """The human-readable report, from the metrics alone."""
    result = metrics.get("result") or {}
    sections = [
        f"# Fine-tuning report: {metrics.get('job_id', 'unknown job')}",
        _data_section(metrics.get("data") or {}),
        _eval_section(result, metrics.get("history") or []),
        _labels_section(metrics.get("labels")),
        _training_section(result),
        _privacy_section((metrics.get("privacy") or {}).get("differential_privacy")),
        _memorization_section((metrics.get("privacy") or {}).get("memorization_audit")),
        _table("Hyperparameters (as resolved and used)", "hyperparameter",
               [(k, _value(v) if k != "canary_secrets" or not v else f"{len(v)} secret(s), not shown")
                for k, v in sorted((metrics.get("hyperparameters") or {}).items())]),
        _table("Runtime", "", [(k.replace("_", " "), _value(v)) for k, v in sorted((metrics.get("runtime") or {}).items())]),
        f"## Loss curve\n\n![Training and validation loss]({CURVE_NAME})",
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def _data_section(data: dict[str, Any]) -> str:
    # Counts only: any other value there could carry text from the dataset.
    rows = [(DATA_LABELS.get(k, k.replace("_", " ")), f"{v:,}" if isinstance(v, int) else f"{v:.4g}")
            for k, v in data.items() if _finite(v)]
    return _table("Data", "", rows)


def _eval_section(result: dict[str, Any], history: list[dict[str, Any]]) -> str:
    rows = [
        _before_after("eval loss", result, "eval_loss", _figure, _loss_change),
        _before_after("eval perplexity", result, "eval_perplexity", _figure, _loss_change),
        _before_after("exact-match accuracy", result, "accuracy", _percent, _accuracy_change),
        _before_after("general-prompt loss (forgetting check)", result, "general_loss", _figure, _loss_change),
    ]
    rows = [r for r in rows if r]
    if not rows:
        return ""
    lines = ["## Evaluation on the validation split", "", "| | base model | fine-tuned | change |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    stopping = _early_stopping(result, history)
    return "\n".join(lines) + (f"\n\n{stopping}" if stopping else "")


def _labels_section(labels: dict[str, Any] | None) -> str:
    """Per-class exact match and the confusions, for label-like answers (training/label_scores.py)."""
    if not labels:
        return ""
    lines = ["## Exact match per class (fine-tuned, validation examples)", "",
             "| expected answer | examples | correct | accuracy |", "|---|---|---|---|"]
    lines += [f"| {_cell(c['label'])} | {c['examples']} | {c['correct']} | {_percent(c['accuracy'])} |"
              for c in labels["per_class"]]
    if labels["confusions"]:
        lines += ["", "Most frequent mistakes:", "", "| expected | answered instead | times |", "|---|---|---|"]
        lines += [f"| {_cell(c['expected'])} | {_cell(c['answered'] or '(nothing)')} | {c['count']} |"
                  for c in labels["confusions"]]
    return "\n".join(lines)


def _before_after(name: str, result: dict[str, Any], key: str, show: Callable[[float], str],
                  change: Callable[[float, float], str]) -> tuple[str, ...] | None:
    before, after = result.get(f"base_{key}"), result.get(key)
    if not _finite(after):
        return None
    if not _finite(before):
        return (name, "-", show(after), "-")
    return (name, show(before), show(after), change(before, after))


def _figure(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"  # perplexities of untrained models are huge


def _percent(value: float) -> str:
    return f"{value:.1%}"


def _loss_change(before: float, after: float) -> str:
    relative = f" ({(after - before) / before:+.1%})" if before else ""
    return f"{'+' if after >= before else '-'}{_figure(abs(after - before))}{relative}"


def _accuracy_change(before: float, after: float) -> str:
    return f"{(after - before) * 100:+.1f} points"


def _early_stopping(result: dict[str, Any], history: list[dict[str, Any]]) -> str:
    best, steps = result.get("best_step"), int(result.get("steps", 0))
    if not _finite(best):
        return ""
    how = f"stopped early at step {steps}" if result.get("stopped_early") else f"ran all {steps} steps"
    # The trainer keeps the best intermediate adapter only when it beats the final weights; the
    # history says which happened: the final eval repeats the kept adapter's loss.
    best_loss = next((h.get("eval_loss") for h in history if h.get("type") == "eval" and h.get("step") == best), None)
    if best != steps and best_loss is not None and best_loss == result.get("eval_loss"):
        kept = f"the result is the adapter of step {int(best)}, the best eval loss"
    else:
        kept = f"the final weights are the result (the best intermediate eval was at step {int(best)})"
    return f"Early stopping: {how}; {kept}."


def _training_section(result: dict[str, Any]) -> str:
    rows = []
    if _finite(result.get("steps")):
        rows.append(("optimizer steps", f"{int(result['steps']):,}"))
    if _finite(result.get("train_loss")):
        rows.append(("train loss (last steps)", f"{result['train_loss']:.4g}"))
    if _finite(result.get("trained_tokens")):
        rows.append(("tokens trained on", f"{int(result['trained_tokens']):,}"))
    if _finite(result.get("tokens_per_second")):
        rows.append(("speed", f"{result['tokens_per_second']:,.0f} tokens/s"))
    if _finite(result.get("train_seconds")):
        rows.append(("training time", _duration(result["train_seconds"])))
    if _finite(result.get("padding_fraction")):
        rows.append(("padding", f"{result['padding_fraction']:.1%} of token slots"))
    memory = _memory(result.get("peak_memory_bytes"), result.get("estimated_peak_memory_bytes"))
    if memory:
        rows.append(("peak memory", memory))
    return _table("Training", "", rows)


def _privacy_section(dp: dict[str, Any] | None) -> str:
    if not dp:
        return ""
    return _table("Differential privacy", "", [(k.replace("_", " "), _value(v)) for k, v in dp.items()])


def _memorization_section(audit: dict[str, Any] | None) -> str:
    """One row per canary, then the identifier probe: what a reader of the adapter could pull out of it."""
    if not audit:
        return ""
    rows = [(f"canary planted {c['repetitions']}x" + (" (given secret)" if c["user_supplied"] else ""),
             f"exposure {c['exposure_bits']:.2f} bits (rank {c['rank']} of {c['candidates'] + 1}; "
             f"before training {c['base_exposure_bits']:.2f} bits; by what training changed "
             f"{c['calibrated_exposure_bits']:.2f} bits, rank {c['calibrated_rank']}), "
             + ("extracted by greedy decoding" if c["extracted"] else "not extracted"))
            for c in audit["canaries"]]
    rows.append(("exposure of a secret never seen", f"{audit['chance_exposure_bits']:.2f} bits on average"))
    leaks = audit["identifier_leaks"]
    rows.append(("identifiers in training answers repeated",
                 f"{leaks['identifiers_reproduced']} of {leaks['identifiers_at_risk']} "
                 f"(asked {leaks['rows_probed']} training questions)"))
    return _table("Memorization audit", "", rows)


def _memory(measured: Any, estimated: Any) -> str:
    parts = []
    if _finite(measured):
        parts.append(f"{_bytes(measured)} measured")
    if _finite(estimated):
        parts.append(f"{_bytes(estimated)} estimated")
    if _finite(measured) and _finite(estimated) and estimated:
        parts.append(f"measured is {measured / estimated:.0%} of the estimate")
    return ", ".join(parts)


def _bytes(count: float) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.0f} MiB"


def _duration(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)} min {rest:.0f} s" if minutes else f"{seconds:.1f} s"


def _value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()  # as --set spells it
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _table(title: str, header: str, rows: list[tuple[str, str]]) -> str:
    if not rows:
        return ""
    lines = [f"## {title}", "", f"| {header or ' '} | value |", "|---|---|"]
    return "\n".join(lines + [f"| {_cell(k)} | {_cell(v)} |" for k, v in rows])


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")  # a value must not open a new cell
