"""The one entry point Dagster loads: everything under defs/, plus project-wide policy.

The in-process executor runs a run's steps in one process so they share one Spark session
(a JVM per step process would cost ~5 s each); Spark parallelises the work inside each step.
"""

import warnings
from pathlib import Path

import dagster as dg

# BackfillPolicy is still marked beta in Dagster 1.13; it is the documented way to run a range as
# one run, and this project depends on it deliberately.
warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*backfill_policy.*")

defs = dg.Definitions.merge(
    dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
    dg.Definitions(executor=dg.in_process_executor),
)
