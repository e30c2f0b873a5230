"""The demo corpus: pinned public files fetched once, the input of `make demo` and the tests."""
