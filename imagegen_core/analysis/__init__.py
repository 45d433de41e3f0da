"""The analyst layer: the log as pandas DataFrames, per-provider metrics, Altair charts, and the
timeout what-if replay. Used by the notebooks (``notebooks/``) and the console's stats page.

pandas and altair are imported inside the functions that need them: importing this package (or
imagegen_core) loads neither. The replay and the latency models need neither.

- :mod:`.frames`: ``load_requests``, ``load_attempts``, ``load_picks``
- :mod:`.metrics`: ``latency_quantiles``, ``outcome_rates``, ``failure_class_rates``, ``win_rate``,
  ``cost_per_winning_image``, ``provider_summary``
- :mod:`.charts`: ``latency_cdf_chart``, ``requests_over_time_chart``, ``success_vs_timeout_chart``, ...,
  ``side_by_side`` (each chart keeps its colours) and ``draw_charts_offline`` (SVG, no CDN)
- :mod:`.latency`: ``EmpiricalModel`` (Kaplan–Meier over logged attempts), ``ProfileModel``,
  ``models_from_log``
- :mod:`.replay`: ``replay`` and ``simulate`` (what a candidate runtime config would have done), over
  :mod:`.racesim`, one race as a discrete-event simulation of the engine's rules
- :mod:`.recommend`: ``judge``, whether a candidate config beats the current one beyond replay noise
- :mod:`.synthetic`: a realistic simulated log for notebooks without a real one
- :mod:`.tables`: ``table``, a frame shown with "—" for missing values, as the console shows them
"""

from __future__ import annotations

from .charts import (
    bar_chart,
    draw_charts_offline,
    failure_classes_chart,
    hedge_delay_chart,
    latency_cdf_chart,
    latency_cdf_points,
    requests_over_time_chart,
    side_by_side,
    success_vs_timeout_chart,
    timeout_sweep_chart,
)
from .frames import arrival_gaps_ms, arrival_interval_ms, load_attempts, load_picks, load_requests
from .latency import EmpiricalModel, Fixed, Lognormal, Mixture, ProfileModel, Uniform, model_table, models_from_log
from .metrics import (
    bucket_requests,
    cost_per_winning_image,
    failure_class_rates,
    latency_quantiles,
    outcome_rates,
    provider_summary,
    win_rate,
)
from .racesim import simulate_race
from .recommend import Verdict, judge, timeout_candidates
from .replay import HedgePolicy, ReplayPlan, ReplayReport, arrivals_from_gaps, replay, simulate
from .synthetic import newsroom_config, newsroom_profiles, notebook_log, stored_config, write_simulated_log
from .tables import table
from .window import to_epoch, window_label

__all__ = [
    "EmpiricalModel",
    "Fixed",
    "HedgePolicy",
    "Lognormal",
    "Mixture",
    "ProfileModel",
    "ReplayPlan",
    "ReplayReport",
    "Uniform",
    "Verdict",
    "arrival_gaps_ms",
    "arrival_interval_ms",
    "arrivals_from_gaps",
    "bar_chart",
    "bucket_requests",
    "cost_per_winning_image",
    "draw_charts_offline",
    "failure_class_rates",
    "failure_classes_chart",
    "hedge_delay_chart",
    "judge",
    "latency_cdf_chart",
    "latency_cdf_points",
    "latency_quantiles",
    "load_attempts",
    "load_picks",
    "load_requests",
    "model_table",
    "models_from_log",
    "newsroom_config",
    "newsroom_profiles",
    "notebook_log",
    "outcome_rates",
    "provider_summary",
    "replay",
    "requests_over_time_chart",
    "side_by_side",
    "simulate",
    "simulate_race",
    "stored_config",
    "success_vs_timeout_chart",
    "table",
    "timeout_candidates",
    "timeout_sweep_chart",
    "to_epoch",
    "win_rate",
    "window_label",
    "write_simulated_log",
]
