# The two commands of the README: `make demo` (the offline study) and `make test`.
# Each creates .venv and installs the pinned requirements on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: demo demo-chat test test-fast sweep sweep-tools sweep-lr sweep-pretrained sweep-random bench install clean-demo \
	reference-check

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

# The conversational study (docs/results-history.md): synthetic dialogues from the demo's base at w = 0, 0.5, 1, evaluated
# with lm-eval multi-turn requests through the chat template. Its own target: make demo already takes ~5 minutes.
demo-chat: install
	$(PY) -m sft demo --chat

# The study beyond two points: 4 prompt-loss weights x 3 seeds on the demo (12 runs; docs/results-history.md has the time).
sweep: install
	$(PY) -m sft sweep --preset demo --prompt-loss-weights 0,0.1,0.5,1 --seeds 3 --name demo

# The tool-use study: the tool's output weighing 0, w (0.5) or 1 on demo-chat, 3 seeds each (9 runs; docs/sweeps.md).
sweep-tools: install
	$(PY) -m sft sweep --preset demo-chat --prompt-loss-weights 0.5 --role-weights tool_output=0,0.5,1 --seeds 3 --name tools

# Issue #36's sweeps on the fact-held-out split (docs/sweeps.md has what each runs and costs; docs/results.md
# reads what they publish). All score both test groups (sft_demo: facts no fine-tuning row holds; sft_demo_seen: seen
# facts, new phrasing) and declare the two primary endpoints before their first run. Each resumes where it stopped
# when run again, then publishes into evaluation_results/sweep-<name>/ (commit that folder).
PRIMARY := sft_demo_short:exact_match,sft_demo_long:edit_similarity
STUDY := --preset demo --demo.split-by-fact true --tasks sft_demo,sft_demo_seen --primary $(PRIMARY)
# The fine-tuning learning rate of sweep-pretrained and sweep-random: sweep-lr's choice (docs/results.md: both arms'
# held-out response loss is lowest at 1e-3); another is one setting away, e.g. make sweep-pretrained SWEEP_LR=3e-3.
SWEEP_LR ?= 1e-3

# lr in {1e-3, 3e-3} x w in {0, 1} x 3 seeds on the pretrained base (12 runs): one sweep per rate, variants.csv between them.
sweep-lr: install
	$(PY) -m sft sweep $(STUDY) --demo.base pretrained --prompt-loss-weights 0,1 --learning-rate 1e-3,3e-3 --seeds 3 --name lr-check
	$(PY) -m sft publish evaluation_results/raw/sweep-lr-check
	$(PY) -m sft publish evaluation_results/raw/sweep-lr-check-lr0.001
	$(PY) -m sft publish evaluation_results/raw/sweep-lr-check-lr0.003

# The study on the pretrained base: w in {0, 0.01, 0.1, 0.5, 1} x 8 seeds (40 runs).
sweep-pretrained: install
	$(PY) -m sft sweep $(STUDY) --demo.base pretrained --learning-rate $(SWEEP_LR) --prompt-loss-weights 0,0.01,0.1,0.5,1 --seeds 8 --name pretrained
	$(PY) -m sft publish evaluation_results/raw/sweep-pretrained

# The same split and code on the random-init base: w in {0, 0.1, 0.5, 1} x 8 seeds (32 runs).
sweep-random: install
	$(PY) -m sft sweep $(STUDY) --demo.base random --learning-rate $(SWEEP_LR) --prompt-loss-weights 0,0.1,0.5,1 --seeds 8 --name random-init
	$(PY) -m sft publish evaluation_results/raw/sweep-random-init

# The clipping control on the pretrained base: w in {0, 1} x 8 seeds with gradient clipping off for both arms (16 runs),
# so neither arm trains on norm-bounded steps (at clipping 1.0 the masked arm clips on most steps, the unmasked on few).
sweep-noclip: install
	$(PY) -m sft sweep $(STUDY) --demo.base pretrained --learning-rate $(SWEEP_LR) --max-grad-norm 0 --prompt-loss-weights 0,1 --seeds 8 --name pretrained-noclip
	$(PY) -m sft publish evaluation_results/raw/sweep-pretrained-noclip

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
