# jobherald: `make demo` to see it work, `make test` to check it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint check-format format clean system-packages soak

# Installs print one line; pip's and the build's own chatter goes to $(LOG),
# shown in full only when an install fails.
LOG := $(VENV)/install.log
PIP = $(BIN)/python -m pip install --quiet
LOGGED = >> $(LOG) 2>&1 || { cat $(LOG); exit 1; }

$(BIN)/python:
	@echo "creating $(VENV) with $(PYTHON) (log: $(LOG))"
	@$(PYTHON) -m venv $(VENV)
	@$(PIP) --upgrade pip $(LOGGED)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@echo "installing jobherald into $(VENV)"
	@$(PIP) -e . $(LOGGED)
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	@echo "installing jobherald and its test tools into $(VENV)"
	@$(PIP) -e '.[test]' $(LOGGED)
	@touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	@$(BIN)/jobherald demo

lint: $(VENV)/.installed-test
	$(BIN)/ruff check daemon migrations tests bench
	$(BIN)/ruff format --check daemon migrations tests bench
	$(BIN)/mypy

format: $(VENV)/.installed-test
	$(BIN)/ruff format daemon migrations tests bench
	$(BIN)/ruff check --fix daemon migrations tests bench

# The Debian packages the tests use (systemd, PostgreSQL, Chromium, promtool...):
# installed when run as root, else named.
system-packages:
	@sh tests/system-packages.sh

# Two workers for the tests that wait more than they compute; then, alone, those that
# measure time (replicas' takeovers, kills, bursts, budgets, a booted systemd), which a
# busy machine would blur. Either phase failing fails the run; both always run.
test: system-packages lint
	@status=0; \
	$(BIN)/pytest -n 2 --dist loadgroup -m "not serial" || status=$$?; \
	$(BIN)/pytest -m serial || status=$$?; \
	exit $$status

# A quick loop (under a minute): no PostgreSQL, systemd, Chromium or Prometheus, no
# daemon started; `make test` runs everything.
.PHONY: test-quick
test-quick: $(VENV)/.installed-test
	$(BIN)/pytest -q -n 2 -m quick

# 100 kill -9 cycles while jobs finish: prints lost and repeated events (expected 0
# outside the in-flight window); `make test` runs 10 of them.
soak: $(VENV)/.installed-test
	$(BIN)/python -m tests.soak --cycles 100

clean:
	rm -rf $(VENV) bench/.venv-daemon build dist .mypy_cache .ruff_cache .pytest_cache daemon/*.egg-info

# Install as a system service (as root): a virtual environment of its own in /opt/jobherald
# on the system's Python, /usr/local/bin/jobherald, the unit, and an example config that
# never replaces one already there.
SYSTEM_PYTHON ?= /usr/bin/python3.11
PREFIX ?= /opt/jobherald
UNITDIR ?= /etc/systemd/system
CONFDIR ?= /etc/jobherald
# The local administrator's folder (systemd-sysusers reads it beside /usr/lib/sysusers.d).
SYSUSERSDIR ?= /etc/sysusers.d

.PHONY: install uninstall
install:
	@test "$$(id -u)" = 0 || { echo "make install: run it as root" >&2; exit 1; }
	@test -x $(SYSTEM_PYTHON) || { echo "make install: $(SYSTEM_PYTHON) is missing (apt-get install python3.11-venv)" >&2; exit 1; }
	$(SYSTEM_PYTHON) -m venv $(PREFIX)
	$(PREFIX)/bin/pip install --quiet --upgrade pip
	$(PREFIX)/bin/pip install --quiet --force-reinstall --no-cache-dir .
	install -d -m 0755 /usr/local/bin
	ln -sf $(PREFIX)/bin/jobherald /usr/local/bin/jobherald
	install -D -m 0644 systemd/jobherald.service $(UNITDIR)/jobherald.service
	install -D -m 0644 systemd/jobherald-prune.service $(UNITDIR)/jobherald-prune.service
	install -D -m 0644 systemd/jobherald-prune.timer $(UNITDIR)/jobherald-prune.timer
	install -D -m 0644 systemd/jobherald.sysusers $(SYSUSERSDIR)/jobherald.conf
	if command -v systemd-sysusers >/dev/null; then systemd-sysusers $(SYSUSERSDIR)/jobherald.conf; \
	elif ! getent passwd jobherald >/dev/null; then \
	  useradd --system --user-group --home-dir /var/lib/jobherald --no-create-home \
	    --shell /usr/sbin/nologin jobherald; fi
	install -d -m 0755 $(CONFDIR) $(CONFDIR)/jobs.d
	test -e $(CONFDIR)/config.toml || install -m 0640 config.example.toml $(CONFDIR)/config.toml
	chown root:jobherald $(CONFDIR)/config.toml
	chmod 0640 $(CONFDIR)/config.toml
	if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "installed; edit $(CONFDIR)/config.toml, then: systemctl enable --now jobherald"

uninstall:
	@test "$$(id -u)" = 0 || { echo "make uninstall: run it as root" >&2; exit 1; }
	if [ -d /run/systemd/system ]; then systemctl disable --now jobherald.service jobherald-prune.timer || true; fi
	rm -f $(UNITDIR)/jobherald.service $(UNITDIR)/jobherald-prune.service $(UNITDIR)/jobherald-prune.timer
	rm -f /usr/local/bin/jobherald $(SYSUSERSDIR)/jobherald.conf
	rm -rf $(PREFIX)
	if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "uninstalled; $(CONFDIR), /var/lib/private/jobherald, the jobherald user and any drop-ins in $(UNITDIR)/jobherald.service.d are kept (remove them by hand)"

# BEFORE=REF also measures the overhead of commit REF, side by side in the same run.
.PHONY: bench
bench: $(VENV)/.installed-bench
	$(BIN)/python bench/run.py all $(if $(BEFORE),--before $(BEFORE))

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	@echo "installing jobherald with its test and benchmark tools into $(VENV)"
	@$(PIP) -e '.[test,bench]' $(LOGGED)
	@touch $@ $(VENV)/.installed $(VENV)/.installed-test
