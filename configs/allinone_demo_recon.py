# The demo with Recon: the shared layers where the tasks' gradients conflict most get one copy per task.
# 1. search (a quarter of the demo schedule of plain joint training; writes the ranked report):
#      python tools/recon_search.py configs/allinone_demo.py
#    -> work_dirs/allinone_demo_recon_search/recon_search/recon_report.json (+ recon_top_layers.png)
#    re-rank at another threshold / score, or list what a budget selects, without training:
#      python tools/recon_search.py --from-report REPORT --threshold -0.02 --score normalized --param-budget 0.05
# 2. train the converted model (this config): the layers of the report whose copies add at most 5% of the
#    backbone's parameters, by the raw conflict count below S = 0. The copies start alike from the
#    model's initialisation (or, with load_from, from a pre-conversion / search checkpoint: the plain
#    keys fill every copy).
#      python tools/train.py configs/allinone_demo_recon.py
# 3. one plain single-task checkpoint per task:
#      python tools/recon_collapse.py configs/allinone_demo_recon.py work_dirs/allinone_demo_recon/iter_1000.pth \
#          --out work_dirs/allinone_demo_recon/collapsed [--format native]
_base_ = ['./allinone_demo.py']

model = dict(recon=dict(report='work_dirs/allinone_demo_recon_search/recon_search/recon_report.json',
                        param_budget=0.05, score='raw', threshold=0.0))
