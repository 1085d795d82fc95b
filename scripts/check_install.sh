#!/usr/bin/env bash
# The install a user makes, checked: build a wheel, install it (not editable) into a fresh virtual
# environment, and use it from a folder outside the repository.
#   1. `rankedlist --version`, `rankedlist recipes` (the recipes ship inside the package);
#   2. a few iterations of the `glyphs` recipe by name, and a user's YAML that `base:`s it;
#   3. a PML baseline recipe without the extra: one `error:` line naming rankedlist[baselines];
#   4. the same recipe after `pip install 'rankedlist[baselines]'`.
# Usage: scripts/check_install.sh [PYTHON]   (PYTHON builds the wheel; default python3)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${1:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
tiny=(data.p=8 data.k=2 model.embedding_dim=16 "model.options={widths: [8, 16, 16, 32]}"
      train.iterations=3 train.log_every=1 train.eval_batch_size=512 train.tensorboard=false
      train.report=false)

say() { printf '[check_install] %s\n' "$*"; }
fail() { printf '[check_install] FAILED: %s\n' "$*" >&2; exit 1; }

say "building the wheel"
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" "$repo" >/dev/null
wheel="$(ls "$work"/dist/rankedlist-*.whl)"
"$python" -c 'import sys, zipfile; names = zipfile.ZipFile(sys.argv[1]).namelist()
sys.exit(not {"rankedlist/configs/glyphs.yaml", "rankedlist/tune/spaces/rll.yaml"} <= set(names))
' "$wheel" || fail "the wheel lacks the recipes or the search spaces"

say "installing $(basename "$wheel") into a fresh virtual environment"
"$python" -m venv "$work/venv"
pip_install() {  # quiet unless it fails (the local indexes print a warning per package)
    "$work/venv/bin/python" -m pip install --quiet "$@" >"$work/pip.log" 2>&1 \
        || { tail -20 "$work/pip.log"; fail "pip install $*"; }
}
pip_install "$wheel"
bin="$work/venv/bin"
mkdir "$work/elsewhere" && cd "$work/elsewhere"

version="$("$bin/python" -c 'import rankedlist; print(rankedlist.__version__)')"
[[ "$("$bin/rankedlist" --version)" == "rankedlist $version" ]] || fail "--version"
recipes="$("$bin/rankedlist" recipes)" || fail "rankedlist recipes"
grep -q "^glyphs " <<<"$recipes" || fail "recipes does not list glyphs"
"$bin/python" - <<'EOF' || fail "the package was imported from the repository, not the install"
import pathlib, rankedlist
assert "site-packages" in pathlib.Path(rankedlist.__file__).parts, rankedlist.__file__
EOF

say "training glyphs by recipe name"
"$bin/rankedlist" train --config glyphs "${tiny[@]}" train.run_dir=run_glyphs >log 2>&1 \
    || { cat log; fail "train --config glyphs"; }
grep -q "written by rankedlist $version" run_glyphs/config.yaml || fail "no version in config.yaml"
printf 'base: glyphs\ntrain:\n  seed: 3\n' >mine.yaml
"$bin/rankedlist" train --config mine.yaml "${tiny[@]}" train.run_dir=run_mine >log 2>&1 \
    || { cat log; fail "a user recipe with base: glyphs"; }

say "a baseline recipe without the extra"
set +e
"$bin/rankedlist" train --config glyphs_contrastive "${tiny[@]}" train.run_dir=run_c >out 2>err
code=$?
set -e
[[ $code -eq 2 ]] || { cat out err; fail "exit status $code, expected 2"; }
[[ $(wc -l <err) -eq 1 ]] && grep -q "^error: .*pip install 'rankedlist\[baselines\]'" err \
    || { cat err; fail "the missing extra is not one error line naming it"; }

say "the same with rankedlist[baselines]"
pip_install "${wheel}[baselines]"
"$bin/rankedlist" train --config glyphs_contrastive "${tiny[@]}" train.run_dir=run_c >log 2>&1 \
    || { cat log; fail "train --config glyphs_contrastive with the extra"; }
say "ok: the wheel works like the repository"
