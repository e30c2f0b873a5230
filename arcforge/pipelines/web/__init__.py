"""Web pipeline: WARC/ARC reading, HTML extraction, language identification."""
