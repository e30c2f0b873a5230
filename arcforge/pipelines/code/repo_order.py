"""One repository's files in dependency order, packed into documents (pure functions).

The order extends DeepSeek-Coder's (its report's Algorithm 1, "Topological Sort for
Dependency Analysis"). With an edge from every file to each file of the repository it
imports, DeepSeek-Coder takes the file with the fewest dependencies not yet placed, lowers
the count of every file that imports it, and repeats; without cycles that is a topological
order (a file comes after everything it imports), and a cycle is broken at the file with the
fewest unplaced dependencies instead of stalling. On its own that rule can also place a file
of a cycle before a dependency *outside* the cycle (when every file left waits on something).
So arcforge first condenses the import cycles (strongly connected components, networkx),
orders the components topologically, and applies the fewest-dependencies rule inside each
cycle only: an import that is not part of a cycle is always respected, and only imports
inside a cycle are broken (``cycles_broken`` counts the files placed with one unmet). Ties go
to the smaller path, so the order is a pure function of the paths and the edges; on acyclic
imports it is exactly DeepSeek-Coder's.

Each file starts with a comment naming its path (``languages.path_comment``), as
DeepSeek-Coder's packed repositories do; files are separated by one blank line. A repository
longer than ``max_chars`` is cut into several documents at file boundaries, in order (a file
longer than ``max_chars`` is a document of its own, never cut inside).
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass

from arcforge.pipelines.code.languages import path_comment


@dataclass(frozen=True)
class Order:
    paths: list[str]
    edges: int  # distinct (file, imported file) pairs inside the repository
    cycles_broken: int  # files placed while some of their dependencies were not


def dependency_order(paths: list[str], deps: dict[str, set[str]]) -> Order:
    """``paths`` ordered so that a file follows what it imports (module docstring); ``deps``
    maps a path to the paths it imports (others than the listed paths are ignored)."""
    import networkx as nx

    known = set(paths)
    waiting = {p: {d for d in deps.get(p, ()) if d in known and d != p} for p in paths}
    graph = nx.DiGraph()
    graph.add_nodes_from(paths)
    graph.add_edges_from((d, p) for p, ds in waiting.items() for d in ds)  # dependency -> dependent
    cycles = nx.condensation(graph)
    members = nx.get_node_attributes(cycles, "members")
    order: list[str] = []
    broken = 0
    for c in nx.lexicographical_topological_sort(cycles, key=lambda c: min(members[c])):
        inside, n = min_unmet_first(sorted(members[c]), waiting)
        order += inside
        broken += n
    return Order(order, sum(len(ds) for ds in waiting.values()), broken)


def min_unmet_first(paths: list[str], deps: dict[str, set[str]]) -> tuple[list[str], int]:
    """DeepSeek-Coder's rule on ``paths`` (dependencies outside them count as met): the file
    with the fewest unplaced dependencies first, the smaller path on a tie. Returns the order
    and how many files were placed with a dependency unmet."""
    members = set(paths)
    dependents: dict[str, list[str]] = defaultdict(list)
    count = {}
    for p in paths:
        inside = deps.get(p, set()) & members
        count[p] = len(inside)
        for d in inside:
            dependents[d].append(p)
    heap = [(n, p) for p, n in count.items()]
    heapq.heapify(heap)
    placed: set[str] = set()
    order: list[str] = []
    broken = 0
    while heap:
        n, p = heapq.heappop(heap)
        if p in placed or n != count[p]:  # a stale entry: its count has dropped since
            continue
        placed.add(p)
        order.append(p)
        broken += n > 0
        for q in dependents[p]:
            if q not in placed:
                count[q] -= 1
                heapq.heappush(heap, (count[q], q))
    return order, broken


def file_block(path: str, text: str, language: str | None, header: bool = True) -> str:
    """One file as it stands in a packed document: its path comment, then its text, ending
    with a newline."""
    body = text if not text or text.endswith("\n") else text + "\n"
    return f"{path_comment(path, language)}\n{body}" if header else body


def chunk_blocks(blocks: list[str], max_chars: int) -> list[list[int]]:
    """The blocks' indices grouped into documents of at most ``max_chars`` characters
    (counting the blank line between blocks), in order; an oversized block stands alone."""
    docs: list[list[int]] = []
    size = 0
    for i, b in enumerate(blocks):
        add = len(b) + (1 if docs and docs[-1] else 0)
        if not docs or (docs[-1] and size + add > max_chars):
            docs.append([])
            size, add = 0, len(b)
        docs[-1].append(i)
        size += add
    return docs


def join_blocks(blocks: list[str]) -> str:
    return "\n".join(blocks)


__all__ = ["Order", "chunk_blocks", "dependency_order", "file_block", "join_blocks", "min_unmet_first"]
