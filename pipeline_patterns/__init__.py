"""pipeline_patterns: classic pipeline-orchestration patterns as a Dagster code location."""
