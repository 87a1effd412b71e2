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
	$(PY) -m launcher.demo --dataset $(DEMO_DIR)/dataset --out $(DEMO_DIR)/study.yaml
	$(PY) -m launcher study run $(DEMO_DIR)/study.yaml
	$(PY) -m weam_ds.report --study $(DEMO_DIR)/study --out $(DEMO_DIR)/report --force

bench: venv
	$(PY) bench/bench_data_prep.py
	$(PY) bench/bench_stream.py
	$(PY) bench/bench_padding.py
	$(PY) bench/bench_train_step.py
	$(PY) bench/bench_zero.py
	$(PY) bench/bench_gpu.py

clean:
	rm -rf $(VENV) out
