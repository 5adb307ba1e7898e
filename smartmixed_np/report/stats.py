"""The statistics of the report: means over seeds, t intervals, paired comparisons, ranks.

Everything here works on summary rows (:func:`smartmixed_np.report.collect.read_summary`)
and uses the runs whose status is in :data:`~smartmixed_np.report.collect.SCORED`.

* :func:`mean_interval`: for values x_1..x_n, the mean m, the sample standard
  deviation s (ddof 1), the ``level`` t interval m ± t_{(1+level)/2, n-1} s / sqrt(n)
  and the two-sided p-value of the one-sample t-test of mean 0,
  p = 2 P(T_{n-1} > |m| / (s / sqrt(n))).
* :func:`accuracy_table`: mean and sample std of the test accuracy per (architecture, model).
* :func:`rank_models`: competition ranks per architecture (1 for the highest mean;
  equal means share the better rank: 1, 1, 3), mean rank, first places and the mean
  reciprocal rank (MRR, the mean of 1/rank over the architectures where a model ran).
* :func:`compare_smartmixed`, :func:`compare_phases`: paired differences by seed,
  summarised by :func:`mean_interval` (wins, ties, losses, mean, 95% interval, p).

The Student t distribution comes from SciPy (``scipy.stats.t``, in the ``report``
extra). SciPy is imported when a quantile or tail is first needed, so that importing
this package works without it; :func:`t_distribution` raises a one-line
:class:`~smartmixed_np.report.collect.ReportError` naming the extra when it is absent.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

from .collect import SMARTMIXED, ReportError, arch_sort_key, model_sort_key, scored

__all__ = [
    "t_distribution", "t_cdf", "t_quantile", "mean_interval", "accuracy_table", "rank_models",
    "compare_smartmixed", "compare_phases",
]

MISSING_SCIPY = "the report's statistics need SciPy: pip install 'smartmixed_np[report]'"


def t_distribution() -> Any:
    """SciPy's Student t distribution object, ``scipy.stats.t``.

    Raises:
        ReportError: SciPy is not installed (the message names the ``report`` extra).
    """
    try:
        from scipy import stats
    except ImportError:
        raise ReportError(MISSING_SCIPY) from None
    return stats.t


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    return float(t_distribution().cdf(t, df))


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom.

    ``t_quantile(0.975, 4)`` = 2.7764..., the factor of a 95% interval from 5 values.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    return float(t_distribution().ppf(p, df))


def mean_interval(values: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean, sample std, ``level`` t interval of the mean and the two-sided p-value of mean = 0.

    Returns:
        ``{"n", "mean", "std", "low", "high", "p_value"}``; ``std``, ``low``, ``high``
        and ``p_value`` are None for fewer than two values (and ``p_value`` when all
        values are equal).
    """
    values = [float(v) for v in values]
    n = len(values)
    result: dict[str, Any] = {"n": n, "mean": None, "std": None, "low": None, "high": None, "p_value": None}
    if n == 0:
        return result
    mean = math.fsum(values) / n
    result["mean"] = mean
    if n < 2:
        return result
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.5 + level / 2.0, n - 1) * std / math.sqrt(n)
    result.update(std=std, low=mean - half, high=mean + half)
    if std > 0:
        statistic = mean / (std / math.sqrt(n))
        # The upper tail directly (sf), not 1 - cdf: a small p keeps its digits.
        result["p_value"] = min(1.0, 2.0 * float(t_distribution().sf(abs(statistic), n - 1)))
    return result


def accuracy_table(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (architecture, model): seeds, n, mean and sample std of the test accuracy (and loss)."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in scored(rows):
        groups.setdefault((row["arch"], row["model"]), []).append(row)
    table = []
    for (arch, model), members in sorted(groups.items(), key=lambda kv: (arch_sort_key(kv[0][0]), model_sort_key(kv[0][1]))):
        members = sorted(members, key=lambda r: r["seed"])
        accuracy = mean_interval([r["test_accuracy"] for r in members])
        losses = [r["test_loss"] for r in members if r.get("test_loss") is not None]
        table.append({
            "arch": arch, "hidden": members[0]["hidden"], "model": model, "seeds": [r["seed"] for r in members],
            "n": accuracy["n"], "mean": accuracy["mean"], "std": accuracy["std"],
            "mean_test_loss": math.fsum(losses) / len(losses) if losses else None,
        })
    return table


def rank_models(table: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Ranks per architecture by mean test accuracy (competition ranking), and per-model summaries.

    Returns:
        ``{"ranks": {arch: {model: rank}}, "models": {model: {"archs", "mean_rank",
        "first_places", "mrr"}}}``.
    """
    by_arch: dict[str, dict[str, float]] = {}
    for entry in table:
        by_arch.setdefault(entry["arch"], {})[entry["model"]] = entry["mean"]
    ranks: dict[str, dict[str, int]] = {}
    for arch in sorted(by_arch, key=arch_sort_key):
        means = by_arch[arch]
        ranks[arch] = {model: 1 + sum(1 for other in means.values() if other > mean)
                       for model, mean in sorted(means.items(), key=lambda kv: model_sort_key(kv[0]))}
    models: dict[str, dict[str, Any]] = {}
    for model in sorted({m for r in ranks.values() for m in r}, key=model_sort_key):
        model_ranks = [r[model] for r in ranks.values() if model in r]
        models[model] = {
            "archs": len(model_ranks),
            "mean_rank": math.fsum(model_ranks) / len(model_ranks),
            "first_places": sum(1 for r in model_ranks if r == 1),
            "mrr": math.fsum(1.0 / r for r in model_ranks) / len(model_ranks),
        }
    return {"ranks": ranks, "models": models}


def _paired_summary(pairs: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """Differences b - a of paired values: wins (b > a), ties, losses, mean, 95% interval, p."""
    differences = [b - a for a, b in pairs]
    summary = mean_interval(differences)
    return {
        "pairs": len(pairs),
        "wins": sum(1 for d in differences if d > 0),
        "ties": sum(1 for d in differences if d == 0),
        "losses": sum(1 for d in differences if d < 0),
        "mean_difference": summary["mean"], "std_difference": summary["std"],
        "ci95_low": summary["low"], "ci95_high": summary["high"], "p_value": summary["p_value"],
    }


def compare_smartmixed(rows: Iterable[Mapping[str, Any]], table: Iterable[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """SmartMixed against the best fixed activation of each architecture, paired by seed.

    The best fixed model of an architecture is the non-SmartMixed model with the
    highest mean test accuracy there (the first in pool order on equal means).
    Differences are SmartMixed minus best fixed; a win is a seed where SmartMixed's
    test accuracy is higher. The best fixed model is picked on the same test
    accuracies, which favours it a little.

    Returns:
        ``{"per_arch": [{"arch", "best_fixed", "best_fixed_mean", "smartmixed_mean",
        "seeds", "pairs", "wins", "ties", "losses", "mean_difference", "ci95_low",
        "ci95_high", "p_value", ...}], "pooled": {...over every pair...},
        "archs_won_on_mean": int, "archs": int}``.
    """
    rows = scored(rows)
    table = list(table) if table is not None else accuracy_table(rows)
    by_key = {(r["arch"], r["model"], r["seed"]): r["test_accuracy"] for r in rows}
    per_arch, all_pairs = [], []
    for arch in sorted({e["arch"] for e in table}, key=arch_sort_key):
        entries = {e["model"]: e for e in table if e["arch"] == arch}
        fixed = [e for m, e in entries.items() if m != SMARTMIXED]
        if SMARTMIXED not in entries or not fixed:
            continue
        best_mean = max(e["mean"] for e in fixed)
        best = next(e for e in sorted(fixed, key=lambda e: model_sort_key(e["model"])) if e["mean"] == best_mean)
        seeds = sorted(s for (a, m, s) in by_key if a == arch and m == SMARTMIXED and (arch, best["model"], s) in by_key)
        pairs = [(by_key[(arch, best["model"], s)], by_key[(arch, SMARTMIXED, s)]) for s in seeds]
        all_pairs += pairs
        per_arch.append({
            "arch": arch, "hidden": best["hidden"], "best_fixed": best["model"], "best_fixed_mean": best["mean"],
            "smartmixed_mean": entries[SMARTMIXED]["mean"], "seeds": seeds,
            "differences": [b - a for a, b in pairs], **_paired_summary(pairs),
        })
    return {
        "per_arch": per_arch,
        "pooled": _paired_summary(all_pairs),
        "archs": len(per_arch),
        "archs_won_on_mean": sum(1 for e in per_arch if e["smartmixed_mean"] > e["best_fixed_mean"]),
    }


def phase_runs(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The scored SmartMixed runs that have a phase-1 model's test accuracy."""
    return [r for r in scored(rows) if r["model"] == SMARTMIXED and r.get("phase1_test_accuracy") is not None]


def compare_phases(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Phase 2 (the kept model) against phase 1 (the best phase-1 model), per SmartMixed run.

    Returns:
        ``{"per_arch": [{"arch", "runs", "phase1_mean", "phase2_mean", "wins" (phase 2
        higher), "ties", "losses", "mean_difference", "ci95_low", "ci95_high",
        "p_value"}], "pooled": {...}}``.
    """
    runs = phase_runs(rows)
    per_arch, all_pairs = [], []
    for arch in sorted({r["arch"] for r in runs}, key=arch_sort_key):
        members = sorted((r for r in runs if r["arch"] == arch), key=lambda r: r["seed"])
        pairs = [(r["phase1_test_accuracy"], r["test_accuracy"]) for r in members]
        all_pairs += pairs
        per_arch.append({
            "arch": arch, "hidden": members[0]["hidden"], "seeds": [r["seed"] for r in members],
            "phase1_mean": math.fsum(a for a, _ in pairs) / len(pairs), "phase2_mean": math.fsum(b for _, b in pairs) / len(pairs),
            **_paired_summary(pairs),
        })
    pooled = _paired_summary(all_pairs)
    if all_pairs:
        pooled.update(phase1_mean=math.fsum(a for a, _ in all_pairs) / len(all_pairs),
                      phase2_mean=math.fsum(b for _, b in all_pairs) / len(all_pairs))
    return {"per_arch": per_arch, "pooled": pooled}
