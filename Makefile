# Everything runs from a project-local virtual environment that these targets create on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU torch is enough for tests and the demo; on a GPU machine set TORCH to the CUDA build you want.
TORCH  ?= torch==2.13.0
DEMO_DIR ?= out/demo

.PHONY: venv test demo bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test,demo]"
	touch $@

test: venv
	$(PY) -m pytest -q tests

demo: venv
	$(PY) -m data_prep.demo_corpus --out $(DEMO_DIR)
	$(PY) -m data_prep --config $(DEMO_DIR)/prep.yaml
	$(PY) -m weam_ds.demo --dataset $(DEMO_DIR)/dataset --out $(DEMO_DIR)/run.yaml
	$(PY) -m torch.distributed.run --standalone --nproc-per-node=2 -m weam_ds.train --config $(DEMO_DIR)/run.yaml
	$(PY) -m weam_ds.export $(DEMO_DIR)/run/checkpoints $(DEMO_DIR)/run/export
	$(PY) -m weam_ds.xtreme_r tatoeba --model $(DEMO_DIR)/run/export --dataset $(DEMO_DIR)/dataset --out $(DEMO_DIR)/eval
	@echo "TensorBoard logs: $(DEMO_DIR)/run/tensorboard  (tensorboard --logdir $(DEMO_DIR)/run/tensorboard)"

bench: venv
	$(PY) bench/bench_data_prep.py
	$(PY) bench/bench_train_step.py
	$(PY) bench/bench_zero.py
	$(PY) bench/bench_gpu.py

clean:
	rm -rf $(VENV) out
