"""Route each sample through exactly one of several augmentation branches, mixing ones included."""
import logging
import numbers
from typing import Dict, List, Optional, Sequence

import numpy as np
from mmcv.transforms import BaseTransform, Compose
from mmcv.transforms.utils import cache_randomness
from mmengine.logging import print_log
from mmengine.registry import TRANSFORMS


def takes_dataset_images(transform) -> bool:
    """Whether ``transform`` mixes in other images of the dataset, which its caller must load for it.

    These are the transforms the libraries' ``MultiImageMixDataset`` feeds: mmdet's ``get_indexes``
    (``Mosaic``, ``MixUp``, ``CopyPaste``), mmseg's ``get_indices`` (``RandomMosaic``). mmdet's cached
    variants (``CachedMosaic``, ``CachedMixUp``) also have ``get_indexes``, but over their own cache of
    earlier samples (``results_cache``): they need nobody to load anything.
    """
    if hasattr(transform, 'results_cache'):
        return False
    if isinstance(transform, MultiBranchAugment):  # nested: only if one of its branches mixes
        return transform.mixes
    return callable(getattr(transform, 'get_indexes', None)) or callable(getattr(transform, 'get_indices', None))


def _index_method(transform):
    return getattr(transform, 'get_indexes', None) or getattr(transform, 'get_indices')


def nested_transforms(transform):
    """Transforms held inside a wrapper transform (Compose, RandomChoice, RandomApply, KeyMapper...)."""
    inner = getattr(transform, 'transforms', None)
    if inner is None:
        return []
    return list(inner) if isinstance(inner, (list, tuple)) else [inner]



def _planar_shapes(results: dict) -> None:
    """``img_shape`` / ``ori_shape`` as (h, w): mmseg's RandomMosaic writes the mosaic's (h, w, c), which a
    later crop fixes for ``img_shape`` only; a prediction on such a sample would resize its logits to a
    3-d ``ori_shape`` and fail."""
    for key in ('img_shape', 'ori_shape'):
        shape = results.get(key)
        if isinstance(shape, (tuple, list)) and len(shape) == 3:
            results[key] = tuple(shape[:2])

@TRANSFORMS.register_module()
class MultiBranchAugment(BaseTransform):
    """Pick one branch per sample (by probability) and apply only that branch.

    Augmentations that conflict, e.g. Mosaic / MixUp composition against heavy scale / crop / weather
    jitter, go to different branches so that they never stack on one sample (the multi-branch pipeline
    of the TBGC solution). Each branch is a list of ordinary transform configs of the dataset's own
    library (built in its scope). The chosen branch's name is written to ``results['aug_branch']``
    (add ``'aug_branch'`` to the Pack transform's ``meta_keys`` to see it in the data samples, and in
    the training log through ``AugBranchHook``).

    **Mixing transforms inside a branch.** A branch may hold transforms that mix in other images of
    the dataset (mmdet ``Mosaic``, ``MixUp``; mmseg ``RandomMosaic``), directly in the branch's list.
    The branch is chosen first; only a branch that mixes draws extra images, each mixing transform
    gets exactly its own (``results['mix_results']``, as the libraries' wrappers give it). The extra
    images come from either
    - the libraries' own ``MultiImageMixDataset`` (mmdet or mmseg) wrapping the dataset: this
      transform answers their ``get_indexes`` / ``get_indices`` (choosing the branch there), and the
      wrapper loads the images through its inner dataset's pipeline; or
    - the dataset itself, when it binds its mixing transforms (the project's datasets do, see
      ``MixingPipelineMixin``): the extra images run through the transforms that come *before* this
      one in the dataset's pipeline. Same draws, same result as the wrapper with that split, and the
      dataset config stays flat.
    mmdet's cached variants (``CachedMosaic``, ``CachedMixUp``) need neither: their cache fills with
    the samples that take their branch.

    **Schedules.** ``schedule`` changes branch weights from an iteration or a fraction of training,
    e.g. Mosaic off for the last tenth: ``[dict(at_frac=0.9, probs=dict(mosaic=0))]``. The transform
    does not know the iteration: ``AugBranchHook`` (in the project's default runtime) applies the
    entries, restarts loader workers so they see the change, checkpoints the weights and logs the
    share of samples per branch.

    Args:
        branches: list of branches, each a list of transform configs (an empty list = identity).
        probs: weight of each branch (normalised; default uniform). 0 switches a branch off.
        names: a name per branch for logs and tests (default ``'branch0'``...).
        schedule: list of ``dict(at_iter=N | at_frac=f, probs={name: weight})``: from training
            iteration N (or ``ceil(f * max_iters)``) on, the named branches take the given weights
            (the others keep theirs; all are renormalised).
    """

    def __init__(self, branches: Sequence[Sequence[dict]], probs: Optional[Sequence[float]] = None,
                 names: Optional[Sequence[str]] = None, schedule: Optional[Sequence[dict]] = None):
        if not branches:
            raise ValueError('MultiBranchAugment needs at least one branch')
        probs = [1.0] * len(branches) if probs is None else list(probs)
        if len(probs) != len(branches):
            raise ValueError(f'MultiBranchAugment: {len(branches)} branches but {len(probs)} probs')
        names = [f'branch{i}' for i in range(len(branches))] if names is None else list(names)
        if len(names) != len(branches):
            raise ValueError(f'MultiBranchAugment: {len(branches)} branches but {len(names)} names')
        if len(set(names)) != len(names):
            raise ValueError(f'MultiBranchAugment: branch names must be unique, got {names}')
        self.names: List[str] = names
        self.branches: List[Compose] = [Compose(list(b)) for b in branches]
        self.weights = self._checked_weights(probs)
        # per branch: positions of the transforms that need other images of the dataset
        self.mixers: List[List[int]] = []
        for name, branch in zip(self.names, self.branches):
            self.mixers.append([k for k, t in enumerate(branch.transforms) if takes_dataset_images(t)])
            for t in branch.transforms:
                self._refuse_hidden_mixers(name, t)
        self.schedule: List[dict] = [self._checked_entry(e) for e in (schedule or [])]
        self.source = None  # set by bind_source(): where a flat pipeline's extra images come from
        self.driven = False  # set by AugBranchHook when it applies ``schedule``
        self._pending = None  # (branch, number of extra images per mixing transform) chosen in get_indexes
        self._warned_undriven = False

    # ------------------------------------------------------------------ configuration
    def _checked_weights(self, probs) -> np.ndarray:
        w = np.asarray([float(p) for p in probs], dtype=np.float64)
        if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f'MultiBranchAugment: probs must be >= 0 with a positive sum, got {list(probs)}')
        return w

    @property
    def probs(self) -> np.ndarray:
        """Each branch's probability (the weights normalised)."""
        return self.weights / self.weights.sum()

    def probs_by_name(self) -> Dict[str, float]:
        return {n: float(p) for n, p in zip(self.names, self.probs)}

    def set_weights(self, weights: Dict[str, float]) -> None:
        """Give the named branches new weights (0 = off); the others keep theirs."""
        unknown = [n for n in weights if n not in self.names]
        if unknown:
            raise KeyError(f'MultiBranchAugment has no branch {unknown}; its branches are {self.names}')
        new = self.weights.copy()
        for n, w in weights.items():
            new[self.names.index(n)] = w
        self.weights = self._checked_weights(new)

    def _checked_entry(self, entry: dict) -> dict:
        entry = dict(entry)
        keys = set(entry) - {'at_iter', 'at_frac', 'probs'}
        if keys:
            raise ValueError(f'MultiBranchAugment schedule entry {entry}: unknown keys {sorted(keys)} '
                             "(use at_iter or at_frac, and probs)")
        if ('at_iter' in entry) == ('at_frac' in entry):
            raise ValueError(f'MultiBranchAugment schedule entry {entry}: give exactly one of at_iter '
                             '(a training iteration) or at_frac (a fraction of max_iters)')
        if 'at_iter' in entry:
            it = entry['at_iter']
            if not isinstance(it, numbers.Integral) or isinstance(it, bool) or it < 0:
                raise ValueError(f'MultiBranchAugment schedule entry {entry}: at_iter must be an integer >= 0')
        elif not isinstance(entry['at_frac'], numbers.Real) or not 0 <= entry['at_frac'] <= 1:
            raise ValueError(f'MultiBranchAugment schedule entry {entry}: at_frac must lie in [0, 1]')
        probs = entry.get('probs')
        if not isinstance(probs, dict) or not probs:
            raise ValueError(f'MultiBranchAugment schedule entry {entry}: probs must be a dict '
                             '{branch name: weight}')
        unknown = [n for n in probs if n not in self.names]
        if unknown:
            raise ValueError(f'MultiBranchAugment schedule entry {entry}: unknown branch(es) {unknown}; '
                             f'the branches are {self.names}')
        if any(not isinstance(p, numbers.Real) or p < 0 for p in probs.values()):
            raise ValueError(f'MultiBranchAugment schedule entry {entry}: weights must be numbers >= 0')
        return entry

    def _refuse_hidden_mixers(self, branch: str, transform, outer=None) -> None:
        """A mixing transform wrapped in RandomApply / RandomChoice / Compose inside a branch would never
        get its images (neither wrapper looks inside): say so at build time."""
        outer = transform if outer is None else outer
        for inner in nested_transforms(transform):
            if takes_dataset_images(inner):
                raise ValueError(
                    f'MultiBranchAugment branch {branch!r}: {type(inner).__name__} is nested inside '
                    f'{type(outer).__name__}; a transform that mixes in other images must sit directly '
                    'in the branch list (use another MultiBranchAugment for a random choice around it)')
            self._refuse_hidden_mixers(branch, inner, outer)

    @property
    def mixes(self) -> bool:
        """Whether some branch mixes in other images of the dataset."""
        return any(self.mixers)

    def bind_source(self, source) -> None:
        """Where the extra images of a mixing branch come from when no mixing wrapper gives them:
        ``source[i]`` is sample ``i`` after the loading part of the pipeline, ``len(source)`` the
        dataset size (see ``MixSource``)."""
        self.source = source

    # ------------------------------------------------------------------ choosing and mixing
    @cache_randomness
    def _choose(self) -> int:
        return int(np.random.choice(len(self.branches), p=self.probs))

    def _draw_indexes(self, branch: int, dataset) -> List[list]:
        """Indexes of the extra images of each mixing transform of ``branch`` (in branch order)."""
        out = []
        for k in self.mixers[branch]:
            idx = _index_method(self.branches[branch].transforms[k])(dataset)
            out.append(list(idx) if isinstance(idx, (list, tuple)) else [idx])
        return out

    def get_indexes(self, dataset) -> list:
        """Choose this sample's branch, and the extra images its mixing transforms need (none for a
        branch that does not mix). Called by mmdet's ``MultiImageMixDataset`` right before
        ``transform`` with the images of these indexes in ``results['mix_results']``."""
        branch = self._choose()
        per_mixer = self._draw_indexes(branch, dataset)
        self._pending = (branch, [len(i) for i in per_mixer])
        return [i for idx in per_mixer for i in idx]

    get_indices = get_indexes  # mmseg's MultiImageMixDataset asks by this name

    def transform(self, results: dict) -> Optional[dict]:
        if self.schedule and not self.driven and not self._warned_undriven:
            print_log(f'MultiBranchAugment {self.names} has a schedule but no AugBranchHook applies it: the '
                      f'weights stay {self.probs_by_name()}', logger='current', level=logging.WARNING)
            self._warned_undriven = True
        if 'mix_results' in results:  # from a MultiImageMixDataset: the branch was chosen in get_indexes
            if self._pending is None:
                raise RuntimeError('MultiBranchAugment got mix_results without its get_indexes having run')
            branch, counts = self._pending
            mixed = list(results.pop('mix_results'))
            if len(mixed) != sum(counts):
                raise RuntimeError(f'MultiBranchAugment: branch {self.names[branch]!r} asked for {sum(counts)} '
                                   f'extra images and got {len(mixed)}')
            chunks, start = [], 0
            for n in counts:
                chunks.append(mixed[start:start + n])
                start += n
        else:
            branch = self._choose()
            chunks = []
            if self.mixers[branch]:
                if self.source is None:
                    mixers = ', '.join(type(self.branches[branch].transforms[k]).__name__ for k in self.mixers[branch])
                    raise RuntimeError(
                        f'MultiBranchAugment branch {self.names[branch]!r} holds {mixers}, which mix in other '
                        "images of the dataset, but nothing gives them: wrap the dataset in the library's "
                        "MultiImageMixDataset (mmdet / mmseg), or use a dataset that binds its pipeline's "
                        'mixing transforms (the project datasets, MixingPipelineMixin)')
                chunks = [[self.source[i] for i in idx] for idx in self._draw_indexes(branch, self.source)]
        results = self._run_branch(branch, results, chunks)
        if results is not None:
            results['aug_branch'] = self.names[branch]
            _planar_shapes(results)
        return results

    def _run_branch(self, branch: int, results: dict, chunks: List[list]) -> Optional[dict]:
        mixers = self.mixers[branch]
        for k, t in enumerate(self.branches[branch].transforms):
            if k in mixers:
                results['mix_results'] = chunks[mixers.index(k)]
            results = t(results)
            if results is None:
                return None
            results.pop('mix_results', None)
        return results

    def __repr__(self):
        parts = ', '.join(f'{n} (p={p:.2f}): {b!r}' for n, p, b in zip(self.names, self.probs, self.branches))
        return f'{type(self).__name__}({parts})'
