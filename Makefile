# sophon-sd-kit: control-node entry points. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
ML_VENV := .venv-ml
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
# Podman settings that work without CAP_SYS_RESOURCE (see tests/hosts/containers.conf).
export CONTAINERS_CONF ?= $(CURDIR)/tests/hosts/containers.conf

INVENTORY ?= inventory/example/hosts.yml
LIMIT ?= all
# The fleet's stack: a folder of profiles/ (profile.yml, constraints.txt). PROFILES lists every profile the
# inventory's host groups use (sophon_sd_profile); the bundle holds a wheelhouse for each.
PROFILE ?= tutorial-2023
PROFILES ?= $(PROFILE)
BUNDLE := bundle
# The CPU twin the test hosts and the ML venv run (the tutorial's libraries on Debian 12's Python).
TEST_PROFILE := tutorial-2023-cpu
TEST_IMAGE := localhost/sophon-sd-test-debian12:latest
# The peft flow's CPU twin: the fleet scenario's offline host runs it, and make unit runs the flow's tests in it.
PEFT_PROFILE := sophgo-peft-cpu
TEST_PROFILES := $(TEST_PROFILE) $(PEFT_PROFILE)
PEFT_VENV := .venv-ml-peft

.PHONY: help patches-upstream setup known-hosts demo demo-clean wheelhouse bundle bundle-key bundle-verify slurm-key test-bundle assets-sums provision verify train train-status train-cancel doctor lint docs measured test unit bench bench-data-scale bench-threads bench-fleet bench-report molecule host-tests role-known test-long test-profile roles test-image clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# Each venv's bytecode is compiled once, in parallel, when it is built. Where PYTHONDONTWRITEBYTECODE is set
# (our build machine sets it) or a venv is read-only (the test hosts mount the ML venv so), Python would
# otherwise compile every module it imports, in every process: 9 s of CPU for torch and diffusers each
# time a trainer starts, 3 s with the bytecode there; ansible-playbook starts in half the time. torch's
# test helper written for Python 3.12 is left out, as pip's own compile step skips it.
COMPILE = python3 -m compileall -q -j 0 -x 'torch/testing/_internal/py312_intrinsics\.py$$'
setup: $(VENV)/.installed ## Build the control node's .venv (ansible, molecule, testinfra, linters)
$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --no-compile -r requirements.txt
	$(COMPILE) $(VENV)/lib >/dev/null
	touch $@

wheelhouse: $(addprefix $(BUNDLE)/.wheelhouse-,$(PROFILES)) ## Download each profile's wheels and its libraries' source archives into bundle/ (PROFILES="a b", default PROFILE=tutorial-2023)
profiles/%/profile.yml:
	@echo "no profile $*: no $@; the profiles are: $(notdir $(wildcard profiles/*))"; exit 2
# The profile's constraints.txt is the whole, closed dependency set: tools/sdkit_bundle.py wheelhouse
# downloads each entry with --no-deps, for the Python of its profile.yml rather than this machine's, into
# bundle/wheelhouse/<profile>/ and bundle/wheelhouse-<profile>.tar (what that profile's hosts get). It
# refuses a profile without a resolved set (profile.yml's wheelhouse_blocked, or no constraints.txt). A profile's
# torch_index (a name in profiles/torch-indexes.yml) is where its torch and torchvision come from.
.SECONDEXPANSION:
$(BUNDLE)/.wheelhouse-%: profiles/%/profile.yml $$(wildcard profiles/$$*/constraints.txt) profiles/torch-indexes.yml | $(VENV)/.installed
	$(BIN)/python tools/sdkit_bundle.py wheelhouse --bundle-dir $(BUNDLE) --profile $*
	touch $@

# The whole bundle for an air-gapped fleet, listed with sha256 in bundle/manifest.yml (tools/sdkit_bundle.py --help).
ASSETS_FROM ?=
BUNDLE_ARGS ?=
# The GnuPG home holding the key that signs the bundle: outside the repository and the bundle, so that
# the private key is never committed or carried; keep it on this control node (and a copy offline).
BUNDLE_GNUPGHOME ?= $(HOME)/.sophon-sd-bundle-gnupg
bundle-key: setup ## Create the bundle's signing key in BUNDLE_GNUPGHOME (once) and print the fingerprint for group_vars
	$(BIN)/python tools/sdkit_bundle.py key --gnupghome $(BUNDLE_GNUPGHOME)

bundle: setup $(addprefix $(BUNDLE)/.wheelhouse-,$(PROFILES)) ## Everything an air-gapped fleet needs in bundle/, listed in manifest.yml and signed (PROFILES="a b" ASSETS_FROM= BUNDLE_ARGS= BUNDLE_GNUPGHOME=)
	$(BIN)/python tools/sdkit_bundle.py build --bundle-dir $(BUNDLE) --profile $(PROFILES) --gnupghome $(BUNDLE_GNUPGHOME) \
	  $(if $(ASSETS_FROM),--assets-from $(ASSETS_FROM)) $(BUNDLE_ARGS)

# The Slurm cluster's munge key (role sophon_slurm): like the signing key, outside the repository and
# the bundle, made once and never replaced (every host of the cluster must hold the same key).
SLURM_KEY ?= $(HOME)/.sophon-sd-munge.key
slurm-key: ## Create the Slurm cluster's munge key at SLURM_KEY (once; default ~/.sophon-sd-munge.key, mode 0600)
	@if [ -e '$(SLURM_KEY)' ]; then echo "$(SLURM_KEY) exists: kept"; else \
	  (umask 077 && head -c 1024 /dev/urandom > '$(SLURM_KEY).new' && mv '$(SLURM_KEY).new' '$(SLURM_KEY)') && \
	  echo "wrote $(SLURM_KEY) (1024 random bytes, mode 0600): sophon_slurm_munge_key_file's default; keep a copy offline"; fi

# The same check as site.yml's first play, with the signing key's fingerprint from INVENTORY's group_vars.
bundle-verify: setup ## Check bundle/'s signature (the key INVENTORY names) and every file against its manifest
	ansible-playbook -i $(INVENTORY) playbooks/preflight.yml

DEMO_HOST := sophon-sd-demo
DEMO_HOSTS := build/testhosts/demo
# The port inventory/demo/hosts.yml names; the host's key and the client key are in $(DEMO_HOSTS).
DEMO_PORT := 42222
demo: setup test-image test-bundle ## No hardware needed: provision a local container host, run make smoke there, collect results in demo-out/
	@echo "== 1/4 local container host $(DEMO_HOST): systemd and sshd, reached on 127.0.0.1:$(DEMO_PORT) with its key checked"
	python3 tests/hosts/testhosts.py up --keep --run-dir $(DEMO_HOSTS) --platforms '[{"name": "$(DEMO_HOST)", "port": $(DEMO_PORT)}]' >/dev/null
	@echo "== 2/4 provision it with the kit (playbooks/site.yml, CPU profile)"
	ansible-playbook -i inventory/demo/hosts.yml playbooks/site.yml
	@echo "== 3/4 make smoke on the host (tiny random model, CPU) and 4/4 collect the outputs"
	ansible-playbook -i inventory/demo/hosts.yml playbooks/smoke.yml -e sophon_sd_smoke_fetch_dir=$(CURDIR)/demo-out
	@echo "Demo results (LoRA weights, validation and generated images, metrics):"
	@find $(CURDIR)/demo-out -type f | sort | sed 's/^/  /'
	@echo "The host stays up: ssh -F $(DEMO_HOSTS)/ssh_config $(DEMO_HOST) make -C /opt/sophon-sd help; remove it with make demo-clean"

demo-clean: ## Remove the demo container and demo-out/
	python3 tests/hosts/testhosts.py down --run-dir $(DEMO_HOSTS)
	podman rm -f -t 0 $(DEMO_HOST) >/dev/null 2>&1 || true
	rm -rf demo-out

assets-sums: ## List the checksums of bundle/assets/ (the download share's folders) in bundle/assets/SHA256SUMS
	cd $(BUNDLE)/assets && find . -type f ! -name SHA256SUMS -printf '%P\n' | sort | xargs -d '\n' sha256sum > SHA256SUMS
	@echo "$$(wc -l < $(BUNDLE)/assets/SHA256SUMS) files listed in $(BUNDLE)/assets/SHA256SUMS"

# Rolling runs: SERIAL hosts at a time (a number or a percentage); a batch with more than MAX_FAIL
# percent of failed hosts stops the run. TAGS runs only some roles (apt, libsophon, venv, torch_tpu,
# host_env, upstream, assets, runners, preflight: the profile checks, sophgo_vendor: Sophgo's files checked on
# the control node). The bundle check runs under every tag. ANSIBLE_ARGS passes anything else, e.g. --check --diff.
SERIAL ?= 100%
MAX_FAIL ?= 100
TAGS ?= all
provision: setup ## Provision INVENTORY (default: the example fleet); LIMIT=host1,host2 SERIAL= MAX_FAIL= TAGS= ANSIBLE_ARGS=
	ansible-playbook -i $(INVENTORY) --limit '$(LIMIT)' --tags '$(TAGS)' \
	  -e sophon_sd_serial='$(SERIAL)' -e sophon_sd_max_fail_percentage=$(MAX_FAIL) $(ANSIBLE_ARGS) playbooks/site.yml

verify: setup ## Run the testinfra checks of the installed state against INVENTORY
	pytest -p no:cacheprovider tests/testinfra --ansible-inventory=$(INVENTORY) --hosts='$(LIMIT)' --connection=ansible $(PYTEST_ARGS)

known-hosts: setup ## Record INVENTORY's host keys in its folder's known_hosts (ssh-keyscan; prints fingerprints to compare, never replaces a changed key)
	python tools/sdkit_known_hosts.py -i $(INVENTORY) --limit '$(LIMIT)'

doctor: setup ## Run the doctor on every host of INVENTORY: one table of checks, problems with fixes, report in runs/doctor/
	ansible-playbook -i $(INVENTORY) --limit '$(LIMIT)' playbooks/doctor.yml

# RUN_ID, PRECISION, MODE, MODEL, DATASET, TINY, THREADS, TRAIN_ARGS and SLURM_ARGS reach the playbook through the environment
# (make exports command-line variables): never spliced into this command line, where a quote could add
# a variable. On the hosts they reach the trainer as argv (playbooks/train.yml).
# SCHEDULER=slurm queues the jobs in the Slurm cluster of role sophon_slurm instead of running them
# as systemd services on each host.
train: setup ## LoRA training on INVENTORY's hosts, results and report in runs/RUN_ID/: RUN_ID=name [PRECISION=fp16|fp32] [MODE=per_chip|data_parallel] [SCHEDULER=systemd|slurm] [SLURM_ARGS='--partition=... --time=...'] [MODEL=...] [DATASET=...] [TRAIN_ARGS='...'] [THREADS=n] [TINY=1]; the same RUN_ID resumes
	ansible-playbook -i $(INVENTORY) --limit '$(LIMIT)' playbooks/train.yml $(ANSIBLE_ARGS)

train-status: setup ## Each host's jobs of RUN_ID: queued (Slurm's reason), running, finished, stopped or failed, with step and loss
	ansible-playbook -i $(INVENTORY) --limit '$(LIMIT)' playbooks/train_status.yml $(ANSIBLE_ARGS)

train-cancel: setup ## Stop RUN_ID's jobs (systemctl stop or scancel): each saves a checkpoint; make train resumes them
	ansible-playbook -i $(INVENTORY) --limit '$(LIMIT)' playbooks/train_cancel.yml $(ANSIBLE_ARGS)

lint: setup ## ansible-lint (production profile) and yamllint
	ansible-lint --profile production
	yamllint --strict .

docs: setup ## Regenerate each role README's variable table (meta/argument_specs.yml, defaults/main.yml) and its tests list (tests/roles.yml)
	$(BIN)/python tools/sdkit_role_docs.py

measured: ## Regenerate docs/measured.md from the records in docs/measured/*.json (make record-<bench> adds one)
	python3 tools/sdkit_measured.py render

# After a benchmark: copy build/<bench>.json into docs/measured/<bench>.json with the date, this machine and
# the command, then re-render, e.g. make bench-threads record-bench-threads. COMMAND= names another
# command (make bench SIZE=sd14 writes build/bench-sd14.json: make record-bench-sd14 COMMAND='make bench SIZE=sd14').
# COMMAND reaches the tool through the environment (make exports command-line variables), never spliced
# into the shell line, where its quotes would break it.
record-%:
	python3 tools/sdkit_measured.py record build/$*.json --name $* --command "$${COMMAND:-make $*}"

$(ML_VENV)/.installed: profiles/$(TEST_PROFILE)/constraints.txt $(BUNDLE)/.wheelhouse-$(TEST_PROFILE)
	python3 -m venv $(ML_VENV)
	$(ML_VENV)/bin/pip install --quiet --no-compile --no-index --find-links $(BUNDLE)/wheelhouse/$(TEST_PROFILE) \
	  -c $< -r $< $(addprefix $(BUNDLE)/sources/,$(shell $(BIN)/python tools/sdkit_bundle.py sources --profile $(TEST_PROFILE)))
	$(ML_VENV)/bin/pip install --quiet pytest==9.2.0
	$(COMPILE) $(ML_VENV)/lib >/dev/null
	touch $@

# Layered on $(ML_VENV): a .pth file puts that venv's site-packages after this one's, so torch and every
# shared dependency are reused and pip installs only what $(PEFT_CONSTRAINTS) pins differently (11
# packages). The venv's own setuptools goes, so that pip sees the ML venv's pinned one.
$(PEFT_VENV)/.installed: profiles/$(PEFT_PROFILE)/constraints.txt $(ML_VENV)/.installed $(BUNDLE)/.wheelhouse-$(PEFT_PROFILE)
	rm -rf $(PEFT_VENV)
	python3 -m venv $(PEFT_VENV)
	$(PEFT_VENV)/bin/pip uninstall --quiet --yes setuptools
	$(ML_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))' \
	  > $$($(PEFT_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/sdkit-ml-base.pth
	$(PEFT_VENV)/bin/pip install --quiet --no-compile --no-index --find-links $(BUNDLE)/wheelhouse/$(PEFT_PROFILE) -c $< \
	  $(addprefix $(BUNDLE)/sources/,$(shell $(BIN)/python tools/sdkit_bundle.py sources --profile $(PEFT_PROFILE))) peft datasets
	$(COMPILE) $(PEFT_VENV)/lib >/dev/null
	touch $@

# Both flows: the tutorial's diffusers 0.20 (attention processors) and the peft flow's diffusers 0.29.
# The other unit tests do not touch diffusers, transformers or accelerate: once is enough.
FLOW_TESTS := tests/unit/patches tests/unit/runners/test_train_lora.py tests/unit/runners/test_infer.py \
  tests/unit/runners/test_sdkit_lora.py tests/unit/runners/test_make_tiny_fixtures.py
unit: setup $(ML_VENV)/.installed $(PEFT_VENV)/.installed ## Unit tests of the patches, runners, tools and the fleet report (no containers); the flows' tests again in the peft venv
	$(ML_VENV)/bin/python -m pytest -q tests/unit
	$(PEFT_VENV)/bin/python -m pytest -q $(FLOW_TESTS)

# Not in CI (no GitHub there): every profile's patches dry-run with --fuzz=0 against the real tags, checked
# out by hand under UPSTREAM as <library>-<tag> (git checkouts are also compared with the pinned commit).
UPSTREAM ?=
patches-upstream: setup ## Every profile's patches against real upstream checkouts in UPSTREAM=dir (<library>-<tag> each): no fuzz, no offset, one line per patch
	@test -n "$(UPSTREAM)" || { echo "set UPSTREAM=dir: one checkout per library and tag, named <library>-<tag> (e.g. accelerate-v0.30.1)"; exit 2; }
	$(BIN)/python tools/sdkit_patch_check.py --upstream-dir $(UPSTREAM)

# SIZE=sd14: SD v1.4's real shapes at RES px (fixtures built once into build/fixtures-sd14/, about 4 GB).
SIZE ?= tiny
RES ?= 256
# DATASET=photos runs the real upstream script from UPSTREAM=dir (the same folder of <library>-<tag>
# checkouts as patches-upstream: it needs diffusers-v0.20.0) with torchvision from BENCH_UPSTREAM_SITE,
# a folder on that process's path only: .venv-ml stays without torchvision.
BENCH_UPSTREAM_SITE := build/bench-upstream-site
$(BENCH_UPSTREAM_SITE)/.installed: tests/bench/upstream-requirements.txt | $(ML_VENV)/.installed
	rm -rf $(BENCH_UPSTREAM_SITE)
	$(ML_VENV)/bin/pip install --no-deps --require-hashes --target $(BENCH_UPSTREAM_SITE) -r tests/bench/upstream-requirements.txt
	touch $@

bench: $(ML_VENV)/.installed $(if $(filter sd14photos,$(SIZE)$(DATASET)),$(BENCH_UPSTREAM_SITE)/.installed) ## Runner vs upstream-style training loop and plain pipeline, tiny model, CPU; writes build/bench.json. SIZE=sd14 [RES=256]: SD v1.4's shapes, FLOPs, peak, memory; writes build/bench-sd14.json. SIZE=sd14 DATASET=photos UPSTREAM=dir: against the real v0.20.0 script (UPSTREAM/diffusers-v0.20.0), non-square photos with --buckets and square images, 10 epochs; writes build/bench-photos.json
ifeq ($(SIZE)$(DATASET),sd14photos)
	@test -n "$(UPSTREAM)" || { echo "set UPSTREAM=dir: the folder holding a diffusers checkout at tag v0.20.0 named diffusers-v0.20.0"; exit 2; }
	$(ML_VENV)/bin/python tests/bench/bench_photos.py --resolution $(RES) --upstream-script $(UPSTREAM)/diffusers-v0.20.0 \
		--upstream-site $(BENCH_UPSTREAM_SITE) --out build/bench-photos.json
else
	$(ML_VENV)/bin/python tests/bench/bench_runners.py $(if $(filter sd14,$(SIZE)),--size sd14 --resolution $(RES) --out build/bench-sd14.json,--out build/bench.json)
endif

bench-data-scale: $(ML_VENV)/.installed ## A few training steps on 1k, 10k and 100k synthetic small images (tiny model): peak RSS and latent cache bytes of each; writes build/bench-data-scale.json
	$(ML_VENV)/bin/python tests/bench/bench_data_scale.py --out build/bench-data-scale.json

bench-threads: $(ML_VENV)/.installed ## Tiny trainers side by side with torch's default threads and with the kit's share (OMP_NUM_THREADS); writes build/bench-threads.json
	$(ML_VENV)/bin/python tests/bench/bench_threads.py --out build/bench-threads.json

bench-report: ## The run report on a simulated 100 hosts x 8 jobs x 2000 steps (build/report-run/sim/): time, size; writes build/bench-report.json
	python3 tests/bench/bench_report.py --run-dir build/report-run/sim --out build/bench-report.json

# HOSTS=N: the simulated fleet of tests/bench/bench_fleet_sim.py instead (N inventory hosts on CONTAINERS
# systemd test hosts, default 5): cost per host of a no-op rerun, bytes per host pushed or pulled from a
# mirror, the poll's console delay with forks=10, make train-status; writes build/bench-fleet-N.json.
HOSTS ?=
CONTAINERS ?= 5
bench-fleet: setup test-image test-bundle ## Fleet control plane over SSH: converge 2 hosts from the bundle, rerun and --check on 1, rerun on 8 copies; HOSTS=100: the simulated fleet (build/bench-fleet-100.json)
ifeq ($(strip $(HOSTS)),)
	python tests/bench/bench_fleet.py --out build/bench-fleet.json
else
	python tests/bench/bench_fleet_sim.py --hosts $(HOSTS) --containers $(CONTAINERS) --out build/bench-fleet-$(HOSTS).json
endif

test-image: ## Build the Debian 12 test-host image (debootstrap + podman import)
	tests/hosts/build-image.sh $(TEST_IMAGE)

UPSTREAM_GIT := build/upstream-git
$(UPSTREAM_GIT)/libraries.yml: tests/hosts/make-upstream-repos.sh tests/unit/patches/fixtures/train_text_to_image_lora.v0.20.0.py $(BUNDLE)/.wheelhouse-$(TEST_PROFILE)
	tests/hosts/make-upstream-repos.sh $(BUNDLE)/sources $(UPSTREAM_GIT)

# The test profile's bundle: its apt repository feeds the fleet scenario's host with no network. It is
# signed with a throwaway key of this checkout (never an operator's); the test inventories read its
# fingerprint from $(TEST_GNUPGHOME)/fingerprint. The wheelhouse is a prerequisite here too, so that
# a parallel make downloads it once.
TEST_GNUPGHOME := $(CURDIR)/build/test-bundle-gnupg
test-bundle: setup $(addprefix $(BUNDLE)/.wheelhouse-,$(TEST_PROFILES))
	$(BIN)/python tools/sdkit_bundle.py key --gnupghome $(TEST_GNUPGHOME) >/dev/null
	$(MAKE) bundle PROFILES="$(TEST_PROFILES)" BUNDLE_GNUPGHOME=$(TEST_GNUPGHOME)

HOST_TEST_INPUTS := setup test-image test-bundle $(UPSTREAM_GIT)/libraries.yml

SCENARIOS := fleet runtime slurm

molecule: $(addprefix molecule-,$(SCENARIOS)) ## Molecule scenarios (fleet, runtime, slurm): converge, idempotence, testinfra verify on podman hosts
molecule-%: $(HOST_TEST_INPUTS)
	cd tests && SDKIT_UPSTREAM_GIT=$(CURDIR)/$(UPSTREAM_GIT) molecule test -s $*
# The runtime and slurm scenarios' hosts borrow the ML venv's packages (mounted read-only).
molecule-runtime molecule-slurm: $(ML_VENV)/.installed

# One throwaway host per test module, three modules at a time (--dist loadfile keeps a module's
# tests, and its host, in one worker); the slowest tests are listed at the end.
# ROLE=<role>: that role's tests from tests/roles.yml instead: its unit tests, its tests on throwaway hosts,
# and its testinfra checks when INVENTORY names provisioned hosts (tools/sdkit_role_tests.py). ROLE reaches
# the tool through the environment (make exports command-line variables), as INVENTORY does.
ROLE ?=
roles: $(if $(ROLE),role-known) $(HOST_TEST_INPUTS) $(if $(ROLE),$(ML_VENV)/.installed) ## Bad-input tests of the roles on throwaway podman hosts; ROLE=<role>: that role's unit, host and testinfra tests
ifeq ($(strip $(ROLE)),)
	pytest -q -p no:cacheprovider -n 3 --dist loadfile --durations=12 tests/roles
else
	$(BIN)/python tools/sdkit_role_tests.py run "$$ROLE" --ml-python $(ML_VENV)/bin/python --limit '$(LIMIT)' \
	  $(if $(filter command line environment,$(origin INVENTORY)),--inventory "$$INVENTORY")
endif
# A misspelt ROLE is one line before the test image and bundle are built, not after.
role-known: setup
	@$(BIN)/python tools/sdkit_role_tests.py list "$$ROLE" >/dev/null

# The host tests wait on SSH, podman and apt more than they use the CPU, so everything runs side by
# side once its inputs are built (those first, three at a time: venvs, wheelhouse, image, upstream
# repositories); each part prints its output when it ends.
HOST_TESTS := $(addprefix molecule-,$(SCENARIOS)) roles
host-tests: $(HOST_TEST_INPUTS)
	$(MAKE) --no-print-directory -j3 --output-sync=target HOST_TEST_INPUTS= $(HOST_TESTS)

# Checks that prove something once and cost too much CPU for every CI run; run them and record.
test-profile: setup test-image test-bundle ## Not in make test (several GB): PROFILE's real pins installed by site.yml on a Debian 12 host, rerun, make smoke; writes build/test-profile-PROFILE.json
	python tests/profiles/install_profile.py --profile $(PROFILE)

test-long: setup ## Long checks, not in make test: train.yml's poll for 400 rounds at a flat CPU per round (the old poll broke at 246)
	SDKIT_POLL_ROUNDS=400 pytest -q -p no:cacheprovider tests/roles/test_train_poll.py

# One make, five jobs at a time: each part starts as soon as its own inputs are built (lint once the
# control node's venv is there, the unit tests once the ML venvs are), so the CPU works on tests while the
# test image and the wheelhouses download. (Running the short tests at a lower priority gains nothing:
# each test host is a cgroup of its own, and the kernel shares the CPU between cgroups, not by nice
# values; tried once, it took longer.) Each part prints its output, and the seconds since make test began,
# when it ends. CPU_COST=1: each part also prints its CPU seconds, its own and its test hosts'
# (tests/bench/cpu_cost.py, which tells the parts' hosts apart by their names).
TEST_PARTS := roles molecule-slurm molecule-fleet unit molecule-runtime lint
TEST_PART_HOSTS := roles:sdkit-bad- molecule-slurm:sdkit-slurm- molecule-fleet:sdkit-fleet- molecule-runtime:sdkit-rt-
CPU_COST ?=
test: ## Every test, side by side: lint, unit tests, the Molecule scenarios and the bad-input tests; CPU_COST=1 prints each part's CPU seconds
	@echo "Running $(TEST_PARTS) side by side, each once its inputs are built; each prints its output when it ends."
	@SDKIT_TEST_STARTED=$$(date +%s) $(MAKE) --no-print-directory -j5 --output-sync=target $(addprefix part-,$(TEST_PARTS))

part-lint: setup
part-unit: $(ML_VENV)/.installed $(PEFT_VENV)/.installed
$(addprefix part-,roles $(addprefix molecule-,$(SCENARIOS))): $(HOST_TEST_INPUTS) $(ML_VENV)/.installed
# Its inputs are built by now: HOST_TEST_INPUTS= keeps the part's own make from looking at them again.
part-%:
	@$(if $(CPU_COST),python3 tests/bench/cpu_cost.py \
	    --hosts $(or $(patsubst $*:%,%,$(filter $*:%,$(TEST_PART_HOSTS))),sdkit-no-hosts-) --) \
	  $(MAKE) --no-print-directory HOST_TEST_INPUTS= $* && \
	  echo "make test: $* ended $$(( $$(date +%s) - $${SDKIT_TEST_STARTED:-$$(date +%s)} )) s after make test began"

clean: ## Remove build outputs (keeps bundle/ and the venvs)
	rm -rf build
