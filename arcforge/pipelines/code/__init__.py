"""Source code: repository-level packing in dependency order (``code.repo_pack``); see docs/code.md."""
