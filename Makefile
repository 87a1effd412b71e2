# Everything runs from a project-local virtual environment that these targets create on first use.
# The interpreter the venv is built on: the distribution's /usr/bin/python3 where it is 3.10 or newer and can make a
# venv with pip (Debian's and Ubuntu's are built with profile-guided and link-time optimisation: here a tiny training
# rank took 6% less CPU and the import of torch and transformers 14% less than on a pyenv build, which has neither
# unless asked for), else python3 from PATH. `make PYTHON=python3.12 ...` picks another.
PYTHON ?= $(shell /usr/bin/python3 -c 'import sys, ensurepip, venv; ensurepip.version(); \
	sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1 && echo /usr/bin/python3 || echo python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU torch is enough for tests and the demo; on a GPU machine set TORCH to the CUDA build you want.
TORCH  ?= torch==2.13.0
DEMO_DIR ?= out/demo
# pytest-xdist workers for `make test`: one more than the CPU cores, as many tests wait on what they started (a hung
# rank's 30 s grace, SLURM's scheduling, sshd) and a third worker keeps 2 cores busy meanwhile; 0 runs the tests in
# one process.
TEST_WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))

# The real services the launcher's tests start: a two-node SLURM cluster (tests/slurm_cluster.py) and sshd with pdsh
# for the DeepSpeed runner (tests/sshd_hosts.py). Installed where this runs as root with apt (as CI does); elsewhere
# their tests skip and say why.
TEST_PACKAGES := slurm-wlm munge openssh-server openssh-client pdsh
TEST_PROGRAMS := slurmctld slurmd munged sshd ssh pdsh

.PHONY: venv test test-services demo bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test,demo]"
	touch $@

test: venv test-services
	$(PY) -m pytest -q -n $(TEST_WORKERS) tests

test-services:
	@missing=""; for p in $(TEST_PROGRAMS); do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing $(TEST_PACKAGES) (missing:$$missing)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    $(TEST_PACKAGES) >/dev/null; \
	else echo "not installed:$$missing; the SLURM and DeepSpeed-runner tests will skip (apt-get install $(TEST_PACKAGES))"; fi

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
