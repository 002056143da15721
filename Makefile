# Two commands for a newcomer: `make run` (the main job, embedded defaults, no services) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The public editing benchmarks live beside the project (../shared/data); MEND_DATA_DIR moves them.
# Simply expanded (:=) so that the environment's MEND_DATA_DIR is read once, before it is exported back.
DATA_DIR := $(abspath $(or $(MEND_DATA_DIR),../shared/data))
export MEND_DATA_DIR := $(DATA_DIR)
export HF_HUB_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export GX_ANALYTICS_ENABLED := false

.PHONY: setup model browser lint test test-fast run run-night2 eval-baseline benchmark bench-scale bench-solver \
	bench-disturbance bench-neighbours bench-gate-noise bench-transfer bench-generator bench-train-speed clean services-up services-down run-services

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

model: setup
	$(BIN)/mend model pull

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# Debian's chromium for the browser test (driven by Playwright, which downloads no browser). Skipped when
# it is installed; sudo only when not root.
browser:
	test -x /usr/bin/chromium || { $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
		$(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq chromium; }

test: model lint browser
	$(BIN)/pytest

test-fast: setup
	$(BIN)/pytest -m "not integration and not real_model"

# Exit status 3 is a failed gate: an outcome the demo explains (verdict and next steps), not a crash.
run: model
	$(BIN)/mend demo || [ $$? -eq 3 ]

# The foundation's baseline check: single FT+KL edits on 20 zsRE records with the default model.
eval-baseline: model
	$(BIN)/mend eval --editor ft-kl --data $(DATA_DIR)/zsre_mend_portability/zsre_mend_eval_portability_gpt4.json --limit 20

benchmark: model
	$(BIN)/python -m benchmarks.run

# Many edits at once and night after night (trains the benchmark editors first, 10 CPU minutes each).
# About half an hour on 2 CPU cores once the editors exist: CounterFact only, every cell scored on an even
# sample of 32 of its edits (the JSON says so per row), FT+KL cut to batches of 16 and 100 stacked edits.
# With a GPU, run the full size: make bench-scale TAG=gpu SCALE_ARGS=
SCALE_ARGS ?= --data-sets counterfact --single-records 32 --coverage 32 --score-limit 32 --ft-max-batch 16 \
	--ft-coverage 32 --ft-max-accumulated 100 --ppl-batches 1 --ppl-texts 50
bench-scale: model
	$(BIN)/python -m benchmarks.scale --tag $(or $(TAG),cpu) $(SCALE_ARGS)
# Edit-time ridge x protection multipliers on CounterFact train edits that nothing else scores.
SOLVER_GRID ?= 0.03x1,0.125x1,0.25x1,1x1,8x1,1x16,0.125x16
bench-solver: model
	$(BIN)/python -m benchmarks.solver_sweep --tag $(or $(TAG),cpu) --batch-sizes 16 --grid $(SOLVER_GRID)
# The disturbance cap's calibration (benchmarks/disturbance.py): how far the fix run's recipe moves the
# protected keys' outputs by batch size, on CounterFact train edits nothing else scores.
bench-disturbance: model
	$(BIN)/python -m benchmarks.disturbance --tag fixrun-$(or $(TAG),cpu)
# Neighbour protection on nights of one relation (batches of 16 same-relation CounterFact train edits):
# cells RIDGExPROTECTxBANKxWEIGHTxSAME-WORDING[xSUBJECT-FREE] (editing/mend/substitutes.py); NEIGHBOUR_ARGS
# passes more (--recipe mend-ls-fix-run, --records N).
NEIGHBOUR_GRID ?= 1x1,1x1x0x1x8,1x1x0x4x8,1x1x0x1x16,1x1x0x16x16
bench-neighbours: model
	$(BIN)/python -m benchmarks.solver_sweep --tag neighbours-$(or $(TAG),cpu) --same-relation --batch-sizes 16 \
		--grid $(NEIGHBOUR_GRID) $(NEIGHBOUR_ARGS)
# What an unrelated night costs the last fix run's locality probes (benchmarks/gate_noise.py): after
# `make run`, placebo nights of 20 CounterFact train edits by the same editor, scored as the gate scores.
bench-gate-noise: model
	$(BIN)/python -m benchmarks.gate_noise --tag $(or $(TAG),demo)

# The editor recipe's training throughput (benchmarks/train_speed.py): its first 100 steps from a cold
# prefix cache, and the post-edit pass by length against one padded batch on 32 steps, alternated.
# A before/after pair: run it on both checkouts with their own TAG, then BASELINE=<older tag>.
bench-train-speed: model
	$(BIN)/python -m benchmarks.train_speed --tag $(or $(TAG),cpu) --steps 100 --compare-chunking 32 \
		$(if $(BASELINE),--baseline $(BASELINE))

# Does the editor transfer to other data sets and to relations it never saw (benchmarks/transfer.py)?
# A CPU configuration: three editors of 10 minutes (CounterFact, CounterFact + 2,000 generated records,
# CounterFact without a fifth of its relations), 32 records per evaluation set, two batches of 16.
# The full size (60-minute editors, 500 records, 10,000 generated): make bench-transfer TRANSFER_ARGS=
TRANSFER_ARGS ?= --mixes counterfact,counterfact+generated --train-minutes 10 --generated-examples 2000 \
	--eval-records 32 --batches 2
bench-transfer: model
	$(BIN)/python -m benchmarks.transfer --tag $(or $(TAG),cpu) $(TRANSFER_ARGS)
# The generator's time for 10,000 training records on the default model (then cached).
bench-generator: model
	$(BIN)/python -m benchmarks.generator_speed --tag $(or $(TAG),cpu)

# The demo's second night: other questions, on top of night one's promoted candidate (exit 3, a failed
# gate, is a finished demo here too).
run-night2: model
	$(BIN)/mend demo --night 2 || [ $$? -eq 3 ]

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# The team's stack on this machine, no containers: SeaweedFS (S3), MLflow (PostgreSQL, basic auth),
# a Prefect server (PostgreSQL) and a process worker on mend-cpu, deployments applied. Ports and
# credentials: .mend/stack/stack.env (generated on first start; MEND_STACK_DIR moves the state).
services-up: setup
	$(BIN)/python -m infra.local.stack up

services-down: setup
	$(BIN)/python -m infra.local.stack down

# The demo against the stack: flags by `mend flag`, the on-flags trigger, the worker runs the fix.
# Exit status 3 is a failed gate, as for `make run`: its verdict was printed.
run-services: model services-up
	$(BIN)/python -m infra.local.run_demo || [ $$? -eq 3 ]
