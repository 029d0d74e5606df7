# Two commands for a fresh Debian machine with Python 3.11:
#   make run    Willi on willi.env.example, in front of a demo upstream
#   make test   the whole test suite; installs what its real servers need (Postfix,
#               MariaDB, openssl, Dovecot, HAProxy, nginx's mail module, podman)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
APT    := DEBIAN_FRONTEND=noninteractive apt-get -y -q
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test bench bench-instructions dist image fuzz clean system-venv system-test-deps

run: $(VENV)/.deps
	@echo "Willi on 127.0.0.1:2525, the demo upstream on 127.0.0.1:2526. Try:"
	@printf '%s\n' "  python3 -c \"import smtplib; smtplib.SMTP('127.0.0.1', 2525).sendmail('a@b.example', ['user@example.org'], 'Subject: hi\\r\\n\\r\\nhello\\r\\n')\""
	@$(PY) examples/demo_upstream.py 2526 & demo=$$!; \
	trap 'kill $$demo 2>/dev/null' EXIT INT TERM; \
	$(PY) willi.py --config willi.env.example

test: $(VENV)/.test-deps system-test-deps
	$(PY) -m pytest -q

# make fuzz: the long fuzz run against a live Willi (issue 9), bounded in count
# and time; FUZZ_SEED repeats a run, FUZZ_PARALLEL sets the connections.
FUZZ_INPUTS  ?= 50000
FUZZ_SECONDS ?= 3600
fuzz: $(VENV)/.test-deps
	FUZZ_INPUTS=$(FUZZ_INPUTS) FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_SEED=$(FUZZ_SEED) FUZZ_PARALLEL=$(FUZZ_PARALLEL) \
	  $(PY) tests/fuzz/run_fuzz.py

# make bench: Willi against nginx's mail proxy and HAProxy (bench/run.py, about
# 14 minutes; rewrites BENCHMARKS.md; W6 starts a private MariaDB). Quick: BENCH_SCALE=0.05 make bench.
# More options: BENCH_ARGS='--only willi --workload W1 --runs 1' (see --help).
# It runs the revision the old BENCHMARKS.md measured beside this tree (willi-base);
# BENCH_BASELINE=REV picks another, BENCH_BASELINE=none none.
bench: $(VENV)/.deps
	@missing=""; \
	command -v smtp-source >/dev/null || [ -x /usr/sbin/smtp-source ] || missing="$$missing postfix"; \
	command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing="$$missing haproxy"; \
	command -v valgrind >/dev/null || missing="$$missing valgrind"; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	[ -e /usr/lib/nginx/modules/ngx_mail_module.so ] || missing="$$missing libnginx-mod-mail"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || missing="$$missing mariadb-server"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  echo "postfix postfix/main_mailer_type select No configuration" | $(SUDO) debconf-set-selections; \
	  $(SUDO) $(APT) install $$missing || { $(SUDO) apt-get update -q && $(SUDO) $(APT) install $$missing; }; \
	fi
	$(PY) bench/run.py $(BENCH_ARGS)

# make bench-instructions: Willi's user-space instructions per message under
# valgrind (bench/instructions.py): a count, not a timing, so it shows a 2%
# change that the timed runs' spread hides. BENCH_AGAINST=REV counts a git
# revision beside this tree.
bench-instructions: $(VENV)/.deps
	@command -v smtp-source >/dev/null || [ -x /usr/sbin/smtp-source ] || { \
	  echo "postfix postfix/main_mailer_type select No configuration" | $(SUDO) debconf-set-selections; \
	  $(SUDO) $(APT) install postfix || { $(SUDO) apt-get update -q && $(SUDO) $(APT) install postfix; }; }
	@command -v valgrind >/dev/null || $(SUDO) $(APT) install valgrind || { \
	  $(SUDO) apt-get update -q && $(SUDO) $(APT) install valgrind; }
	$(PY) bench/instructions.py $(if $(BENCH_AGAINST),--against $(BENCH_AGAINST))

# make dist: dist/willi.pyz, one file with PyMySQL and python-dotenv inside
# (stdlib zipapp; both are pure Python). Runs with `python3 willi.pyz` on any
# Python >= 3.11 with nothing installed. DIST/BUILD move the output (tests).
DIST  ?= dist
BUILD ?= build
dist: $(DIST)/willi.pyz

$(DIST)/willi.pyz: willi.py requirements.txt $(shell find willi -name '*.py')
	@$(PYTHON) -m pip --version >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -q && $(SUDO) $(APT) install python3-pip; }
	rm -rf $(BUILD)/pyz && mkdir -p $(BUILD)/pyz $(DIST)
	$(PYTHON) -m pip install -q --disable-pip-version-check --no-compile --only-binary :all: \
	  --target $(BUILD)/pyz -r requirements.txt
	rm -rf $(BUILD)/pyz/bin
	cp -R willi $(BUILD)/pyz/willi
	cp willi.py $(BUILD)/pyz/__main__.py
	find $(BUILD)/pyz -name __pycache__ -prune -exec rm -rf {} +
	$(PYTHON) -m zipapp $(BUILD)/pyz -o $@.tmp -p '/usr/bin/env python3' -c
	mv $@.tmp $@
	@echo "built $@"

# make image: the container image (Dockerfile) around dist/willi.pyz.
CONTAINER ?= docker
image: dist
	$(CONTAINER) build -t willi:latest .

# --- installing what the two commands need ------------------------------------
system-venv:
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { \
	  $(SUDO) apt-get update -q && $(SUDO) $(APT) install python3-venv python3-pip; }

# exim4-daemon-light conflicts with postfix, so it is never installed:
# tests/support/exim.py fetches it (apt-get download) and unpacks it (dpkg -x).
system-test-deps:
	@missing=""; \
	command -v smtp-sink >/dev/null || [ -x /usr/sbin/smtp-sink ] || missing="$$missing postfix"; \
	command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || missing="$$missing mariadb-server"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	[ -x /usr/sbin/dovecot ] || missing="$$missing dovecot-core"; \
	[ -x /usr/lib/dovecot/lmtp ] || missing="$$missing dovecot-lmtpd"; \
	command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing="$$missing haproxy"; \
	command -v valgrind >/dev/null || missing="$$missing valgrind"; \
	command -v podman >/dev/null || missing="$$missing podman"; \
	command -v runc >/dev/null || missing="$$missing runc"; \
	command -v mmdebstrap >/dev/null || missing="$$missing mmdebstrap"; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	[ -e /usr/lib/nginx/modules/ngx_mail_module.so ] || missing="$$missing libnginx-mod-mail"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  echo "postfix postfix/main_mailer_type select No configuration" | $(SUDO) debconf-set-selections; \
	  $(SUDO) $(APT) install $$missing || { $(SUDO) apt-get update -q && $(SUDO) $(APT) install $$missing; }; \
	fi

$(VENV)/.deps: requirements.txt | system-venv
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.test-deps: requirements.txt requirements-test.txt | system-venv
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-test.txt
	touch $(VENV)/.deps $@

clean:
	rm -rf $(VENV) dist build .pytest_cache .hypothesis
