"""``report.md``: the report's numbers as readable Markdown, with its figures.

:func:`report_markdown` turns the ``report.json`` structure (built by
:func:`smartmixed_np.report.write_report`) and the summary rows into Markdown:
the data and schedule, run counts, the accuracy table, ranks and MRR, SmartMixed
against the best fixed activation, phase 1 against phase 2, layer preferences,
weights between activation groups and the runs without results. Accuracies are
printed as percentages, differences in percentage points (pp).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .collect import SCORED, arch_sort_key, model_sort_key

__all__ = ["report_markdown"]


def _count(number: Any, noun: str) -> str:
    """``1 run``, ``3 runs``; a number given as text (several values joined) takes the plural."""
    return f"{number} {noun}" if str(number) == "1" else f"{number} {noun}s"


def _pct(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.{digits}f}%"


def _interval(entry: dict) -> str:
    """An entry's 95% interval of a difference, in percentage points ("n/a" if undefined)."""
    if entry["ci95_low"] is None:
        return "n/a"
    return f"[{_pp(entry['ci95_low'])}, {_pp(entry['ci95_high'])}]"


def _pp(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:+.{digits}f} pp"


def _markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def clean(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(clean(h) for h in header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(clean(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _introduction(report: Mapping[str, Any]) -> list[str]:
    """The data and schedule the runs used, and how many runs have each status."""
    data, counts = report["data"], report["runs"]["by_status"]
    out: list[str] = []
    out.append(
        f"**Data and schedule.** Dataset {data['dataset']}: {data['train_examples']} training, {data['val_examples']} validation "
        f"and {data['test_examples']} test images (train limit {data['train_limit']}); {_count(data['epochs'], 'epoch')}"
        + (f" (SmartMixed: phase 1 for {data['transition_epoch']}, phase 2 init {data['phase2_init']}, tau {data['tau']})"
           if data["transition_epoch"] != "n/a" else "")
        + f"; {data['optimizer']}, lr {data['lr']} ({data['lr_schedule']}), batch {data['batch_size']}.\n"
    )
    out.append(f"**Runs.** {_count(report['runs']['total'], 'run')}: " + ", ".join(f"{n} {s}" for s, n in counts.items())
               + ". Statistics use the runs with status done or stopped_early (their kept model's test accuracy). "
               "Every number here can be recomputed from `summary.csv` (one row per run); `report.json` holds them all.\n")
    if counts.get("stopped_early"):
        out.append(f"{counts['stopped_early']} run(s) stopped early on a non-finite loss; each kept its best model.\n")
    return out


def _figure(figures: Mapping[str, str], name: str, caption: str) -> list[str]:
    """The Markdown image of figure ``name`` if it was drawn, else nothing."""
    return [f"\n![{caption}]({figures[name]})\n"] if name in figures else []


def _paired_cells(entry: Mapping[str, Any]) -> list[str]:
    """Wins/ties/losses, mean difference and its 95% interval of a paired comparison."""
    return [f"{entry['wins']}/{entry['ties']}/{entry['losses']}", _pp(entry["mean_difference"]), _interval(entry)]


def _accuracy_and_ranks(report: Mapping[str, Any]) -> list[str]:
    """The accuracy table (mean ± std per architecture and model), ranks and MRR."""
    table, ranks, models = report["accuracy"], report["ranks"], report["models"]
    out = ["## Test accuracy\n"]
    if not table:
        return out + ["No finished run yet.\n"]
    archs = sorted({e["arch"] for e in table}, key=arch_sort_key)
    model_names = sorted({e["model"] for e in table}, key=model_sort_key)
    hidden = {e["arch"]: e["hidden"] for e in table}
    out.append("Mean ± sample standard deviation over seeds (n seeds); the best mean of each architecture in bold.\n")
    lines = []
    for arch in archs:
        best = max(e["mean"] for e in table if e["arch"] == arch)
        cells = []
        for model in model_names:
            entry = next((e for e in table if e["arch"] == arch and e["model"] == model), None)
            if entry is None:
                cells.append("")
                continue
            text = _pct(entry["mean"]) + (f" ± {100 * entry['std']:.2f}" if entry["std"] is not None else "") + f" ({entry['n']})"
            cells.append(f"**{text}**" if entry["mean"] == best else text)
        lines.append([arch, hidden[arch], *cells])
    out.append(_markdown_table(["arch", "hidden", *model_names], lines))
    out += _figure(report["figures"], "accuracy.png", "Test accuracy per architecture and model")

    out.append("## Ranks\n")
    out.append("Per architecture, models ranked by mean test accuracy (1 = best; equal means share the better rank). "
               "MRR is the mean over architectures of 1/rank.\n")
    out.append(_markdown_table(["arch", *model_names], ([arch, *[ranks[arch].get(m, "") for m in model_names]] for arch in archs)))
    ordered = sorted(models.items(), key=lambda kv: (-kv[1]["mrr"], model_sort_key(kv[0])))
    out.append(_markdown_table(["model", "MRR", "mean rank", "first places", "architectures"],
                               ([m, f"{v['mrr']:.3f}", f"{v['mean_rank']:.2f}", v["first_places"], v["archs"]] for m, v in ordered)))
    return out


def _smartmixed_vs_best_fixed(versus: Mapping[str, Any], figures: Mapping[str, str]) -> list[str]:
    """SmartMixed minus the best fixed activation of each architecture, paired by seed."""
    out = ["## SmartMixed against the best fixed activation\n"]
    if not versus["per_arch"]:
        return out + ["Needs SmartMixed and at least one fixed activation in the same architecture.\n"]
    out.append("Per architecture, the fixed activation with the highest mean test accuracy; differences are SmartMixed "
               "minus that model, paired by seed (pp = percentage points; the interval is the 95% t interval of the mean "
               "difference over seeds; p is the two-sided paired t-test). The best fixed model is chosen on the same "
               "test accuracies, which slightly favours it.\n")

    def p_value(entry: Mapping[str, Any]) -> str:
        return "n/a" if entry["p_value"] is None else f"{entry['p_value']:.3g}"

    lines = [[e["arch"], e["best_fixed"], _pct(e["best_fixed_mean"]), _pct(e["smartmixed_mean"]), e["pairs"],
              *_paired_cells(e), p_value(e)] for e in versus["per_arch"]]
    pooled = versus["pooled"]
    lines.append(["all", "", "", "", pooled["pairs"], *_paired_cells(pooled), p_value(pooled)])
    out.append(_markdown_table(["arch", "best fixed", "its mean", "SmartMixed mean", "pairs", "wins/ties/losses",
                                "mean difference", "95% interval", "p"], lines))
    out.append(f"\nSmartMixed's mean is higher than the best fixed activation's in {versus['archs_won_on_mean']} of "
               f"{versus['archs']} architecture(s). The pooled row treats every (architecture, seed) pair as one "
               "observation.\n")
    return out + _figure(figures, "smartmixed_vs_best_fixed.png", "SmartMixed minus best fixed activation")


def _phases(phases: Mapping[str, Any], figures: Mapping[str, str]) -> list[str]:
    """Phase 2 (the kept model) against the best phase-1 model, per SmartMixed run."""
    out = ["## Phase 1 against phase 2\n"]
    if not phases["per_arch"]:
        return out + ["No finished SmartMixed run with a phase-1 model.\n"]
    out.append("Per SmartMixed run: test accuracy of the best phase-1 model (selection by validation loss) against "
               "the kept phase-2 model; a win is a run where phase 2 is higher.\n")
    lines = [[e["arch"], e["hidden"], e["pairs"], _pct(e["phase1_mean"]), _pct(e["phase2_mean"]), *_paired_cells(e)]
             for e in phases["per_arch"]]
    pooled = phases["pooled"]
    lines.append(["all", "", pooled["pairs"], _pct(pooled.get("phase1_mean")), _pct(pooled.get("phase2_mean")),
                  *_paired_cells(pooled)])
    out.append(_markdown_table(["arch", "hidden", "runs", "phase 1", "phase 2", "wins/ties/losses", "mean difference",
                                "95% interval"], lines))
    return out + _figure(figures, "phase1_vs_phase2.png", "Phase 1 against phase 2")


def _layer_preferences(preferences: Mapping[str, Any], figures: Mapping[str, str]) -> list[str]:
    """The activation shares per hidden layer and by relative depth."""
    out = ["## Layer-wise activation preferences\n"]
    if not preferences["per_layer"]:
        return out + ["No finished SmartMixed run.\n"]
    pool = preferences["pool"]
    out.append("Share of each candidate among a hidden layer's neurons (from `choices.csv`), mean over seeds. "
               "Also in `layer_preferences.csv`.\n")
    out.append(_markdown_table(["arch", "layer", "width", "runs", *pool],
                               ([e["arch"], e["layer"], e["width"], e["runs"], *[_pct(e["shares"][n], 1) for n in pool]]
                                for e in preferences["per_layer"])))
    out.append("\nBy relative depth, all SmartMixed runs pooled (a run's middle layers count as one group; "
               "a network with one hidden layer has only an 'only' layer). Also in `depth_preferences.csv`.\n")
    out.append(_markdown_table(["depth", "runs", "layers", *pool],
                               ([e["depth"], e["runs"], e["layers"], *[_pct(e["shares"][n], 1) for n in pool]]
                                for e in preferences["by_depth"])))
    out += _figure(figures, "layer_preferences.png", "Activation shares per hidden layer")
    return out + _figure(figures, "depth_preferences.png", "Activation shares by relative depth")


def _weights(weights: Mapping[str, Any], figures: Mapping[str, str]) -> list[str]:
    """The weights between activation groups of consecutive hidden layers, per architecture."""
    out = ["## Weights between activation groups\n"]
    if not any(e["cells"] for e in weights["per_arch"]):
        return out + ["Needs finished SmartMixed runs with at least two hidden layers.\n"]
    out.append("Weights from the neurons of activation A in hidden layer l into the neurons of activation B in layer "
               "l+1, pooled over the layer pairs and seeds of each architecture: mean / median (n weights). "
               "Per layer pair in `weight_stats.csv`.\n")
    for entry in weights["per_arch"]:
        if not entry["cells"]:
            continue
        cells = {(c["from_activation"], c["to_activation"]): c for c in entry["cells"]}
        sources = [a for a in weights["pool"] if any(k[0] == a for k in cells)]
        targets = [b for b in weights["pool"] if any(k[1] == b for k in cells)]
        out.append(f"\n**arch {entry['arch']}** ({entry['hidden']}; {entry['layer_pairs']} layer pair(s), "
                   f"{entry['runs']} run(s)); rows: A (from), columns: B (to)\n\n")
        out.append(_markdown_table(["A \\ B", *targets], (
            [a, *[(f"{cells[(a, b)]['mean']:+.2e} / {cells[(a, b)]['median']:+.2e} ({cells[(a, b)]['count']})"
                   if (a, b) in cells else "") for b in targets]] for a in sources)))
        out += _figure(figures, f"weights_arch{entry['arch']}.png", f"Weights between activation groups, arch {entry['arch']}")
    single = [e["arch"] for e in weights["per_arch"] if not e["cells"]]
    if single:
        out.append(f"\nArchitecture(s) {', '.join(single)}: one hidden layer, no layer pair.\n")
    return out


def _unfinished(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The runs without a result (failed, incomplete, not started) and their errors."""
    unfinished = [r for r in rows if r["status"] not in SCORED]
    if not unfinished:
        return []
    return ["## Runs without results\n",
            _markdown_table(["run", "status", "error"], ([r["run_dir"], r["status"], r["error"] or ""] for r in unfinished))]


def report_markdown(report: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], root: Path) -> str:
    """``report.md`` text from the ``report.json`` structure and the summary rows of ``root``'s runs.

    Each section is a list of blocks; blocks are joined by blank lines.
    """
    figures = report["figures"]
    out = [f"# Sweep report: {root.resolve().name}\n"]
    out += _introduction(report)
    out += _accuracy_and_ranks(report)
    out += _smartmixed_vs_best_fixed(report["smartmixed_vs_best_fixed"], figures)
    out += _phases(report["phase1_vs_phase2"], figures)
    out += _layer_preferences(report["layer_preferences"], figures)
    out += _weights(report["weight_statistics"], figures)
    out += _unfinished(rows)
    return "\n\n".join(block.strip("\n") for block in out if block.strip()) + "\n"
