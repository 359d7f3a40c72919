"""`wms model`: the model's table, and its plots (matplotlib, optional: `pip install 'spd-wms[model]'`)."""
from __future__ import annotations

from pathlib import Path

from tools.model.model import Parameters, capacity, flow, scaled

RATES_HZ = [0.25e6, 0.5e6, 1e6, 1.5e6, 2e6, 2.5e6, 3e6]  # the event rates the plots sweep


def si(value: float, unit: str = "") -> str:
    """1234567 -> '1.23 M' (three significant digits)."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}".rstrip()
    return f"{value:.3g} {unit}".rstrip()


QUANTITIES = [("files/s in", "files_in_per_s"), ("jobs/s", "jobs_per_s"), ("bytes/s in", "bytes_in_per_s"),
              ("bytes/s out", "bytes_out_per_s"), ("events/s in", "events_in_per_s"),
              ("events/s out", "events_out_per_s"), ("cores busy", "cores"), ("pilots", "pilots"),
              ("WMS requests/s", "wms_requests_per_s")]


def table(p: Parameters) -> tuple[list[str], list[list[str]]]:
    """A quantity a row, a stage a column (fits 80 columns for any chain of a few stages)."""
    flows = flow(p)
    return ["per stage", *(f.name for f in flows)], [
        [label, *(si(getattr(f, attribute)) for f in flows)] for label, attribute in QUANTITIES]


def as_records(p: Parameters) -> list[dict[str, float | str]]:
    return [{"stage": f.name, **{attribute: getattr(f, attribute) for _, attribute in QUANTITIES}} for f in flow(p)]


def summary(p: Parameters) -> dict[str, float | int]:
    c = capacity(p, flow(p))
    return {"jobs_per_s": c.jobs_per_s, "wms_requests_per_s": c.wms_requests_per_s, "cores": c.cores,
            "pilots": c.pilots, "job_executor_replicas": c.job_executor_replicas,
            "headroom": p.wms.headroom, "job_executor_jobs_per_s": p.wms.job_executor_jobs_per_s}


def plot(p: Parameters, directory: Path) -> list[Path]:
    """jobs/s and cores vs the event rate, per stage: two PNGs in ``directory``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("plots need matplotlib: pip install 'spd-wms[model]'") from exc
    directory.mkdir(parents=True, exist_ok=True)
    sweeps = [flow(scaled(p, rate)) for rate in RATES_HZ]
    written = []
    for attribute, label, name in (("jobs_per_s", "jobs/s", "jobs-vs-event-rate.png"),
                                   ("cores", "cores busy", "cores-vs-event-rate.png")):
        figure, axes = plt.subplots(figsize=(7, 4.5))
        for i, stage in enumerate(p.stages):
            axes.plot([r / 1e6 for r in RATES_HZ], [getattr(s[i], attribute) for s in sweeps], marker="o",
                      label=stage.name)
        axes.set_xlabel("event rate (MHz)")
        axes.set_ylabel(label)
        axes.set_title(f"SPD online filter: {label} per stage")
        axes.grid(True, alpha=0.3)
        axes.legend()
        figure.tight_layout()
        path = directory / name
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written
