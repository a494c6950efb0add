#!/usr/bin/env python
"""Validate a challenge submission and score it as the leaderboard would.

    python tools/score_submission.py SUBMISSION.json GROUND_TRUTH_ROOT [--split val]
        [--num-seg-classes 19] [--num-cls-classes 196] [--tasks cls dec seg] [--out scores.json]

GROUND_TRUTH_ROOT is a data root in the challenge layout (cls/, dec/, seg/), e.g. data/demo.
Exit status 2 and a list of problems when the file does not follow the format.
"""
import argparse
import json
import sys

from projects.allinone.evaluation.scorer import KEYS, GroundTruth, SubmissionError, score


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('submission')
    p.add_argument('ground_truth')
    p.add_argument('--split', default='val')
    p.add_argument('--num-seg-classes', type=int, default=19)
    p.add_argument('--num-cls-classes', type=int, default=196)
    p.add_argument('--tasks', nargs='+', default=list(KEYS), choices=KEYS)
    p.add_argument('--out', help='also write the scores as JSON')
    args = p.parse_args(argv)
    try:
        with open(args.submission) as f:
            sub = json.load(f)
    except json.JSONDecodeError as e:
        print(f'{args.submission}: not valid JSON: {e}', file=sys.stderr)
        return 2
    gt = GroundTruth(args.ground_truth, args.split, args.num_seg_classes, args.num_cls_classes)
    try:
        scores = score(sub, gt, tuple(args.tasks))
    except SubmissionError as e:
        print(f'{args.submission}: {e}', file=sys.stderr)
        return 2
    names = dict(cls='classification top-1', dec='detection mAP@0.5', seg='segmentation mIoU',
                 A='leaderboard A (mean)', B='leaderboard B (without seg)')
    for k, v in scores.items():
        print(f'{names[k]:28s} {v:.4f}')
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(scores, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
