# The two commands of the README: `make demo` and `make test`. Both install what is missing first.
PY        ?= python3
VENV      ?= .venv
PYTHON    := $(VENV)/bin/python
DEMO_DATA ?= data/demo
DEMO_WORK ?= work_dirs/allinone_demo
PYTEST_ARGS ?=

.PHONY: install data demo finetune-demo compare-tbgc bench lint test test-fast clean

install:
	@PYTHON=$(PY) tools/install_env.sh $(VENV)

data: install
	$(PYTHON) tools/make_demo_data.py --out $(DEMO_DATA)

# train (validates at the end and writes $(DEMO_WORK)/leaderboard.json), test the final
# checkpoint and export the challenge submission file
demo: data
	$(PYTHON) tools/train.py configs/allinone_demo.py --work-dir $(DEMO_WORK)
	$(PYTHON) tools/test.py configs/allinone_demo.py "$$(cat $(DEMO_WORK)/last_checkpoint)" \
		--work-dir $(DEMO_WORK) --submit $(DEMO_WORK)/submission.json

# leaderboard B on the demo: finetune the demo checkpoint on a new detection data set (one task)
finetune-demo: data
	@test -f $(DEMO_WORK)/iter_1000.pth || $(MAKE) demo
	$(PYTHON) tools/make_demo_data.py --seed 1 --out data/demo_b
	$(PYTHON) tools/train.py configs/allinone_demo_finetune.py --work-dir work_dirs/demo_finetune \
		--cfg-options load_from=$(DEMO_WORK)/iter_1000.pth

# the same demo trained with the vanilla aggregator and with TBGC, then both leaderboards and the
# per-task backbone gradient norms side by side (work_dirs/compare/compare.md, grad_norms.png)
compare-tbgc: data
	$(PYTHON) tools/train.py configs/allinone_demo.py --work-dir work_dirs/demo_vanilla
	$(PYTHON) tools/train.py configs/allinone_demo_tbgc.py --work-dir work_dirs/demo_tbgc
	$(PYTHON) tools/compare_runs.py work_dirs/demo_vanilla work_dirs/demo_tbgc --names vanilla tbgc \
		--out work_dirs/compare

# TBGC vs vanilla step time and memory (benchmarks/README.md)
bench: data
	$(PYTHON) benchmarks/bench_tbgc.py

# ruff with pyproject.toml's settings (pyflakes + pycodestyle, 120 columns); part of `make test`
lint: install
	$(VENV)/bin/ruff check .

test: install lint
	$(PYTHON) -m pytest tests $(PYTEST_ARGS)

# the fast unit tests only (no end-to-end training runs)
test-fast: install
	$(PYTHON) -m pytest tests -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(DEMO_WORK) .pytest_cache
