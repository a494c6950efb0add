"""The DR-MGF training loop: rounds of task-dominant passes from common start weights, then fusion.

    train_cfg = dict(type='DRMGFTrainLoop', max_iters=..., val_interval=...,
                     round_iters=25,       # K: steps of each task-dominant pass
                     meta_iters=None,      # meta-fusion batches per round (default: K)
                     gate_until=0.5,       # fraction of training with the gated forward; then v is frozen
                     reverse_order=False,  # passes in task order (the official run script: inverse=0)
                     drmgf=dict(layers=None, aux_weight=0.5, own_gate=10.0, alpha_init=1e-3,
                                importance_optim=dict(type='Adam', lr=1e-4),
                                fusion_optim=dict(type='Adam', lr=0.1), alpha_ema=0.9,
                                ema_before_fusion=False, norm_fusion='meta', task_convs='rescale',
                                reset_buffers=False, lr_milestones=(0.5, ), lr_gamma=0.5))

A round is T passes of K iterations each (``runner.iter`` counts every optimizer step, so the
schedule, logging and checkpoints are per step; a round is ``T * K`` iterations, and a short last
round splits what is left evenly). Pass ``t`` starts from the round's start parameters ``W0`` (the
buffers run on from the previous pass unless ``reset_buffers``), trains on every task's batch with
task ``t``'s loss at 1 and the others' at ``aux_weight`` (through the config's optim wrapper and
aggregator), and, before ``gate_until``, with the gated forward of task ``t``, stepping the
importances after every step. After the last pass the fusion coefficients are meta-learned for
``meta_iters`` batches and the fused weights are written into the model (:class:`DRMGF`). The
learning rates of the importances and coefficients follow ``lr_milestones`` by the round's start.
The model optimizer's state carries on through the passes (as the official code's single Adam).
Validation runs at the first round end at or after each ``val_interval`` point, on the fused, plain
dense network. Checkpoints hold the DR-MGF state (importances, coefficients, their optimizers, and
within a round ``W0`` and the finished passes), so a run resumed anywhere, mid-round included,
continues as the uninterrupted one.
"""
import logging
from typing import Dict, List, Optional, Tuple

from mmengine.hooks import Hook
from mmengine.logging import print_log

from ...engine.loops import MultiTaskTrainLoop
from ...engine.model_wrappers.unwrap import unwrap_model
from ...registry import LOOPS
from .fusion import DRMGF


class DRMGFStateHook(Hook):
    """Puts the loop's DR-MGF state into every checkpoint and takes it back on resume."""
    priority = 'VERY_LOW'

    def __init__(self, loop: 'DRMGFTrainLoop'):
        self.loop = loop

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint['drmgf'] = self.loop.drmgf.state_dict_for_checkpoint()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get('drmgf')
        if state is None:
            print_log('the loaded checkpoint has no DR-MGF state (not saved by a DR-MGF run): the importances '
                      'start from its weights, and a resumed run starts a new round at its iteration',
                      logger='current', level=logging.WARNING)
            return
        self.loop.drmgf.load_checkpoint_state(state)
        self.loop.state_loaded = True


@LOOPS.register_module()
class DRMGFTrainLoop(MultiTaskTrainLoop):
    """:class:`MultiTaskTrainLoop` scheduled as DR-MGF rounds (see the module docstring)."""

    def __init__(self, runner, dataloader: Dict, max_iters: int, val_begin: int = 1, val_interval: int = 1000,
                 dynamic_intervals=None, round_iters: int = 25, meta_iters: Optional[int] = None,
                 gate_until: float = 0.5, reverse_order: bool = False, drmgf: Optional[dict] = None):
        super().__init__(runner, dataloader, max_iters, val_begin, val_interval, dynamic_intervals)
        if int(round_iters) != round_iters or round_iters < 1:
            raise ValueError(f'train_cfg.round_iters must be a positive integer, got {round_iters}')
        if not 0 <= gate_until <= 1:
            raise ValueError(f'train_cfg.gate_until must be a fraction of training in [0, 1], got {gate_until}')
        self.round_iters = int(round_iters)
        self.meta_iters = self.round_iters if meta_iters is None else int(meta_iters)
        if self.meta_iters < 0:
            raise ValueError(f'train_cfg.meta_iters must be >= 0, got {meta_iters}')
        self.gate_until = float(gate_until)
        model = self.model
        self.order: List[str] = list(model.task_names)[::-1] if reverse_order else list(model.task_names)
        self.drmgf = DRMGF(model, **(drmgf or {}))
        self.state_loaded = False
        runner.register_hook(DRMGFStateHook(self))
        mem = self.drmgf.memory_report(model)
        d = self.drmgf
        print_log(f'DR-MGF: {len(d.layer_names)} shared conv / linear layers with importances, '
                  f'{len(d.task_layers)} task convs ({d.task_convs}), {len(d.norm_keys)} shared norm parameters '
                  f"fused by {'coefficients' if d.norm_fusion == 'meta' else 'the mean'}; passes in the order "
                  f'{self.order}, '
                  f'rounds of {len(self.order)} x {self.round_iters} iterations + {self.meta_iters} meta batches; '
                  f'gated until iteration {self.gate_iter}; importance / coefficient lr x{d.lr_gamma} at '
                  f'{[int(round(m * self._max_iters)) for m in d.lr_milestones]}; extra memory: start copy '
                  f"{mem['start_copy_mb']:.1f} MB, task deltas {mem['task_deltas_mb']:.1f} MB, importances + "
                  f"coefficients {mem['importance_and_alpha_mb']:.1f} MB (+ {mem['optimizer_moments_mb']:.1f} MB "
                  'of their Adam moments)', logger='current')

    # ------------------------------------------------------------------ schedule
    @property
    def model(self):
        return unwrap_model(self.runner.model)

    @property
    def round_length(self) -> int:
        return len(self.order) * self.round_iters

    @property
    def gate_iter(self) -> int:
        """Rounds starting before this iteration use the gated forward and train the importances."""
        return int(round(self.gate_until * self._max_iters))

    def pass_lengths(self, round_start: int) -> List[int]:
        left = self._max_iters - round_start
        if left >= self.round_length:
            return [self.round_iters] * len(self.order)
        n = len(self.order)
        return [left // n + (i < left % n) for i in range(n)]

    def locate(self, it: int) -> Tuple[int, List[int], int, int]:
        """``(round start, pass lengths, pass index, step within the pass)`` of iteration ``it``."""
        start = (it // self.round_length) * self.round_length
        lengths = self.pass_lengths(start)
        offset = it - start
        for i, n in enumerate(lengths):
            if offset < n:
                return start, lengths, i, offset
            offset -= n
        raise IndexError(f'iteration {it} is past the schedule ({self._max_iters})')

    def round_ends_upto(self, it: int) -> int:
        """Rounds fused after ``it`` iterations."""
        full = it // self.round_length
        return full + (1 if it == self._max_iters and it % self.round_length else 0)

    def batches_drawn(self, iteration: int) -> int:
        return iteration + self.meta_iters * self.round_ends_upto(iteration)

    def is_round_end(self, it: int) -> bool:
        return it == self._max_iters or it % self.round_length == 0

    def validation_due(self) -> bool:
        it = self._iter
        if not self.is_round_end(it):
            return False
        if it == self._max_iters:
            return True
        prev = it - self.round_length
        return it // self.val_interval > prev // self.val_interval

    # ------------------------------------------------------------------ run
    def run(self):
        if self._iter == 0 and not self.state_loaded:
            self.drmgf.init_importances(self.model)  # from the weights now loaded (pretrained / load_from)
        return super().run()

    def run_iter(self, data_batch) -> None:
        runner, model, it = self.runner, self.model, self._iter
        start, lengths, i, j = self.locate(it)
        task, gated = self.order[i], start < self.gate_iter
        self.drmgf.set_progress(start / self._max_iters)
        if it == start:
            self.drmgf.begin_round(model)
        elif self.drmgf.start is None:
            if self.state_loaded:
                raise RuntimeError(f'DR-MGF: resumed at iteration {it}, inside a round, but the checkpoint '
                                   'holds no round start weights')
            print_log(f'DR-MGF: resuming at iteration {it} without DR-MGF state: a new round starts here',
                      logger='current', level=logging.WARNING)
            self.drmgf.begin_round(model)
        elif j == 0:
            self.drmgf.restore_start(model)
        runner.call_hook('before_train_iter', batch_idx=it, data_batch=data_batch)
        with self.drmgf.task_pass(model, task, gated):
            outputs = runner.model.train_step(data_batch, optim_wrapper=runner.optim_wrapper)
        if gated:
            self.drmgf.step_importances(runner.optim_wrapper.grad_sync)
        hub = runner.message_hub
        hub.update_scalar('train/drmgf.gated', float(gated))
        if j == lengths[i] - 1:
            self.drmgf.end_pass(model, task, gated)
            if all(n == 0 for n in lengths[i + 1:]):
                model.train()
                stats = self.drmgf.fuse(model, iter(self.next_batch, None), self.meta_iters, ema=not gated,
                                        sync=runner.optim_wrapper.grad_sync)
                hub.update_scalar('train/drmgf.meta_loss', stats['meta_loss'])
                for t, share in self.drmgf.importance_shares().items():
                    hub.update_scalar(f'train/drmgf.{t}.importance_share', share)
        runner.call_hook('after_train_iter', batch_idx=it, data_batch=data_batch, outputs=outputs)
        self._iter += 1
