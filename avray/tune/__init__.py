"""Evolving losses on Ray Tune: the λ of the loss mixture searched by PBT/PB2, ASHA, Optuna or
HyperOpt, each mixture scored by ELo's label-free Zipf fitness (or kNN accuracy)."""

from avray.tune.sweep import SweepResult, check_resumable, format_table, tune_losses

__all__ = ["SweepResult", "check_resumable", "format_table", "tune_losses"]
