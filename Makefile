# normtut: `make book` builds the HTML book, `make test` runs every check.
# Both create .venv from requirements.txt on first use.

PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
NB      ?= $(sort $(wildcard book/*.ipynb))

.PHONY: book test chromium unit nbval bookcheck browsercheck notebooks translations catalogs lint bench clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $(STAMP)

book: $(STAMP)
	rm -rf _build/html
	$(BIN)/jupyter-book build . --all
	$(BIN)/python tools/build_edition.py zh_CN
	@echo
	@echo "Open the book: file://$(CURDIR)/_build/html/index.html"
	@echo "中文版 (Chinese edition): file://$(CURDIR)/_build/html/zh/index.html"

test: chromium unit nbval catalogs bookcheck browsercheck lint

unit: $(STAMP) chromium
	$(BIN)/python -m pytest tests -q

nbval: $(STAMP)
	$(BIN)/python -m pytest --nbval --nbval-current-env --nbval-sanitize-with book/sanitize.cfg $(NB) -q -p no:randomly

bookcheck: $(STAMP)
	rm -rf _build/html
	$(BIN)/jupyter-book build . --all -W -n --keep-going
	$(BIN)/python tools/build_edition.py zh_CN --strict

# Every page of the built book in a real browser (tools/browser_check.py): JavaScript errors,
# unrendered math, broken images and links, listings wider than the column, search.
browsercheck: $(STAMP) chromium bookcheck
	$(BIN)/python tools/browser_check.py _build/html
	$(BIN)/python tools/browser_check.py _build/html/zh --search 归一化 BatchNorm2d

# The browser test drives the system's Chromium; say how to get it rather than skip the test.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  echo "make test needs Chromium for the browser test (tools/browser_check.py)."; \
	  echo "Install it, e.g. on Debian/Ubuntu:  sudo apt-get install -y chromium"; \
	  exit 1; }

lint: $(STAMP)
	$(BIN)/ruff check normtut tests benchmarks tools
	$(BIN)/ruff format --check normtut tests benchmarks tools

# Bring the Chinese edition's message catalogs (locales/zh_CN) in line with the English text:
# new messages empty, changed ones fuzzy (see locales/zh_CN/README.md).
translations: $(STAMP)
	$(BIN)/python tools/catalogs.py update

# Fail on an untranslated, fuzzy or stale message.
catalogs: $(STAMP)
	$(BIN)/python tools/catalogs.py check

# Re-execute notebooks in place to refresh their stored outputs (one thread, like nbval).
notebooks: $(STAMP)
	$(BIN)/python tools/execute_notebooks.py $(NB)

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/fold.py

clean:
	rm -rf _build .pytest_cache
