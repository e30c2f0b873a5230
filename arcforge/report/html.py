"""Render a report dict (``collect.collect``) as one self-contained HTML page.

Self-contained means it opens from a file with no network at all: the CSS is inline, the
charts are inline SVG (``svg.py``), and there is no JavaScript (``<details>`` does the
folding). Every string from the run goes through ``esc`` (``html.escape``), because
documents are untrusted web text: a page holding ``<script>`` must show it, not run it.
Sample texts were already cut by ``collect`` so the page stays small whatever the corpus.
"""

from __future__ import annotations

from typing import Any

from arcforge.report import svg
from arcforge.report.svg import esc, fmt

SECTIONS = [("funnel", "Funnel"), ("languages", "Languages"), ("scores", "Scores"), ("buckets", "Buckets"),
            ("dedup", "Dedup"), ("domains", "Domains"), ("samples", "Samples"), ("runtime", "Runtime"),
            ("checks", "Checks")]
STATE_TEXT = {"fresh": "fresh", "committed": "committed", "stale": "stale", "not run": "not committed",
              "incomplete": "not committed"}

CSS = """
:root{--fg:#1d2330;--muted:#667085;--line:#e4e7ec;--bg:#f7f8fa;--card:#fff;--accent:#0072B2;--ok:#1e874b;
--bad:#c0392b;--warn:#b26a00}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--fg);background:var(--bg)}header{background:#101828;color:#fff;padding:18px 28px 0}
header h1{margin:0;font-size:21px}header .sub{color:#b9c0cc;margin:4px 0 12px;font-size:13px;word-break:break-all}
nav{display:flex;flex-wrap:wrap;gap:2px;position:sticky;top:0}nav a{color:#d0d5dd;text-decoration:none;
padding:8px 12px;border-radius:6px 6px 0 0;font-size:13px}nav a:hover{background:#1d2939;color:#fff}
main{max-width:1180px;margin:0 auto;padding:12px 24px 40px}section{background:var(--card);border:1px solid var(--line);
border-radius:10px;padding:16px 20px;margin:18px 0}h2{margin:0 0 10px;font-size:18px}h3{font-size:15px;margin:14px 0 6px}
p.note,.muted{color:var(--muted);font-size:13px}table{border-collapse:collapse;width:100%;margin:8px 0;font-size:13px}
th,td{border-bottom:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f2f4f7;font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:14px}
.card{border:1px solid var(--line);border-radius:8px;padding:10px 12px;background:#fcfcfd;overflow-x:auto}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;color:#fff;white-space:nowrap}
.b-fresh,.b-committed,.b-pass{background:var(--ok)}.b-stale{background:var(--warn)}.b-not-committed,.b-fail{background:var(--bad)}
.b-na{background:#98a2b3}.b-blocking{background:#344054}
.chips{display:flex;flex-wrap:wrap;gap:6px;margin:0 0 12px}.chip{border:1px solid var(--line);border-radius:6px;
padding:3px 8px;background:#fff;font-size:12px}
pre{white-space:pre-wrap;word-break:break-word;background:#f8f9fb;border:1px solid var(--line);border-radius:6px;
padding:8px 10px;margin:6px 0;font:12px/1.4 ui-monospace,Menlo,Consolas,monospace;max-height:420px;overflow:auto}
.sample{margin:10px 0}.sample .meta{font-size:12px;color:var(--muted);word-break:break-all}
details{margin:6px 0}summary{cursor:pointer;font-weight:600}tr.diff td{background:#fff4d6}tr.diff td.both{font-weight:700}
svg.chart{display:block;max-width:100%;height:auto;margin:6px 0}svg .lbl{font-size:12px;fill:#344054}
svg .val,svg .tick{font-size:11px;fill:#667085}svg .seg{font-size:10px;fill:#fff}svg .axis{stroke:#98a2b3}
svg .grid{stroke:#eef0f3}svg .threshold{stroke:#c0392b;stroke-width:2}svg .cutoff{stroke:#667085;stroke-dasharray:3 3}
svg .mark{font-size:11px;fill:#c0392b;font-weight:600}svg .mark.mk-cutoff{fill:#475467;font-weight:400}
.warn{color:var(--warn)}footer{color:var(--muted);text-align:center;font-size:12px;padding:10px}
"""


def badge(state: str) -> str:
    text = STATE_TEXT.get(state, state)
    return f'<span class="badge b-{esc(text.replace(" ", "-"))}">{esc(text)}</span>'


def table(head: list[str], rows: list[list[str]], numeric: set[int] = frozenset(), row_class: list[str] | None = None) -> str:
    """An HTML table; cells are already escaped HTML."""
    th = "".join(f'<th class="n">{h}</th>' if i in numeric else f"<th>{h}</th>" for i, h in enumerate(head))
    body = []
    for j, r in enumerate(rows):
        cls = f' class="{row_class[j]}"' if row_class and row_class[j] else ""
        body.append(f"<tr{cls}>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                          for i, c in enumerate(r)) + "</tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{esc(title)}</h2>{body}</section>'


# ------------------------------------------------------------------------------------ sections


def funnel_html(r: dict[str, Any]) -> str:
    f = r["funnel"]
    rows = f["stages"]
    out = ['<div class="chips">' + "".join(f'<span class="chip">{esc(s["name"])} {badge(s["state"])}'
                                          + (f' <span class="muted">{esc(s["reason"])[:160]}</span>' if s["reason"] else "")
                                          + "</span>" for s in r["stages"]) + "</div>"]
    if f.get("note"):
        out.append(f'<p class="note">{esc(f["note"])}</p>')
    if rows:
        bars = [(x["name"], x["docs_out"], f'{x["docs_out"]:,} of {fmt(x["docs_in"])}') for x in rows]
        out.append("<h3>Documents out per stage</h3>" + svg.hbar(bars, label="documents out per stage"))
        if any(x["tokens_out"] is not None for x in rows):
            tb = [(x["name"], x["tokens_out"] or 0, ("≈" if x["tokens_estimated"] else "") + fmt(x["tokens_out"])) for x in rows]
            out.append("<h3>Tokens out per stage</h3>" + svg.hbar(tb, label="tokens out per stage", bar_color=svg.PALETTE[2]))
        drops = [(x["name"], [("kept", x["docs_out"])] + [(k, d["docs"]) for k, d in sorted(
            x["dropped"].items(), key=lambda kv: -kv[1]["docs"])]) for x in rows if x["dropped"]]
        if drops:
            totals = [f'{sum(v for k, v in segs if k != "kept"):,} dropped of {sum(v for _, v in segs):,}' for _, segs in drops]
            out.append("<h3>Drops by reason (share of each stage's input)</h3>"
                       + svg.stacked_hbar(drops, label="drops by reason", colors={"kept": svg.KEPT}, total_text=totals))
    state = {s["name"]: s for s in r["stages"]}
    trs = []
    for x in rows:
        dr = ", ".join(f'{esc(k)} {d["docs"]:,}' + (f' ({fmt(d["tokens"])} tok)' if d["tokens"] is not None else "")
                       for k, d in sorted(x["dropped"].items(), key=lambda kv: -kv[1]["docs"]))
        trs.append([esc(x["name"]), badge(state[x["name"]]["state"]), fmt(x["docs_in"]), fmt(x["docs_out"]),
                    pct(x["docs_out"] / x["docs_in"]) if x["docs_in"] else "-",
                    ("≈" if x["tokens_estimated"] else "") + fmt(x["tokens_out"]), fmt(x["bytes_in"]), fmt(x["bytes_out"]), dr or "-"])
    for s in r["stages"]:
        if not s["committed"]:
            extra = f'{s["parts_done"]} parts done' if s["parts_done"] else ""
            trs.append([esc(s["name"]), badge(s["state"]), "-", "-", "-", "-", "-", "-", esc(extra or s["reason"] or "-")])
    out.append(table(["stage", "state", "docs in", "docs out", "kept", "tokens out", "bytes in", "bytes out",
                      "dropped: docs (tokens) by reason"], trs, {2, 3, 4, 5, 6, 7}))
    return "".join(out)


def languages_html(r: dict[str, Any]) -> str:
    langs = r["languages"]
    if not langs:
        return '<p class="note">No stage has a <code>language</code> column with values.</p>'
    rows = []
    for x in langs:
        items = list(x["counts"].items())
        segs = items[:8] + ([("other", sum(v for _, v in items[8:]))] if len(items) > 8 else [])
        rows.append((x["stage"], segs))
    last = langs[-1]
    total = sum(last["counts"].values()) or 1
    trs = [[esc(k), f"{v:,}", pct(v / total)] for k, v in list(last["counts"].items())[:30]]
    return ("<h3>Language shares per stage (documents)</h3>" + svg.stacked_hbar(rows, label="languages per stage")
            + f"<h3>Documents per language in {esc(last['stage'])}</h3>" + table(["language", "docs", "share"], trs, {1, 2}))


def scores_html(r: dict[str, Any]) -> str:
    if not r["scores"]:
        return '<p class="note">No numeric score in any stage\'s <code>_stats.json</code>.</p>'
    cards = []
    for s in r["scores"]:
        h = s.get("histogram") or {}
        markers = [{"x": t["value"], "kind": "threshold", "label": f'{t["stage"]}: {t["op"]} {fmt(t["value"])}'}
                   for t in s["thresholds"]]
        cut = s.get("cutoffs") or {}
        groups = cut.get("groups") or []
        drawn = groups[0]["values"] if groups else cut.get("values", [])  # grouped: the largest group's
        who = f'{cut.get("group_by")} {groups[0]["group"]}: ' if groups else ""
        markers += [{"x": v, "kind": "cutoff", "label": f"{who}bucket {i} starts at {fmt(v)}"} for i, v in drawn]
        chart = svg.histogram(h.get("edges") or [], h.get("counts") or [], markers=markers, below=h.get("below") or 0,
                              above=h.get("above") or 0, xlabel=s["name"], approximate=not s.get("histogram_exact", True),
                              label=f"histogram of {s['name']}")
        q = s.get("quantiles") or {}
        qs = " · ".join(f"{k} {fmt(q[k])}" for k in ("p10", "p50", "p90") if k in q)
        lines = [f"{fmt(s['count'])} values, mean {fmt(s['mean'])}" + (f", {qs}" if qs else "")]
        for t in s["thresholds"]:
            lines.append(f'<span class="warn">filter {esc(t["stage"])}: keep {esc(s["name"])} {esc(t["op"])} '
                         f'{esc(fmt(t["value"]))}</span>' + (f' (else {esc(t["reason"])})' if t.get("reason") else ""))
        if groups:
            g0 = groups[0]
            lines.append(f'bucket cut-offs from {esc(cut["stage"])} per {esc(cut["group_by"])} ({len(groups)} groups); '
                         f'dashed: {esc(g0["group"])}, the largest' + (f' ({fmt(g0["docs"])} docs)' if g0.get("docs") else ""))
        elif cut:
            lines.append(f'{len(cut["values"])} bucket cut-offs from {esc(cut["stage"])} (dashed)')
        cards.append(f'<div class="card score" data-score="{esc(s["name"])}"><h3>{esc(s["name"])} '
                     f'<span class="muted">added by {esc(s["stage"])}</span></h3>{chart}'
                     f'<p class="note">{"<br>".join(lines)}</p>{group_cutoffs_table(cut)}</div>')
    return '<div class="grid">' + "".join(cards) + "</div>"


def group_cutoffs_table(cut: dict[str, Any], columns: int = 5) -> str:
    """Grouped cut-offs as a table: a row per group (most documents first), the lowest score of
    a few buckets spread over the range (all of them when there are ``columns`` or fewer)."""
    groups = cut.get("groups") or []
    if not groups:
        return ""
    ks = sorted({k for g in groups for k, _ in g["values"]})
    if len(ks) > columns:
        ks = sorted({ks[round(i * (len(ks) - 1) / (columns - 1))] for i in range(columns)})
    rows = []
    for g in groups:
        at = dict((k, v) for k, v in g["values"])
        rows.append([esc(g["group"]), fmt(g["docs"]) if g.get("docs") is not None else "-",
                     *(fmt(at[k]) if k in at else "-" for k in ks)])
    head = [esc(cut["group_by"]), "docs", *(f"bucket {k} from" for k in ks)]
    return f'<div class="cutoffs-by-group">{table(head, rows, set(range(1, len(head))))}</div>'


def _bint(b: str) -> int:
    try:
        return int(b)
    except ValueError:
        return -1


def buckets_html(r: dict[str, Any]) -> str:
    b = r["buckets"]
    out = []
    if not b["docs"] and not b["tokens"]:
        out.append('<p class="note">No quality buckets in this run (no <code>quality.buckets</code> stage committed).</p>')
    tok_stage = next(iter(b["tokens"]), None)
    toks = b["tokens"].get(tok_stage, {}) if tok_stage else {}
    keys = sorted(set(b["docs"]) | set(toks), key=lambda k: -_bint(k))
    if toks:
        rows = [(f"bucket {k}", sorted(toks.get(k, {}).items())) for k in keys]
        out.append(f"<h3>Tokens per bucket and source ({esc(tok_stage)}; 0 = lowest quality)</h3>"
                   + svg.stacked_hbar(rows, normalize=False, label="tokens per bucket",
                                      total_text=[fmt(sum(toks.get(k, {}).values())) for k in keys]))
    blends = [x for x in b["blends"] if any(s.get("bucket") is not None for s in x["sources"])][:3]
    if not b["blends"]:
        out.append('<p class="note"><b>no mixture yet</b>: no blend of this run was found '
                   "(<code>arcforge mix</code> registers them under <code>_blends/</code>).</p>")
    if blends:
        bl = blends[0]
        ep: dict[str, dict[str, float]] = {}
        for s in bl["sources"]:
            if s.get("bucket") is not None and s.get("available_tokens"):
                ep.setdefault(str(s["bucket"]), {})[str(s["source"])] = s.get("epochs") or 0.0
        bars = [(f"bucket {k}", max(ep[k].values()), " / ".join(f"{src} {v:g}" for src, v in sorted(ep[k].items())))
                for k in sorted(ep, key=lambda k: -_bint(k))]
        out.append(f"<h3>Epochs per bucket in blend {esc(bl['stage'])}</h3>" + svg.hbar(bars, label="epochs per bucket",
                                                                                        bar_color=svg.PALETTE[1]))
    if keys:
        head = ["bucket", "docs", "tokens"] + [f"epochs in {esc(x['stage'])}" for x in blends]
        trs = []
        for k in keys:
            row = [esc(k), fmt(b["docs"].get(k)), fmt(sum(toks.get(k, {}).values())) if toks else "-"]
            for x in blends:
                e = {str(s["source"]): s.get("epochs") for s in x["sources"]
                     if str(s.get("bucket")) == k and s.get("available_tokens")}
                row.append(esc(", ".join(f"{src} {v:g}" for src, v in sorted(e.items()) if v is not None)) or "-")
            trs.append(row)
        out.append(table(head, trs, {1, 2}))
    if b["blends"]:
        trs = [[esc(x["stage"]), badge(x["state"]) if x["state"] in ("fresh", "stale") else esc(x["state"]),
                fmt(x["tokens"]), esc(", ".join(sorted({str(s["source"]) for s in x["sources"]}))), esc(x["path"])]
               for x in b["blends"]]
        out.append("<h3>Blends of this run</h3>" + table(["blend", "state", "tokens", "sources", "file"], trs, {2}))
    return "".join(out)


def dedup_html(r: dict[str, Any]) -> str:
    if not r["dedup"]:
        return '<p class="note">No committed dedup stage in this run.</p>'
    cards = []
    for d in r["dedup"]:
        head = f'<h3>{esc(d["stage"])} <span class="muted">{esc(d["uses"])}: {d["dropped"]:,} of {fmt(d["docs_in"])} removed</span></h3>'
        chart = svg.hbar([(f"size {s}", n, f"{n:,} clusters") for s, n in d["sizes"]], label="cluster sizes",
                         width=460) if d["sizes"] else '<p class="note">No duplicate clusters.</p>'
        cl = []
        for c in d["clusters"]:
            removed = "".join(f'<li>removed {esc(m["id"])}: {esc(m["line"])}</li>' for m in c["removed"])
            cl.append(f'<div class="sample"><div class="meta">cluster of {c["size"]} ({esc(c["reason"])}), kept '
                      f'{esc(c["keeper"])}</div><pre>{esc(c["keeper_line"])}</pre><ul>{removed}</ul></div>')
        counters = table(["counter", "value"], [[esc(k), fmt(v)] for k, v in d["counters"].items()], {1}) if d["counters"] else ""
        cards.append(f'<div class="card">{head}<p class="note">cluster-size distribution (clusters)</p>{chart}'
                     + "".join(cl) + (f"<details><summary>counters</summary>{counters}</details>" if counters else "")
                     + "</div>")
    return '<div class="grid">' + "".join(cards) + "</div>"


def domains_html(r: dict[str, Any]) -> str:
    d = r["domains"]
    if not d or not d.get("top"):
        return '<p class="note">No web URLs among the kept documents.</p>'
    pm = "" if d.get("exact") else f" ± {d.get('max_error')}"
    bars = [(t["domain"], t["docs"], f'{t["docs"]:,}{pm}') for t in d["top"]]
    return (f'<p class="note">Top hosts of the {fmt(d["docs"])} kept web documents of {esc(d["stage"])}'
            + ("" if d.get("exact") else " (approximate counts)") + "</p>" + svg.hbar(bars, label="top domains"))


def _sample_html(s: dict[str, Any]) -> str:
    meta = [f"id {esc(s.get('id'))}"] + [f"{k} {esc(s[k])}" for k in ("language", "url", "step", "detail") if s.get(k)]
    if s.get("cut"):
        meta.append(f"cut: {fmt(s.get('text_chars'))} characters in all")
    return f'<div class="sample"><div class="meta">{" · ".join(meta)}</div><pre>{esc(s.get("text"))}</pre></div>'


def samples_html(r: dict[str, Any]) -> str:
    k = r["samples"]["kept"]
    out = [f"<h3>Kept documents ({esc(k['stage'] or '-')}, first lines)</h3>"]
    out += [_sample_html(s) for s in k["docs"]] or ['<p class="note">none</p>']
    rej = r["samples"]["rejected"]
    out.append("<h3>Rejected documents by reason</h3>")
    if not rej:
        out.append('<p class="note">No rejected document samples.</p>')
    for x in rej:
        out.append(f'<details class="rejected"><summary>{esc(x["stage"])} · {esc(x["reason"])} '
                   f'<span class="muted">({fmt(x["count"])} docs)</span></summary>'
                   + "".join(_sample_html(s) for s in x["samples"]) + "</details>")
    return "".join(out)


def runtime_html(r: dict[str, Any]) -> str:
    rt = r["runtime"]
    bars = [(s["name"], s["seconds"] or 0, f'{fmt(s["seconds"])} s') for s in rt["stages"] if s["seconds"] is not None]
    trs = [[esc(s["name"]), esc(s["engine"]), esc(s["uses"]), fmt(s["seconds"]), fmt(s["docs_in"]), fmt(s["docs_per_s"])]
           for s in rt["stages"]]
    cfg = rt["config"]
    text = f"<pre>{esc(cfg['text'])}</pre>" if cfg.get("text") is not None else f'<p class="note">{esc(cfg.get("note"))}</p>'
    pk = [[esc(k), esc(v) if v else '<span class="muted">not installed</span>'] for k, v in rt["packages"].items()]
    return ("<h3>Task seconds per stage</h3>" + svg.hbar(bars, label="seconds per stage", bar_color=svg.PALETTE[4])
            + table(["stage", "engine", "uses", "seconds", "docs in", "docs/s"], trs, {3, 4, 5})
            + f"<details><summary>run config {esc(cfg.get('path') or '')}</summary>{text}</details>"
            + f"<details><summary>package versions (Python {esc(rt['python'])})</summary>{table(['package', 'version'], pk)}</details>")


def checks_html(r: dict[str, Any]) -> str:
    checks = r["checks"]
    if not checks:
        return '<p class="note">No data-quality checks were evaluated for this run.</p>'
    n_fail = sum(1 for c in checks if c.get("passed") is False)
    n_pass = sum(1 for c in checks if c.get("passed") is True)
    trs = []
    for c in checks:
        p = c.get("passed")
        b = '<span class="badge b-pass">pass</span>' if p is True else '<span class="badge b-fail">fail</span>' \
            if p is False else '<span class="badge b-na">n/a</span>'
        trs.append([b, esc(c.get("stage")), esc(c.get("name")) + (' <span class="badge b-blocking">blocking</span>'
                                                                  if c.get("blocking") else ""),
                    esc(c.get("metric")), esc(fmt(c["value"]) if isinstance(c.get("value"), (int, float)) else c.get("value")),
                    esc(c.get("expected")), esc(c.get("description"))])
    return (f'<p>{n_pass} passed, {n_fail} failed, {len(checks) - n_pass - n_fail} not applicable</p>'
            + table(["", "stage", "check", "metric", "value", "expected", "description"], trs))


def compare_html(c: dict[str, Any]) -> str:
    out = [f'<p class="note">A = {esc(c["a"])}<br>B = {esc(c["b"])}<br>Highlighted: a drop share or language share '
           f'that moved by more than {c["threshold_pp"]:g} percentage point, or any other value that differs.</p>']

    def block(title: str, head: list[str], items: list[dict[str, Any]], key: list[str], show: Any) -> None:
        if not items:
            return
        trs = [[esc(it[k]) for k in key] + [f'<span class="both">{show(it["a"])} → {show(it["b"])}</span>'] for it in items]
        out.append(f"<h3>{title}</h3>" + table(head, trs, row_class=["diff" if it["diff"] else "" for it in items]))

    block("Drop share per reason (of each stage's input)", ["stage", "reason", "A → B"], c["drops"], ["stage", "reason"], pct)
    block("Documents out", ["stage", "A → B"], c["docs_out"], ["stage"], fmt)
    block("Filter thresholds", ["column", "stage", "op", "A → B"], c["thresholds"], ["column", "stage", "op"], fmt)
    block("Language shares (last stage)", ["language", "A → B"], c["languages"], ["language"], pct)
    block("Checks", ["stage", "check", "A → B"], c["checks"], ["stage", "name"],
          lambda v: "pass" if v is True else "fail" if v is False else "n/a")
    return "".join(out)


def render(report: dict[str, Any], comparison: dict[str, Any] | None = None) -> str:
    """The whole page."""
    run = report["run"]
    secs = [(sid, title, globals()[f"{sid}_html"](report)) for sid, title in SECTIONS]
    if comparison is not None:
        secs.append(("compare", "Compare", compare_html(comparison)))
    nav = "".join(f'<a href="#{sid}">{esc(t)}</a>' for sid, t, _ in secs)
    warn = "".join(f'<li>{esc(w)}</li>' for w in report.get("warnings") or [])
    notes = ([f'<p class="note">{esc(run["note"])}</p>'] if run.get("note") else []) + \
        ([f'<section id="warnings"><h2>Warnings</h2><ul>{warn}</ul></section>'] if warn else [])
    n_stages = len(report["stages"])
    n_ok = sum(1 for s in report["stages"] if s["committed"])
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">"
            f"<title>arcforge report: {esc(run['name'])}</title><style>{CSS}</style></head><body>"
            f"<header><h1>arcforge report · {esc(run['name'])}</h1><p class=\"sub\">{esc(run['dir'])} · config "
            f"{esc(run.get('config') or '-')} · {n_ok} of {n_stages} stages committed</p><nav>{nav}</nav></header><main>"
            + "".join(notes) + "".join(section(sid, t, body) for sid, t, body in secs)
            + "</main><footer>written by <code>arcforge report</code>; the numbers are in report.json beside this file"
            "</footer></body></html>\n")


__all__ = ["render"]
