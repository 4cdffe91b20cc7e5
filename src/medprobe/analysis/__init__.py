"""Statistics and scaling analysis on result tables (pure functions; figures in :mod:`.plots`)."""

from medprobe.analysis.scaling import best_per_budget, pareto_front, trend_verdict
from medprobe.analysis.stats import (
    friedman_test,
    holm,
    kendall,
    mean_ranks,
    nemenyi_cd,
    nemenyi_q,
    paired_bootstrap,
    spearman,
    wilcoxon_signed_rank,
)

__all__ = ["paired_bootstrap", "wilcoxon_signed_rank", "holm", "spearman", "kendall", "mean_ranks",
           "friedman_test", "nemenyi_q", "nemenyi_cd", "trend_verdict", "pareto_front", "best_per_budget"]
