"""The demo pipeline as a Dagster code location (``make dagster`` opens its UI).

The assets, checks, partitions, sensors, schedule and engines all come from the run
config, the same file ``arcforge run`` reads: set ``ARCFORGE_DAGSTER_CONFIG`` to serve
another pipeline from this location.
"""

from __future__ import annotations

import os
from pathlib import Path

from arcforge.orchestrate.dagster_defs import arcforge_definitions

CONFIG = os.environ.get("ARCFORGE_DAGSTER_CONFIG", str(Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"))

defs = arcforge_definitions(CONFIG)
