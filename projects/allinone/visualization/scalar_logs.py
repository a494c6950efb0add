"""Read the scalars mmengine's ``LocalVisBackend`` logged for a run, across resumed segments.

Each start of ``tools/train.py`` (the first one and every ``--resume``) writes a new
``WORK_DIR/<timestamp>/vis_data/scalars.json``: one JSON object per line, training rows (the
logged losses, gradient statistics, ``lr``, ``time``... at ``step`` = iteration) and validation
rows (the metrics and leaderboard scores at ``step`` = the iteration validated). A resumed segment
restarts from its checkpoint, so rows the earlier segment logged after that point were redone:
they are superseded by the later segment's rows from its first step on.
"""
import json
import os.path as osp
import re
from glob import glob
from typing import Dict, List, Tuple

_STAMP = re.compile(r'^\d{8}_\d{6}$')


def scalar_files(work_dir: str) -> List[str]:
    """The run's ``*/vis_data/scalars.json`` files, oldest segment first (by timestamp folder)."""
    files = glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))

    def order(path):
        stamp = osp.basename(osp.dirname(osp.dirname(path)))
        return (0, stamp, osp.getmtime(path)) if _STAMP.match(stamp) else (1, '', osp.getmtime(path))

    return sorted(files, key=order)


def _read_rows(path: str) -> List[dict]:
    with open(path) as f:
        lines = [(n, line.strip()) for n, line in enumerate(f, 1) if line.strip()]
    rows = []
    for i, (n, line) in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:  # a run killed while writing leaves a cut last line
                break
            raise ValueError(f'{path}: line {n} is not JSON ({e})') from e
        if isinstance(row, dict) and 'step' in row:
            rows.append(row)
    return rows


def is_train_row(row: dict) -> bool:
    """A training log row (it has the loss); validation rows hold metrics (``task/metric``) instead."""
    return 'loss' in row


def _merge(segments: List[List[dict]]) -> List[dict]:
    merged: List[dict] = []
    for rows in segments:
        if not rows:
            continue
        first = min(r['step'] for r in rows)
        merged = [r for r in merged if r['step'] < first] + rows
    return sorted(merged, key=lambda r: r['step'])


def load_scalar_logs(work_dir: str) -> Tuple[List[dict], List[dict], List[str]]:
    """``(train_rows, val_rows, files)`` of a run, every segment merged, each sorted by step.

    Raises FileNotFoundError naming the folder when it holds no scalar log.
    """
    files = scalar_files(work_dir)
    if not files:
        raise FileNotFoundError(f'{work_dir}: no */vis_data/scalars.json (was the run made with '
                                "mmengine's LocalVisBackend, as configs/_base_/default_runtime.py sets?)")
    train, val = [], []
    for path in files:
        rows = _read_rows(path)
        train.append([r for r in rows if is_train_row(r)])
        val.append([r for r in rows if not is_train_row(r) and any('/' in k for k in r)])
    return _merge(train), _merge(val), files


def series(rows: List[dict], key: str) -> Tuple[List[int], List[float]]:
    """Steps and values of ``key`` over the rows that have it."""
    pts = [(r['step'], float(r[key])) for r in rows if key in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def task_names(train_rows: List[dict]) -> List[str]:
    """Tasks with per-task gradient statistics (``{task}.grad_norm``), in logged order."""
    out: Dict[str, None] = {}
    for r in train_rows:
        for k in r:
            if k.endswith('.grad_norm'):
                out.setdefault(k[:-len('.grad_norm')], None)
    return list(out)


def cosine_pairs(train_rows: List[dict]) -> List[str]:
    """The logged ``cos.{a}-{b}`` keys, in logged order."""
    out: Dict[str, None] = {}
    for r in train_rows:
        for k in r:
            if k.startswith('cos.') and '-' in k:
                out.setdefault(k, None)
    return list(out)


def fresh_cosines(train_rows: List[dict], pairs: List[str]) -> Tuple[List[int], List[List[float]]]:
    """Steps and ``[pair][time]`` cosines, without repeats of an earlier measurement.

    The cosines are measured every ``stats_interval`` updates; a log row in between may repeat the
    last measurement. A row whose cosines all equal the previous row's is such a repeat and dropped.
    """
    steps, cols, last = [], [], None
    for r in train_rows:
        if not all(p in r for p in pairs):
            continue
        vec = tuple(float(r[p]) for p in pairs)
        if vec == last:
            continue
        last = vec
        steps.append(r['step'])
        cols.append(vec)
    return steps, [[c[i] for c in cols] for i in range(len(pairs))]
