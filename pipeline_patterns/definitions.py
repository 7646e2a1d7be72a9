"""The one entry point Dagster loads: everything under defs/, plus project-wide policy (the executor).
See docs/fan_out_fan_in.md (one process per run) and docs/scaling_out.md (executors)."""

from pathlib import Path

import dagster as dg

from pipeline_patterns import environment


@dg.definitions
def defs() -> dg.Definitions:
    """Loaded when Dagster asks for it, not on import."""
    return dg.Definitions.merge(
        dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
        dg.Definitions(
            executor=dg.in_process_executor
            if environment.executor() == "in_process"
            else dg.multiprocess_executor.configured({"start_method": {"spawn": {}}, "max_concurrent": 4})
        ),
    )


def assets_and_checks() -> list[dg.AssetsDefinition | dg.AssetChecksDefinition]:
    """Every asset and standalone asset check of the code location, as `dg.materialize` takes them."""
    loaded = defs()
    return [a for a in loaded.assets or [] if isinstance(a, dg.AssetsDefinition)] + list(loaded.asset_checks or [])
