# The two commands of the README: `make demo` (the offline study) and `make test`.
# Each creates .venv and installs the pinned requirements on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: demo test install clean-demo

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

demo: install
	$(PY) -m sft demo

clean-demo:
	rm -rf Dataset/demo model/demo tensorboard_events/demo .cache/sft
