"""The engine-neutral runtime: stages, runner, engines, datasets, storage and config.

Domain pipelines (``arcforge.pipelines``), dedup, tokenize and the rest stand on it;
nothing here imports them except through ``arcforge.catalog``, the one place that
names the built-in stages.
"""
