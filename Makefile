# Set-up, test and demo for segloc. Every target creates or reuses .venv and rebuilds only what
# changed (stamps in .venv/.stamps), so a second `make test` does no rebuild.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := $(VENV)/.stamps
COLCON_BUILD := build/colcon

# DDS stays on loopback; the Fast DDS profile gives camera frames a big enough SHM segment.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export FASTDDS_DEFAULT_PROFILES_FILE := $(CURDIR)/config/fastdds.xml
export SEGLOC_HOME := $(CURDIR)/.segloc

MSG_FILES := $(wildcard msg/*.msg srv/*.srv) $(wildcard interfaces/*/CMakeLists.txt interfaces/*/package.xml interfaces/*/msg/*.msg)

.PHONY: setup test demo clean distclean
setup: $(STAMPS)/package

$(STAMPS)/venv:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@mkdir -p $(STAMPS) && touch $@

# ROS 2 wheels first, then the rest; the msgs wheels' CMake exports carry a build-machine
# path to the Python and numpy headers, which is pointed at this interpreter.
$(STAMPS)/deps: requirements-ros.txt requirements.txt $(STAMPS)/venv
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-ros.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@PYINC=$$($(PY) -c "import sysconfig; print(sysconfig.get_paths()['include'])"); \
	NPINC=$$($(PY) -c "import numpy; print(numpy.get_include())"); \
	grep -rl "/opt/python/cp311-cp311" $(VENV)/share --include='*.cmake' | xargs -r sed -i \
	  -e "s#/opt/python/cp311-cp311/include/python3.11#$$PYINC#g" \
	  -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$$NPINC#g"
	@touch $@

# Interface packages, built straight into the venv prefix (nothing to source afterwards).
# tf2_msgs only when the environment has none (a real ROS 2 install brings its own).
# Always a clean build: rosidl's generators append to their argument files on a re-configure.
$(STAMPS)/interfaces: $(STAMPS)/deps $(MSG_FILES)
	@rm -rf $(COLCON_BUILD)/build
	@pkgs="segloc_msgs"; \
	if [ -f $(STAMPS)/own_tf2_msgs ] || ! $(PY) -c "import tf2_msgs.msg" 2>/dev/null; then \
	  pkgs="tf2_msgs $$pkgs"; touch $(STAMPS)/own_tf2_msgs; fi; \
	echo "building interface packages: $$pkgs"; \
	source $(VENV)/bin/activate && \
	AMENT_PREFIX_PATH=$(CURDIR)/$(VENV) CMAKE_PREFIX_PATH=$(CURDIR)/$(VENV) \
	  colcon --log-base $(COLCON_BUILD)/log build --merge-install --install-base $(CURDIR)/$(VENV) \
	  --build-base $(COLCON_BUILD)/build --base-paths interfaces --packages-select $$pkgs \
	  --event-handlers console_cohesion- summary+ desktop_notification- status-
	@$(PY) -c "import tf2_msgs.msg, segloc_msgs.msg" && touch $@

$(STAMPS)/package: $(STAMPS)/interfaces setup.py setup.cfg package.xml
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

test: setup
	$(VENV)/bin/ruff check .
	cd $(CURDIR) && $(VENV)/bin/lint-imports
	$(PY) -m pytest -q test

demo: setup
	$(VENV)/bin/segloc demo

clean:
	rm -rf build log install .pytest_cache

distclean: clean
	rm -rf $(VENV) .segloc
