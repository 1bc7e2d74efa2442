# The two entry points of the README. Each installs what it needs first.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install lint db-start db-stop airflow-stop

# `cbm kernels warm` (also run at install) recompiles, once, a Numba kernel edited since: no run compiles
demo: install
	$(BIN)/cbm kernels warm
	$(BIN)/cbm demo run

test: install
	$(BIN)/cbm db start
	$(BIN)/cbm kernels warm
	$(BIN)/ruff check cbm_tasks dags plugins tests benchmarks
	$(BIN)/mypy cbm_tasks
	$(BIN)/pytest -q

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml scripts/install.sh tests/jrc_client/requirements.txt
	bash scripts/install.sh
	touch $@

lint: install
	$(BIN)/ruff check cbm_tasks dags plugins tests benchmarks
	$(BIN)/mypy cbm_tasks

db-start: install
	$(BIN)/cbm db start

db-stop:
	$(BIN)/cbm db stop

# the Airflow components `make demo` leaves running, with everything they started
airflow-stop:
	$(BIN)/cbm airflow stop
