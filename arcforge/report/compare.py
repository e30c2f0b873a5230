"""``arcforge report --compare``: what differs between two runs' reports.

Works on two ``report.json`` dicts (``collect.collect``), so it compares what the page shows:
drop shares per stage and reason (a move of more than one percentage point is a
difference), documents out per stage, filter thresholds, and check results, each with both
values, for the page's ``#compare`` section.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


def drop_shares(report: dict[str, Any]) -> dict[tuple[str, str], float]:
    """(stage, reason) -> share of the stage's input documents dropped for it."""
    out = {}
    for f in report["funnel"]["stages"]:
        din = f.get("docs_in") or 0
        for reason, d in f["dropped"].items():
            out[(f["name"], reason)] = d["docs"] / din if din else 0.0
    return out


def compare(a: dict[str, Any], b: dict[str, Any], *, pp: float = 0.01) -> dict[str, Any]:
    """What differs between two reports: drop shares (changed by more than ``pp``), docs out,
    thresholds and check results, each with both values."""
    sa, sb = drop_shares(a), drop_shares(b)
    drops = [{"stage": s, "reason": r, "a": sa.get((s, r), 0.0), "b": sb.get((s, r), 0.0),
              "diff": abs(sa.get((s, r), 0.0) - sb.get((s, r), 0.0)) > pp}
             for s, r in sorted(set(sa) | set(sb))]
    fa = {f["name"]: f for f in a["funnel"]["stages"]}
    fb = {f["name"]: f for f in b["funnel"]["stages"]}
    names = [s["name"] for s in a["stages"]] + [s["name"] for s in b["stages"] if s["name"] not in fa]
    docs = [{"stage": n, "a": (fa.get(n) or {}).get("docs_out"), "b": (fb.get(n) or {}).get("docs_out"),
             "diff": (fa.get(n) or {}).get("docs_out") != (fb.get(n) or {}).get("docs_out")}
            for n in dict.fromkeys(names) if n in fa or n in fb]
    ta = {(sc["name"], t["stage"], t["op"]): t["value"] for sc in a["scores"] for t in sc["thresholds"]}
    tb = {(sc["name"], t["stage"], t["op"]): t["value"] for sc in b["scores"] for t in sc["thresholds"]}
    thr = [{"column": k[0], "stage": k[1], "op": k[2], "a": ta.get(k), "b": tb.get(k), "diff": ta.get(k) != tb.get(k)}
           for k in sorted(set(ta) | set(tb))]
    ca = {(c["stage"], c["name"]): c.get("passed") for c in a["checks"]}
    cb = {(c["stage"], c["name"]): c.get("passed") for c in b["checks"]}
    checks = [{"stage": k[0], "name": k[1], "a": ca.get(k), "b": cb.get(k), "diff": ca.get(k) != cb.get(k)}
              for k in sorted(set(ca) | set(cb), key=str)]
    la = Counter({k: v for x in a["languages"][-1:] for k, v in x["counts"].items()})
    lb = Counter({k: v for x in b["languages"][-1:] for k, v in x["counts"].items()})
    ta_, tb_ = sum(la.values()) or 1, sum(lb.values()) or 1
    langs = [{"language": k, "a": la[k] / ta_, "b": lb[k] / tb_, "diff": abs(la[k] / ta_ - lb[k] / tb_) > pp}
             for k in sorted(set(la) | set(lb))]
    return {"a": a["run"]["dir"], "b": b["run"]["dir"], "threshold_pp": pp * 100, "drops": drops, "docs_out": docs,
            "thresholds": thr, "checks": checks, "languages": langs}


