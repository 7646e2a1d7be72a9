# The usual targets; .ci/run is what CI runs (the README's install + `pytest`, lint, integration).
.PHONY: dev test test-unit test-all lint

dev:  ## the UI and the daemon on a local instance (the README's `dagster dev`)
	DAGSTER_HOME="$(CURDIR)" dagster dev

test-unit:  ## the logic alone: no Spark, no Dagster run, no subprocess
	pytest -m unit

test:  ## the default lane: unit + the pipeline specs in process
	pytest

test-all:  ## the default lane, then the integration lane (servers and subprocesses)
	pytest && pytest -m integration

lint:  ## lint, format, types, and the definitions load
	ruff check pipeline_patterns pipeline_patterns_tests
	ruff format --check pipeline_patterns pipeline_patterns_tests
	mypy
	dagster definitions validate -w workspace.yaml
