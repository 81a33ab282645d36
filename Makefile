# Two commands do all the set-up on a fresh machine: `make train` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: train test lint ceilings clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e . 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
	$(BIN)/python -c "import torch, torchaudio, timm, transformers, wandb, mm"
	@# The page's browser test drives Debian's chromium (skipped, saying why, where it cannot be installed).
	command -v chromium >/dev/null 2>&1 || (apt-get install -y -qq chromium >/dev/null 2>&1 || \
		(apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1)) || \
		echo "chromium not installed: tests/test_serve_browser.py will be skipped"
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/python scripts/train.py --modalities text,image $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check mm scripts tests

ceilings: $(STAMP)
	$(BIN)/python scripts/ceilings.py

clean:
	rm -rf $(VENV) runs .pytest_cache
