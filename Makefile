# The two commands of the README: `make demo` (the offline study) and `make test`.
# Each creates .venv and installs the pinned requirements on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: demo demo-chat test test-fast sweep sweep-tools bench install clean-demo reference-check

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

test: install
	$(PY) -m pytest

# The inner loop: every test that neither trains, nor launches a process, nor runs a notebook, nor uses more than 5 s
# of CPU (pytest -m "not slow"; tests/markers.py checks the markers, docs/testing.md has the timings).
test-fast: install
	$(PY) -m pytest -m "not slow"

demo: install
	$(PY) -m sft demo
	$(PY) eval.py --models base=model/demo/base,masked=model/demo/masked,unmasked=model/demo/unmasked --tensorboard

# The conversational study (docs/results.md): synthetic dialogues from the demo's base at w = 0, 0.5, 1, evaluated
# with lm-eval multi-turn requests through the chat template. Its own target: make demo already takes ~5 minutes.
demo-chat: install
	$(PY) -m sft demo --chat

# The study beyond two points: 4 prompt-loss weights x 3 seeds on the demo (12 runs; docs/results.md has the time).
sweep: install
	$(PY) -m sft sweep --preset demo --prompt-loss-weights 0,0.1,0.5,1 --seeds 3 --name demo

# The tool-use study: the tool's output weighing 0, w (0.5) or 1 on demo-chat, 3 seeds each (9 runs; docs/sweeps.md).
sweep-tools: install
	$(PY) -m sft sweep --preset demo-chat --prompt-loss-weights 0.5 --role-weights tool_output=0,0.5,1 --seeds 3 --name tools

# The reference experiment's commands end to end on a tiny Qwen2.5 stand-in (needs ../shared; offline, CPU, ~2-4 min).
# Works in .cache/reference-check/, never in your model/ or Dataset/.
reference-check: install
	$(PY) -m sft reference-check --workdir .cache/reference-check --shared ../shared

# Benchmarks (need ../shared; TRL is a benchmark-only dependency).
bench: install
	$(PY) -m pip install -q -r bench/requirements.txt
	$(PY) bench/preprocess.py
	$(PY) bench/throughput.py
	$(PY) bench/real_vocab.py
	$(PY) bench/generation_speed.py

clean-demo:
	rm -rf Dataset/demo model/demo tensorboard_events/demo .cache/sft
