"""Datasets from outside the run: ``input: {dataset: URI}``.

A stage may read a committed arcforge dataset of another run (a stage directory
with ``_manifest.json``: its parts and fingerprints are used as they are, so a
change upstream there invalidates this stage here) or external Parquet (a file,
a folder of ``*.parquet``, or a glob), each file one partition. Either way the
schema is known at plan time, so a missing column is a config error.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from arcforge.runtime import dataset, storage
from arcforge.runtime.dataset import DatasetRef
from arcforge.runtime.storage import S3Options


@dataclass
class ExternalInput:
    """What a stage reads from outside the run: (part uri, fingerprint) pairs and a schema."""

    parts: list[tuple[str, str]]
    schema: pa.Schema
    refs: list[DatasetRef]


def _parquet_files(uri: str, s3: S3Options) -> list[str]:
    fs, path = storage.filesystem(uri, s3)
    info = storage.retry_transient(fs.get_file_info, path, options=s3, what=uri)
    if info.type == storage.pafs.FileType.Directory:
        uri = storage.join(uri, "*.parquet")
    return [u for u in storage.expand_inputs([uri], s3) if u.endswith(".parquet")]


def _one(uri: str, s3: S3Options) -> ExternalInput:
    ref = DatasetRef(uri.rstrip("/"), s3)
    manifest = dataset.read_manifest(ref)
    if manifest is not None:
        if manifest.get("kind") != "dataset":
            raise ValueError(f"{uri} is an arcforge {manifest.get('kind')}, not a dataset")
        parts = [(ref.part_uri(p["name"]), p["fingerprint"]) for p in manifest["parts"]]
        return ExternalInput(parts, dataset.schema_from_b64(manifest["schema_ipc"]), [ref])
    files = _parquet_files(uri, s3)
    if not files:
        raise ValueError(f"{uri} is neither a committed arcforge dataset (no {dataset.MANIFEST}) nor Parquet files")
    schemas, parts = [], []
    for f in files:
        fs, path = storage.filesystem(f, s3)
        with fs.open_input_file(path) as fh:
            meta = pq.read_metadata(fh)
        schemas.append(meta.schema.to_arrow_schema())
        parts.append((f, f"{f}:{fs.get_file_info(path).size}:{meta.num_rows}"))
    try:
        schema = pa.unify_schemas(schemas)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValueError(f"{uri}: the Parquet files have incompatible schemas ({exc}); read them with io.read") from None
    return ExternalInput(parts, schema, [])


def resolve_dataset_inputs(uris: list[str], s3: S3Options) -> ExternalInput:
    """Parts, fingerprints and the unified schema of every dataset URI, in order."""
    found = [_one(u, s3) for u in uris]
    schema = pa.unify_schemas([f.schema for f in found]) if len(found) > 1 else found[0].schema
    return ExternalInput([p for f in found for p in f.parts], schema, [r for f in found for r in f.refs])
