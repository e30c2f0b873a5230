"""``io.read``: any dataset in (JSON Lines, Parquet, CSV/TSV, plain-text folders,
Hugging Face ``save_to_disk`` folders), as documents of the one schema.

* ``read.py``: the stage (params, plan, schema inference, registration).
* ``inputs.py``: which files an input names, their formats and the names ids are made from.
* ``rows.py``: turning an Arrow table of input rows into kept and rejected documents.
* ``formats.py`` and ``jsonl.py``: one streaming reader per format.

Importing this package registers nothing; the stage registry imports ``read.py``.
"""
