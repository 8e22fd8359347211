"""The README-ready benchmarks section (docs/benchmarks.md), generated from one run.

Everything after the ``KEEP`` marker line in an existing file is preserved on regeneration,
so hand-written analysis survives a new run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from _common import JSONDict, render_table
from _machine import lines as machine_lines
from _report import Section, all_targets, targets_table

KEEP = "<!-- everything below this line is kept when benchmarks/run.py regenerates the file -->"


def render(sections: Sequence[Section], machine: JSONDict, *, chart: str | None,
           command: str) -> str:
    out: list[str] = ["## Benchmarks", ""]
    out.append(
        "Medians and ratios from one run of the whole comparison on the machine below "
        "(measurements, never assertions: a shared 2-vCPU VM is noisy, so read small "
        "differences with the 95% intervals in mind). Reproduce with:")
    out += ["", "```sh", command, "```", ""]
    out += ["**Machine**", "", "```", *machine_lines(machine), "```", ""]
    if chart:
        out += [f"![tether benchmarks]({chart})", ""]
    targets = all_targets(sections)
    if targets:
        met = sum(1 for t in targets if t.met)
        noisy = sum(1 for t in targets if "within noise" in t.verdict)
        extra = f" ({noisy} of the {len(targets)} within the noise)" if noisy else ""
        out += [f"### Targets: {met} of {len(targets)} met{extra}", "",
                targets_table(targets, markdown=True), ""]
    for s in sections:
        out += [f"### {s.title}", "", s.about, ""]
        if s.rows:
            out += [render_table(s.header, s.rows, markdown=True), ""]
        for note in s.notes:
            out += [f"- {note}"]
        if s.notes:
            out.append("")
        if s.extra:
            out += ["```", s.extra, "```", ""]
    return "\n".join(out)


def write(path: str, text: str) -> None:
    kept = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = f.read()
        if KEEP in old:
            kept = old[old.index(KEEP):]
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.rstrip() + "\n\n" + (kept if kept else KEEP + "\n"))
