"""The README chart: four panels of medians (p90 as a whisker) from one run. Needs matplotlib
(``pip install tether[chart]``); without it, :func:`write` says so and returns False."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from _common import JSONDict, log, median, p90

TETHER = "#1f6f8b"
OTHER = "#b0b0b0"


def _barh(ax: Any, labels: Sequence[str], values: Sequence[float], whiskers: Sequence[float],
          colors: Sequence[str], unit: str, *, log_x: bool = False) -> None:
    y = list(range(len(labels)))[::-1]
    err = [[0.0] * len(values), [max(0.0, w - v) for v, w in zip(values, whiskers, strict=True)]]
    ax.barh(y, values, color=colors, xerr=err, error_kw={"elinewidth": 0.8, "capsize": 2})
    ax.set_yticks(y, labels, fontsize=7.5)
    ax.set_xlabel(unit, fontsize=8)
    ax.tick_params(axis="x", labelsize=7.5)
    if log_x:
        ax.set_xscale("log")
    for yi, v, w in zip(y, values, whiskers, strict=True):
        ax.text(max(v, w), yi, f" {_num(v)}", va="center", fontsize=7)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)


def _num(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def _color(label: str) -> str:
    return TETHER if label.startswith(("tether", "Pidfd", "spawn_lifelined")) else OTHER


def write(raw: JSONDict, machine: JSONDict, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("chart skipped: matplotlib is not installed (pip install matplotlib)")
        return False
    panels = [k for k in ("spawn", "latency", "cascade", "supervise") if k in raw]
    if not panels:
        log("chart skipped: no section to plot")
        return False
    fig, axes = plt.subplots(len(panels), 1, figsize=(9.5, 2.6 * len(panels) + 0.6),
                             squeeze=False)
    for ax, key in zip(axes[:, 0], panels, strict=True):
        if key == "spawn":
            sp = raw["spawn"]
            labels, vals, wh, cols = [], [], [], []
            for pname, pdata in sp["parents"].items():
                mib = int(pdata["touched_mib"])
                size = f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"
                tag = "" if pname == "small" else f" [{size}]"
                for m in sp["order"]:
                    xs = pdata["samples"].get(m)
                    if not xs:
                        continue
                    lab = sp["labels"][m]
                    labels.append(lab + tag)
                    vals.append(median(xs) * 1e3)
                    wh.append(p90(xs) * 1e3)
                    cols.append(_color(lab))
            _barh(ax, labels, vals, wh, cols, "ms per spawn+wait of /bin/true (log)", log_x=True)
            ax.set_title("spawn + wait, small parent and big parent [touched memory]",
                         fontsize=9)
        elif key == "latency":
            lat = raw["latency"]
            ms = [m for m in [*lat["short"], *lat["long"]] if lat["samples"].get(m)]
            labels = [lat["labels"][m] for m in ms]
            _barh(ax, labels, [median(lat["samples"][m]) * 1e6 for m in ms],
                  [p90(lat["samples"][m]) * 1e6 for m in ms], [_color(x) for x in labels],
                  "us from the child's exit to the wait returning (log)", log_x=True)
            ax.set_title("exit-notification latency", fontsize=9)
        elif key == "cascade":
            cas = raw["cascade"]
            ms = [m for m, rows in cas["results"].items()
                  if any(r["seconds"] is not None for r in rows)]
            labels = [cas["labels"][m] for m in ms]
            secs = {m: [r["seconds"] for r in cas["results"][m] if r["seconds"] is not None]
                    for m in ms}
            _barh(ax, labels, [median(secs[m]) * 1e3 for m in ms],
                  [p90(secs[m]) * 1e3 for m in ms], [_color(x) for x in labels],
                  "ms from SIGKILL of the parent to ECHILD")
            ax.axvline(10, color="#c0392b", lw=0.8, ls="--")
            ax.set_title(f"cascade: the parent of a {cas['tree_size']}-process tree is SIGKILLed "
                         "(dashed: 10 ms target)", fontsize=9)
        else:
            sup = raw["supervise"]
            ms = list(sup["results"])
            labels = [sup["labels"][m] for m in ms]
            cpu = {m: [r["cpu_per_exit"] * 1e6 for r in sup["results"][m]] for m in ms}
            _barh(ax, labels, [median(cpu[m]) for m in ms], [max(cpu[m]) for m in ms],
                  [_color(x) for x in labels], "us of parent CPU per child exit")
            ax.set_title(f"supervising {sup['n']} children", fontsize=9)
    fig.suptitle(f"tether benchmarks - {machine.get('cpu', '?')}, "
                 f"{machine.get('cores', '?')} cores, {machine.get('kernel', '?')}, "
                 f"{machine.get('python', '?')}", fontsize=9)
    fig.text(0.01, 0.002, "bars: medians; whiskers: p90 (supervising: the worst round); "
             "blue: tether, grey: the stdlib ways. From one run of benchmarks/run.py.",
             fontsize=7, color="#555555")
    fig.tight_layout(rect=(0, 0.012, 1, 1))
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    log(f"chart written to {path}")
    return True
