"""What Dagster loads: partitions, resources, assets. Found by `dg.load_from_defs_folder`."""
