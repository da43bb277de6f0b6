# The commands the README names. Each works on a fresh Debian/Ubuntu machine:
# `make setup` creates the Python environment and installs the host packages.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CCLOUDVM := $(VENV)/bin/ccloudvm
# Host programs the tool and its tests use (Debian package names).
HOST_PACKAGES := qemu-system-x86 qemu-utils openssh-client mmdebstrap e2fsprogs \
	dnsmasq-base iproute2 iptables nftables shellcheck busybox-static uidmap
# The libvirt driver's (optional: `make setup LIBVIRT=1`, or `make libvirt`): the daemon
# with only its QEMU driver (no libvirt-daemon-system: no systemd units, no default
# network, so no virbr0), virsh and virt-xml-validate (+ xmllint), and what building
# libvirt-python from PyPI needs. Installed without recommends, which would pull in the
# LXC, Xen and VirtualBox drivers and lvm2.
LIBVIRT_PACKAGES := libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libxml2-utils \
	libvirt-dev pkg-config gcc
LIBVIRT ?=
DEMO ?= demo

.PHONY: setup host-packages venv libvirt demo test unit e2e lint coverage bench clean

setup: venv host-packages $(if $(filter 1,$(LIBVIRT)),libvirt)

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# The libvirt driver: its host packages, then the `libvirt` extra (libvirt-python, built
# against the host's libvirt; the venv's Python is not Debian's, so python3-libvirt would
# not do). `ccloudvm setup` says whether the driver is usable.
libvirt: venv
	$(MAKE) --no-print-directory host-packages HOST_PACKAGES="$(LIBVIRT_PACKAGES)" \
		APT_OPTIONS=--no-install-recommends
	$(PY) -m pip install -q -e '.[test,libvirt]'

# Installs only what is missing; needs root (or passwordless sudo) when something is.
APT_OPTIONS ?=
host-packages:
	@missing=$$(for p in $(HOST_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing host packages:" $$missing; \
		sudo=; [ "$$(id -u)" = 0 ] || sudo="sudo -n"; \
		$$sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q $(APT_OPTIONS) $$missing; \
	fi

# Set up, get an image, create a VM, run a command in it, list instances.
demo: setup
	$(CCLOUDVM) setup --check
	$(CCLOUDVM) image build debian-12
	@if $(CCLOUDVM) status $(DEMO) >/dev/null 2>&1; then \
		$(CCLOUDVM) start $(DEMO); \
	else \
		$(CCLOUDVM) create debian --name $(DEMO); \
	fi
	$(CCLOUDVM) run $(DEMO) -- uname -a
	$(CCLOUDVM) run $(DEMO) -- cat /etc/os-release
	$(CCLOUDVM) instances
	@echo "The demo instance keeps running: '$(CCLOUDVM) connect $(DEMO)' opens a shell, '$(CCLOUDVM) delete $(DEMO)' removes it (or put $(CURDIR)/$(VENV)/bin on PATH)."

# Unit tests, lint, then end-to-end tests on real VMs (TCG where KVM does not work). The
# libvirt driver is set up too, so that none of its tests is skipped.
test: setup libvirt
	$(PY) -m pytest -q tests/unit tests/e2e

unit: venv
	$(PY) -m pytest -q tests/unit

e2e: setup
	$(PY) -m pytest -q -m e2e tests

# The unit tests' coverage, one line a module (issue 9: each >= 80 %).
coverage: venv
	$(PY) -m pytest -q --cov --cov-report=term tests/unit

lint: venv
	$(VENV)/bin/ruff check ccloudvm tests bench
	$(VENV)/bin/ruff format --check ccloudvm tests bench
	$(VENV)/bin/mypy

# Figures, never assertions: start-up (issue 9), the new user's path (issue 10), then the
# boot benchmark.
bench: setup
	$(PY) bench/startup.py
	$(PY) bench/user_path.py
	$(PY) bench/snapshots.py
	$(PY) bench/boot.py

clean:
	rm -rf $(VENV) build *.egg-info
