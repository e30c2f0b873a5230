"""The heuristic filters agree with datatrove's implementation of the same rules.

datatrove 0.10.1 (a test dependency) runs each filter on a fixed sample of 12,000 real
documents from the demo corpus (``benchmarks/oracle_filters.py`` builds it); arcforge's
stage must make the same decision, keep or the same reason, on at least 99.5% of the
documents for every reason either side gives, and C4's cleaned text must be the same.
The full table and the classes of disagreement are in docs/quality.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import oracle_filters  # noqa: E402

SAMPLE = 12_000
GOAL = 0.995


@pytest.fixture(scope="module")
def documents(demo_corpus) -> list[str]:
    texts = oracle_filters.oracle_documents(demo_corpus, SAMPLE, pages=True)
    assert len(texts) == SAMPLE
    return texts


@pytest.fixture(scope="module")
def datatrove(documents) -> dict[str, list]:
    """datatrove's decisions for every rule at once, over two processes."""
    return oracle_filters.datatrove_decisions_all(oracle_filters.RULES, documents)


@pytest.mark.parametrize("rule", oracle_filters.RULES, ids=lambda r: r.stage)
def test_agrees_with_datatrove(rule, documents, datatrove):
    assert len(datatrove[rule.stage]) == len(documents)
    result = oracle_filters.agreement(rule, documents, datatrove[rule.stage])
    lines: list[str] = []
    oracle_filters.print_table([result], out=lines.append)
    report = "\n".join(lines)
    assert len(result.by_reason) >= 2, f"the sample exercises only one outcome:\n{report}"
    assert result.share >= GOAL, report
    low = {k: (s, n) for k, (s, n) in result.by_reason.items() if n >= 20 and s / n < GOAL}
    assert not low, f"reasons below {GOAL:.1%}: {low}\n{report}"
