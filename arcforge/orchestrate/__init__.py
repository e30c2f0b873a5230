"""Orchestration: the run config as a Dagster code location (``arcforge.orchestrate.dagster_defs``)."""
