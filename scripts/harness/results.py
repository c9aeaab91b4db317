"""The one long-format schema of every benchmark's results (``results/*.csv``): its writer and its reader.

One line per measured value. Columns, in this order:

- fixed, the same in every file: ``benchmark`` (the script or record kind: ``bench_step``, ``bench_step_profile``,
  ``bench_kernel``, ``bench_e2e``, ``bench_e2e_text``, ``eval_accuracy``, ``frontier``, ``bench_draft_sampling``,
  ``top_k_top_p``),
  ``run`` (one invocation: its start time, or the name of the file a run was converted from), ``row`` (the record's
  number within the run), ``timestamp`` (when the record was measured, UTC), ``device``, ``device_type``,
  ``threads``, ``load1``, ``python``, ``torch``, ``triton``, ``vllm`` (empty where a benchmark does not record it);
- the benchmark's configuration columns (provider, shape, workload, sampler, alpha, ...; empty for the other
  benchmarks of a file);
- ``metric``, ``value``: the name of one measured or derived quantity and its value (a number, or True / False for a
  flag such as ``on_frontier``). A value that is not there (NaN, not applicable) has no line.

A record, i.e. one row of the former wide CSVs, is the lines sharing (``benchmark``, ``run``, ``row``); ``read``
returns records as wide dicts (strings, as ``csv.DictReader`` gives them), so the plots read the same values. A file
holds one or more benchmarks and runs: a run appends to its file (``--quick`` replaces it), a configuration column
new to a file widens its header.
"""

from __future__ import annotations

import csv
import os

from . import timing

FIXED = ("benchmark", "run", "row", "timestamp", "device", "device_type", "threads", "load1", "python", "torch",
         "triton", "vllm")
TAIL = ("metric", "value")


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if v != v else f"{v:.6g}"
    return str(v)


def _header(path: str) -> list[str] | None:
    if not os.path.exists(path):
        return None
    with open(path, newline="") as f:
        header = next(csv.reader(f), None)
    if not header or list(header[:len(FIXED)]) != list(FIXED) or list(header[-2:]) != list(TAIL):
        raise SystemExit(f"{path} is not in the results schema (scripts/harness/results.py): "
                         "remove it or write elsewhere (--out)")
    return header


def _append(path: str, config: list[str], lines: list[dict], replace: bool = False) -> None:
    """Append ``lines`` (dicts over FIXED + config + TAIL) to ``path``, widening its header if needed."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    header = None if replace else _header(path)
    if header is None:
        header = [*FIXED, *config, *TAIL]
        with open(path, "w", newline="") as f:
            csv.writer(f).writerow(header)
    elif any(c not in header for c in config):
        old = header[len(FIXED):-2]
        header = [*FIXED, *old, *(c for c in config if c not in old), *TAIL]
        with open(path, newline="") as f:
            kept = list(csv.DictReader(f))
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, header, restval="")
            w.writeheader()
            w.writerows(kept)
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, header, restval="").writerows(lines)


def _lines(record: dict, config: list[str], metrics: list[str]) -> list[dict]:
    base = {c: _fmt(record.get(c, "")) for c in (*FIXED, *config)}
    return [dict(base, metric=m, value=_fmt(record[m])) for m in metrics if _fmt(record.get(m, "")) != ""]


class Writer:
    """Writes a benchmark's records (wide dicts over ``columns``) to ``path`` in the long format, one run.

    ``columns``: the record's columns (fixed, configuration and metric, as the script lists them); ``metrics``: which
    of them are measured or derived values (the ``metric``/``value`` lines), every other one not in ``FIXED`` is a
    configuration column. ``replace``: start the file afresh (``--quick``); otherwise the run is appended."""

    def __init__(self, path: str, benchmark: str, columns, metrics, run: str | None = None, replace: bool = False):
        metrics = set(metrics)
        self.path, self.benchmark = path, benchmark
        self.run = run or timing.timestamp()
        self.config = [c for c in columns if c not in FIXED and c not in metrics]
        self.metrics = [c for c in columns if c in metrics]
        self.rows = 0
        if replace and os.path.exists(path):
            os.remove(path)

    def write(self, record: dict) -> None:
        missing = [c for c in (*self.config, *self.metrics) if c not in record]
        if missing:
            raise KeyError(f"record lacks columns {missing}")
        rec = dict(record, benchmark=self.benchmark, run=self.run, row=self.rows)
        _append(self.path, self.config, _lines(rec, self.config, self.metrics))
        self.rows += 1


def write_records(path: str, records: list[dict], columns, metrics) -> None:
    """Write ``records`` (wide dicts that carry ``benchmark``, ``run`` and ``row``) as the whole of ``path``."""
    metrics = set(metrics)
    config = [c for c in columns if c not in FIXED and c not in metrics]
    config += [c for r in records for c in r if c not in FIXED and c not in metrics and c not in config]
    config = list(dict.fromkeys(config))
    mets = [c for c in columns if c in metrics]
    _append(path, config, [x for r in records for x in _lines(r, config, mets)], replace=True)


def read(path: str, benchmark: str | None = None, run: str | None = None) -> list[dict]:
    """The records of ``path`` (optionally of one benchmark / run) as wide dicts of strings, in the file's order;
    a metric a record has no line for reads as ``""``."""
    _header(path)
    records: dict = {}
    metrics: dict = {}
    with open(path, newline="") as f:
        for line in csv.DictReader(f):
            if (benchmark and line["benchmark"] != benchmark) or (run and line["run"] != run):
                continue
            key = (line["benchmark"], line["run"], line["row"])
            rec = records.get(key)
            if rec is None:
                rec = records[key] = {c: v for c, v in line.items() if c not in TAIL}
            rec[line["metric"]] = line["value"]
            metrics[line["metric"]] = None
    out = list(records.values())
    for rec in out:
        for m in metrics:
            rec.setdefault(m, "")
    return out


def runs(path: str, benchmark: str | None = None) -> list[str]:
    """The runs of ``path`` (optionally of one benchmark), in the file's order."""
    return list(dict.fromkeys(r["run"] for r in read(path, benchmark)))


def one_run(path: str, run: str | None, benchmark: str | None = None) -> str:
    """``run`` if given, else the file's only run; several runs and none named: SystemExit listing them."""
    found = runs(path, benchmark)
    if run is None:
        if len(found) == 1:
            return found[0]
        raise SystemExit(f"{path} holds {len(found)} runs; name one with --run: {', '.join(found)}")
    if run not in found:
        raise SystemExit(f"{path} has no run {run!r}; its runs: {', '.join(found)}")
    return run
