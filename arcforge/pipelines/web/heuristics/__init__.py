"""The heuristic filters of issue 9, one module per family (``gopher_quality``: Gopher's
quality rules as datatrove applies them; further families join as siblings)."""
