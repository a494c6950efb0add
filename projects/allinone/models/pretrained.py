"""The shared backbone's pretrained weights: can they be had (before anything is built), and what loaded.

A backbone is initialised from a checkpoint the mmengine way, ``init_cfg=dict(type='Pretrained',
checkpoint=URL_OR_FILE, prefix='backbone')``: a URL is downloaded once into torch's hub cache
(``$TORCH_HOME/hub/checkpoints/<file name>``, what ``mmengine.runner.load_from_http`` reads), a local
file is read as it is. The backbone's own load-state-dict hooks adapt the checkpoint to the model
(mmpretrain's ViT resizes ``pos_embed`` to the training input size, its Swin the position-bias tables).

* :func:`check_pretrained` runs in ``tools/train.py`` before the datasets and the model are built:
  with no network (or a wrong path) training stops at once with the URL or path, where to put the
  file, and the switch for a from-scratch run.
* :func:`recording_loads` + :func:`load_report` give the load report of ``AllInOneModel.init_weights``:
  matched, shape-mismatched, missing and unexpected keys by backbone module.
"""
import os.path as osp
from collections import OrderedDict
from contextlib import contextmanager
from typing import Callable, Dict, List, Optional, Tuple
from urllib.parse import urlparse

from torch import nn

FROM_SCRATCH = '--cfg-options model.backbone.init_cfg=None'
LOCAL_FILE = '--cfg-options model.backbone.init_cfg.checkpoint=/path/to/file.pth'


def pretrained_checkpoint(init_cfg) -> Optional[Tuple[str, Optional[str]]]:
    """``(checkpoint, prefix)`` of a ``Pretrained`` init config, else None."""
    if isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained':
        return init_cfg.get('checkpoint'), init_cfg.get('prefix')
    return None


def hub_cache_path(url: str) -> str:
    """Where mmengine (torch.hub's ``load_state_dict_from_url``) caches and looks for ``url``."""
    import torch.hub
    return osp.join(torch.hub.get_dir(), 'checkpoints', osp.basename(urlparse(url).path))


def _probe(url: str, timeout: float) -> Optional[str]:
    """None if ``url`` answers, else why not (no download: mmengine downloads at init)."""
    import urllib.request
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method='HEAD'), timeout=timeout):
            return None
    except Exception as e:  # no network, DNS, HTTP 404, proxy, ...: all mean "cannot be had"
        return f'{type(e).__name__}: {e}'


def check_pretrained(cfg, timeout: float = 10.0, say=print) -> Optional[str]:
    """Check, before anything is built, that the backbone's pretrained checkpoint can be had.

    Returns the checkpoint (local path or URL) that training will load, or None (no pretrained init,
    or the run starts from ``load_from`` / ``--resume``, whose weights replace it: the init is then
    dropped with a note). Raises ``SystemExit`` with the URL or path, where to put the file and the
    from-scratch switch when it cannot be had.
    """
    backbone = (cfg.get('model') or {}).get('backbone') or {}
    found = pretrained_checkpoint(backbone.get('init_cfg'))
    if found is None:
        if backbone.get('init_cfg', None) is None:
            say('backbone: no pretrained weights (model.backbone.init_cfg=None): training from scratch')
        return None
    checkpoint, _ = found
    if cfg.get('resume') or cfg.get('load_from'):
        source = 'the resumed checkpoint' if cfg.get('resume') else f'load_from={cfg.get("load_from")}'
        say(f'backbone: pretrained init ({checkpoint}) skipped: the weights come from {source}')
        backbone['init_cfg'] = None
        return None
    if not isinstance(checkpoint, str) or not checkpoint:
        raise SystemExit(f'model.backbone.init_cfg.checkpoint must be a URL or a file path, got {checkpoint!r}')
    scheme = urlparse(checkpoint).scheme
    if scheme in ('http', 'https'):
        cached = hub_cache_path(checkpoint)
        if osp.isfile(cached):
            say(f'backbone: pretrained weights {checkpoint} (cached at {cached})')
            return checkpoint
        problem = _probe(checkpoint, timeout)
        if problem is None:
            say(f'backbone: pretrained weights {checkpoint}: downloading into {cached} at init')
            return checkpoint
        raise SystemExit(
            'The pretrained backbone weights cannot be had:\n'
            f'  {checkpoint}\n  ({problem})\n'
            'Either\n'
            '  * download that file where there is network and put it at\n'
            f'      {cached}\n'
            "    (the cache mmengine reads; $TORCH_HOME moves it), or\n"
            f'  * give a local file: {LOCAL_FILE}\n'
            '    (a timm checkpoint: convert it first with tools/convert_weights.py), or\n'
            f'  * train from random weights on purpose: {FROM_SCRATCH}')
    if scheme:  # open-mmlab://, torchvision://, s3://, ...: mmengine's loaders resolve these
        say(f'backbone: pretrained weights {checkpoint}')
        return checkpoint
    path = osp.abspath(osp.expanduser(checkpoint))
    if not osp.isfile(path):
        raise SystemExit(
            f'The pretrained backbone weights file does not exist: {path}\n'
            f'(model.backbone.init_cfg.checkpoint={checkpoint!r}; relative paths are relative to the '
            'repository root). Put the file there, point the key at it '
            f'({LOCAL_FILE}), or train from random weights on purpose: {FROM_SCRATCH}')
    backbone['init_cfg']['checkpoint'] = path
    say(f'backbone: pretrained weights {path}')
    return path


# ------------------------------------------------------------------ the load report
@contextmanager
def recording_loads(module: nn.Module):
    """Record the keys and shapes of every state dict loaded into ``module`` inside the block.

    A load-state-dict pre-hook registered after the module's own runs after them, so it sees the
    checkpoint as the module adapts it (a ViT's ``pos_embed`` already resized). Yields a list with one
    ``{key: shape}`` per load (keys relative to ``module``).
    """
    loads: List[Dict[str, tuple]] = []

    def record(mod, state_dict, prefix, *args):
        loads.append(OrderedDict((k[len(prefix):], tuple(v.shape)) for k, v in state_dict.items()
                                 if k.startswith(prefix) and hasattr(v, 'shape')))

    handle = module.register_load_state_dict_pre_hook(record)
    try:
        yield loads
    finally:
        handle.remove()


def _module_group(key: str) -> str:
    """The report's row of a key: ``layers.3`` / ``stages.2`` for numbered blocks, else the top module."""
    parts = key.split('.')
    if len(parts) > 2 and parts[1].isdigit():
        return '.'.join(parts[:2])
    return parts[0] if len(parts) > 1 else key


def load_report(module: nn.Module, loaded: Dict[str, tuple], plain_key: Callable[[str], str] = lambda k: k) -> dict:
    """Compare the checkpoint's ``{key: shape}`` (as the module saw it) with the module's state dict.

    ``plain_key``: how a plain checkpoint names a key of ``module`` (a routing method that gives a layer one
    copy per task maps ``<layer>.copies.<task>.<p>`` back to ``<layer>.<p>``, the key the copies load from).
    """
    model = OrderedDict()
    for k, v in module.state_dict().items():
        if not k.endswith('num_batches_tracked'):
            model.setdefault(plain_key(k), tuple(v.shape))
    buffers = {plain_key(k) for k, _ in module.named_buffers()}
    matched = [k for k, s in model.items() if loaded.get(k) == s]
    mismatched = [(k, loaded[k], s) for k, s in model.items() if k in loaded and loaded[k] != s]
    # a buffer the checkpoint lacks (a Swin's relative_position_index) keeps the value the model computed
    missing_buffers = [k for k in model if k not in loaded and k in buffers]
    missing = [k for k in model if k not in loaded and k not in buffers]
    unexpected = [k for k in loaded if k not in model and not k.endswith('num_batches_tracked')]
    groups = OrderedDict()
    for kind, keys in (('matched', matched), ('mismatched', [k for k, _, _ in mismatched]),
                       ('missing', missing), ('unexpected', unexpected)):
        for k in keys:
            groups.setdefault(_module_group(k), dict(matched=0, mismatched=0, missing=0, unexpected=0))[kind] += 1
    ordered = OrderedDict()  # the model's order, then modules only the checkpoint has
    for k in list(model) + unexpected:
        g = _module_group(k)
        if g in groups and g not in ordered:
            ordered[g] = groups[g]
    return dict(total=len(model) - len(missing_buffers), matched=matched, mismatched=mismatched, missing=missing,
                missing_buffers=missing_buffers, unexpected=unexpected, groups=ordered)


def format_load_report(report: dict, source: str) -> str:
    rows = [(g, c['matched'], c['mismatched'], c['missing'], c['unexpected']) for g, c in report['groups'].items()]
    width = max([len('module')] + [len(r[0]) for r in rows])
    lines = [f"backbone load report ({source}): {len(report['matched'])} of {report['total']} tensors "
             f"loaded; {len(report['mismatched'])} shape mismatched, {len(report['missing'])} missing "
             f"(kept at their initialisation), {len(report['unexpected'])} unexpected (ignored)",
             f"  {'module'.ljust(width)}  matched  mismatched  missing  unexpected"]
    for g, m, mm, mi, u in rows:
        lines.append(f'  {g.ljust(width)}  {m:7d}  {mm:10d}  {mi:7d}  {u:10d}')
    if report['missing_buffers']:
        names = sorted({k.rsplit('.', 1)[-1] for k in report['missing_buffers']})
        lines.append(f"  + {len(report['missing_buffers'])} buffers not in the checkpoint, kept as the model "
                     f"computes them ({', '.join(names)})")
    for k, ck, md in report['mismatched']:
        lines.append(f'  shape mismatch {k}: checkpoint {list(ck)}, model {list(md)}')
    if report['missing']:
        lines.append(f"  missing: {', '.join(report['missing'][:20])}{' ...' if len(report['missing']) > 20 else ''}")
    if report['unexpected']:
        lines.append(f"  unexpected: {', '.join(report['unexpected'][:20])}"
                     f"{' ...' if len(report['unexpected']) > 20 else ''}")
    return '\n'.join(lines)


def check_load_report(report: dict, source: str, prefix: Optional[str]) -> None:
    """A checkpoint of which nothing loads is an error: the run would silently start from random weights."""
    if report['matched']:
        return
    model_keys = [k for k in report['groups']][:5]
    raise RuntimeError(
        f'backbone pretrained init: none of the {report["total"]} backbone tensors was found in {source} '
        f"(prefix {prefix!r}; checkpoint keys after the prefix: {report['unexpected'][:5]}, model modules: "
        f'{model_keys}). Is it a checkpoint of another model, or of another library (timm: convert it with '
        'tools/convert_weights.py), or is the prefix wrong (model.backbone.init_cfg.prefix)? '
        f'For a from-scratch run: {FROM_SCRATCH}')


def describe_source(init_cfg) -> str:
    found = pretrained_checkpoint(init_cfg)
    if found is None:
        return 'no checkpoint'
    checkpoint, prefix = found
    local = hub_cache_path(checkpoint) if urlparse(str(checkpoint)).scheme in ('http', 'https') else None
    where = f'{checkpoint}' + (f' -> {local}' if local and osp.isfile(local) else '')
    return where + (f", prefix '{prefix}'" if prefix else '')


__all__ = ['FROM_SCRATCH', 'check_pretrained', 'check_load_report', 'describe_source', 'format_load_report',
           'hub_cache_path', 'load_report', 'pretrained_checkpoint', 'recording_loads']
