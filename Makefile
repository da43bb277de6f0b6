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

.PHONY: setup host-packages venv libvirt test-sshd demo test unit e2e lint coverage bench clean

setup: venv host-packages $(if $(filter 1,$(LIBVIRT)),libvirt)

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# The libvirt driver: its host packages, then the `libvirt` extra (libvirt-python, built
# against the host's libvirt; the venv's Python is not Debian's, so python3-libvirt would
# not do). `ccloudvm setup` says whether the driver is usable. The remote libvirt tests
# also need `make test-sshd` (below; `make test` runs it).
libvirt: venv
	$(MAKE) --no-print-directory host-packages HOST_PACKAGES="$(LIBVIRT_PACKAGES)" \
		APT_OPTIONS=--no-install-recommends
	$(PY) -m pip install -q -e '.[test,libvirt]'

# The remote libvirt tests' "remote host" is a libvirtd and an sshd in a private mount
# namespace on this machine. That sshd is Debian's, unpacked into build/test-sshd/ and run
# from there: installing openssh-server would start (and leave) the host's sshd service.
# `apt-get download` needs no root; the package lists are refreshed only if it fails.
TEST_SSHD := build/test-sshd
test-sshd: $(TEST_SSHD)/usr/sbin/sshd

$(TEST_SSHD)/usr/sbin/sshd:
	rm -rf $(TEST_SSHD).tmp && mkdir -p $(TEST_SSHD).tmp/debs
	cd $(TEST_SSHD).tmp/debs && { apt-get download -q openssh-server libwrap0 || { \
		sudo=; [ "$$(id -u)" = 0 ] || sudo="sudo -n"; \
		$$sudo apt-get update -q && apt-get download -q openssh-server libwrap0; }; }
	for deb in $(TEST_SSHD).tmp/debs/*.deb; do dpkg-deb -x "$$deb" $(TEST_SSHD).tmp/root; done
	LD_LIBRARY_PATH=$(TEST_SSHD).tmp/root/usr/lib/x86_64-linux-gnu \
		$(TEST_SSHD).tmp/root/usr/sbin/sshd -V 2>&1 | grep OpenSSH
	rm -rf $(TEST_SSHD) && mv $(TEST_SSHD).tmp/root $(TEST_SSHD) && rm -rf $(TEST_SSHD).tmp

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
# libvirt driver and the remote libvirt tests' sshd are set up too, so that none of their
# tests is skipped.
test: setup libvirt test-sshd
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
bench: setup libvirt test-sshd
	$(PY) bench/startup.py
	$(PY) bench/user_path.py
	$(PY) bench/snapshots.py
	$(PY) bench/boot.py
	$(PY) bench/libvirt.py

clean:
	rm -rf $(VENV) build *.egg-info
