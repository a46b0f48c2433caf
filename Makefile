# Two commands on a fresh machine:
#   make demo   -> runs the main job on the bundled default
#   make test   -> runs the whole test suite
# Both create (or reuse) a local virtualenv in $(VENV). torch is installed FIRST so that CPU-only
# machines get the CPU wheel; CUDA users override it, e.g.
#   make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu130"
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.facemogle-installed

.PHONY: venv test demo app parser clean tiny-model tiny-model-fast

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

test: venv
	$(PY) -m pytest -q -p no:cacheprovider

# The main job: faces from the shipped example mask with the bundled CPU model (offline, seconds).
DEMO_MASK := src/facemogle/assets/masks/example.png
DEMO_PROMPT := This person has long brown hair and is smiling.
demo: venv
	$(VENV)/bin/facemogle generate --mask $(DEMO_MASK) --prompt "$(DEMO_PROMPT)" --num-images 4 -o out/demo_face.png
	$(VENV)/bin/facemogle mask show $(DEMO_MASK) -o out/demo_mask.png
	@echo "wrote out/demo_face-0.png .. out/demo_face-3.png, out/demo_face-grid.png and out/demo_mask.png"

# The web app on the bundled model (offline): paint a mask or start from a photo, generate. Ctrl-C stops it.
# Other models: make app APP_ARGS="--model flux-dev --base ... --lora ... --mogle ..."
APP_ARGS ?=
app: venv
	$(VENV)/bin/facemogle app $(APP_ARGS)

# Reproduce the bundled CPU model (about 5.3 hours on 2 cores): captions, split, autoencoder, text
# encoders, diffusion from scratch, a text-emphasis run from its moving average
# (configs/tiny_text_emphasis.yaml), a high-noise run from that one's (configs/tiny_high_noise.yaml),
# a small-parts run from that one's (configs/tiny_small_parts.yaml),
# export to src/facemogle/weights/tiny, then its metrics, sample
# grid and gate plot (scripts/train_tiny_model.py, scripts/evaluate_tiny_model.py).
tiny-model: venv
	$(PY) scripts/train_tiny_model.py --config configs/tiny.yaml --work-dir runs/tiny-model

# A 2.6-hour variant (measured; not the shipped weights: mask and text control come out weaker, see
# configs/tiny_fast_text_emphasis.yaml): the diffusion run at 64 px, then one 128 px run.
tiny-model-fast: venv
	$(PY) scripts/train_tiny_model.py --config configs/tiny.yaml --low-res-config configs/tiny_low_res.yaml \
		--emphasis-config configs/tiny_fast_text_emphasis.yaml --high-noise-config none --small-parts-config none \
		--work-dir runs/tiny-model-fast --export runs/tiny-model-fast/export

# Reproduce the shipped face parser (about 3 h on one CPU thread; needs ../shared): 50 epochs from scratch;
# two fine-tuning stages with rare classes drawn more often, the second with Dice over the classes present
# in each batch; a last one adding a Lovasz-softmax loss term and copy-paste of rare objects (necklace, hat,
# eyeglasses, earring), saved with multi-scale testing (256 + 320 px). The model card lists every command.
PARSER_ARGS = --data ../shared/data/celebamask-hq-mini --rare-class-threshold 0.3 --lr 1e-3
PARSER_LAST = --dice-classes present --lovasz-weight 1.0 --copy-paste-classes necklace hat eyeglasses earring
parser: venv
	$(PY) scripts/train_parser.py --data ../shared/data/celebamask-hq-mini \
		--output out/parser-work/stage1 --work-dir out/parser-work/stage1-work --epochs 50
	$(PY) scripts/train_parser.py $(PARSER_ARGS) --init-from out/parser-work/stage1 \
		--output out/parser-work/stage2-out --work-dir out/parser-work/stage2 --epochs 45
	$(PY) scripts/train_parser.py $(PARSER_ARGS) --init-from out/parser-work/stage2-out --dice-classes present \
		--output out/parser-work/stage3-out --work-dir out/parser-work/stage3 --epochs 40
	$(PY) scripts/train_parser.py $(PARSER_ARGS) $(PARSER_LAST) --init-from out/parser-work/stage3-out \
		--epochs 20 --test-time-sizes 320 --output src/facemogle/weights/parser --work-dir out/parser-work/stage4

clean:
	rm -rf $(VENV) out
