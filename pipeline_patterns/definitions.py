"""The one entry point Dagster loads: everything under defs/, plus project-wide policy.

The in-process executor runs a run's steps in one process so they share one Spark session
(a JVM per step process would cost ~5 s each); Spark parallelises the work inside each step.
With a Spark Connect server (PIPELINE_PATTERNS_SPARK_MASTER=sc://...) a step's session is a thin
client, and PIPELINE_PATTERNS_EXECUTOR=multiprocess runs the regions in parallel processes
(spawned, never forked: delta-rs cannot run after a fork) without a JVM each.
"""

from pathlib import Path

import dagster as dg

from pipeline_patterns import environment

defs = dg.Definitions.merge(
    dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
    dg.Definitions(
        executor=dg.in_process_executor
        if environment.executor() == "in_process"
        else dg.multiprocess_executor.configured({"start_method": {"spawn": {}}, "max_concurrent": 4})
    ),
)
