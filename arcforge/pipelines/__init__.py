"""Stage runtime, engines, storage and the domain pipelines."""
