"""A config that drops tasks of its base (``model.tasks.seg=None``) keeps scoring and saving right.

Leaderboard B is trained by dropping tasks from the AllInOne config. The base's boards still name
the dropped tasks, and its ``save_best='leaderboard/A'`` names a board that is no longer scored, so
mmengine's CheckpointHook stops the first validation with ``KeyError: 'leaderboard/A'``.
:func:`adapt_to_dropped_tasks` removes the boards that name a dropped task and points ``save_best``
at a board (or task score) that is still computed, and says what it changed.
"""
import copy
from typing import List

#: the loop configs that carry a ``leaderboard`` dict
LOOP_SECTIONS = ('val_cfg', 'test_cfg')


def model_tasks(cfg) -> List[str]:
    """The tasks of ``cfg.model.tasks`` that are not dropped (set to None)."""
    tasks = ((cfg.get('model') or {}).get('tasks')) or {}
    return [t for t, v in tasks.items() if v is not None]


def adapt_to_dropped_tasks(cfg) -> List[str]:
    """Remove boards naming tasks that ``cfg.model.tasks`` drops; move ``save_best`` off a removed
    board. Returns one message per change (nothing when no task is dropped)."""
    tasks = model_tasks(cfg)
    all_tasks = list((((cfg.get('model') or {}).get('tasks')) or {}).keys())
    dropped = [t for t in all_tasks if t not in tasks]
    if not tasks or not dropped:
        return []
    messages, scored_boards = [], None
    for section in LOOP_SECTIONS:
        loop = cfg.get(section)
        board_cfg = (loop or {}).get('leaderboard') or {}
        boards = board_cfg.get('boards')
        if not boards:
            if section == 'val_cfg':
                scored_boards = ['A']  # the Leaderboard's default: A = every task of the model
            continue
        kept = {b: list(ts) for b, ts in boards.items() if all(t in tasks for t in ts)}
        for b, ts in boards.items():
            if b not in kept:
                gone = [t for t in ts if t not in tasks]
                messages.append(f"{section}.leaderboard.boards.{b} ({'+'.join(ts)}) names task(s) {gone} that "
                                'this config drops (model.tasks.<task>=None): board not scored')
        loop = copy.deepcopy(loop)
        if kept:
            loop['leaderboard']['boards'] = kept
        else:
            loop['leaderboard'].pop('boards')
            messages.append(f'{section}.leaderboard: no board left; board A is the mean of the kept task(s) '
                            f"{'+'.join(tasks)}")
        if 'primary' in loop['leaderboard']:
            loop['leaderboard']['primary'] = {t: v for t, v in loop['leaderboard']['primary'].items() if t in tasks}
        cfg[section] = loop
        if section == 'val_cfg':
            scored_boards = list(kept) or ['A']
    if scored_boards is not None:
        messages += _adapt_save_best(cfg, tasks, scored_boards, dropped)
    return messages


def _adapt_save_best(cfg, tasks: List[str], boards: List[str], dropped: List[str]) -> List[str]:
    hook = ((cfg.get('default_hooks') or {}).get('checkpoint')) or {}
    save_best = hook.get('save_best')
    if not save_best or save_best == 'auto':
        return []
    names = [save_best] if isinstance(save_best, str) else list(save_best)
    valid = {f'leaderboard/{b}' for b in boards} | {f'leaderboard/{t}' for t in tasks}
    bad = [n for n in names if n.startswith('leaderboard/') and n not in valid]
    if not bad:
        return []
    new = [f'leaderboard/{boards[0]}' if n in bad else n for n in names]  # same length as a list of rules
    shown = new[0] if isinstance(save_best, str) else new
    cfg.default_hooks.checkpoint.save_best = shown
    return [f"default_hooks.checkpoint.save_best={save_best!r} names a leaderboard score that this config no longer "
            f"computes (dropped task(s): {', '.join(dropped)}): saving the best checkpoint by {shown!r} instead "
            f"(scored here: {', '.join(sorted(valid))}; set default_hooks.checkpoint.save_best to choose)"]
