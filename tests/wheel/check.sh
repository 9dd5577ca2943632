#!/usr/bin/env bash
# A wheel that works anywhere (issue 23). Builds the sdist and, from it, the wheel (`python -m build`:
# so a file missing from the sdist fails too), installs the wheel with the [serve] extra into a fresh
# venv without torch, and, from an empty directory with no repo beside it and no network, runs
# `wordlm generate`, `wordlm eval --max-tokens 2000` and `wordlm serve` (/health, /v1/models, a
# completion, the page) on the model packaged inside the wheel. Any error fails it (exit status != 0).
#
# usage: tests/wheel/check.sh [PYTHON]   PYTHON has `build` and setuptools (default: .venv/bin/python;
#        `make test-wheel`). The venv's packages come from pip's cache or the package index.
# No network while the commands run: they run in a network namespace of their own (`unshare -rn`,
# loopback only) where the kernel allows one; elsewhere without that guard, and the script says so.
set -euo pipefail

if [[ ${1:-} == --offline-phase ]]; then  # the second half, re-entered inside the network namespace
    shift
    ip link set lo up 2>/dev/null || true  # serve listens on loopback, which a new namespace has down
else
    ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    PY=${1:-$ROOT/.venv/bin/python}
    TMP=$(mktemp -d -t wordlm-wheel.XXXXXX)
    trap 'rm -rf "$TMP"' EXIT
    step() { printf '== %3ds  %s\n' "$SECONDS" "$*"; }

    step "python -m build (sdist, then the wheel from it)"
    # from a copy of what a clone with these changes has (tracked and not-ignored files): the tree's own
    # *.egg-info/SOURCES.txt from earlier builds would add files that pyproject.toml no longer names
    mkdir "$TMP/src"
    if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
        git -C "$ROOT" ls-files -z --cached --others --exclude-standard |
            tar -C "$ROOT" --null -T - --ignore-failed-read -cf - | tar -xf - -C "$TMP/src"
    else  # an unpacked sdist or tarball: all but what builds and installs leave
        tar -cf - -C "$ROOT" --exclude=./.venv --exclude='*.egg-info' --exclude=./build --exclude=./dist \
            --exclude='*.so' . | tar -xf - -C "$TMP/src"
    fi
    # --no-isolation: PYTHON's setuptools, so the build downloads nothing and takes seconds less
    "$PY" -m build --no-isolation --outdir "$TMP/dist" "$TMP/src" >"$TMP/build.log" 2>&1 || {
        tail -n 40 "$TMP/build.log"
        exit 1
    }
    WHEEL=$(ls "$TMP"/dist/wordlm-*.whl)
    step "$(basename "$WHEEL"): $(du -h "$WHEEL" | cut -f1); sdist $(du -h "$TMP"/dist/wordlm-*.tar.gz | cut -f1)"

    step "fresh venv: the wheel + [serve], no torch"
    "$PY" -m venv "$TMP/venv"
    # (grep: the lines a pip.conf naming absent local indexes adds, one per package)
    "$TMP/venv/bin/python" -m pip install -q --disable-pip-version-check "$WHEEL[serve]" 2>&1 |
        { grep -v "^WARNING: Location '.*' is ignored" || true; }
    if "$TMP/venv/bin/python" -c 'import torch' 2>/dev/null; then
        echo "torch is in the fresh venv: the check must run without it" >&2
        exit 1
    fi

    mkdir "$TMP/empty"
    cd "$TMP/empty"  # no repo beside it: the package's own files only
    env_clean=(env -u WORDLM_MODEL -u PYTHONPATH "PATH=$TMP/venv/bin:$PATH" OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1)
    if unshare -rn true 2>/dev/null; then
        step "the commands, in a network namespace of their own (no network)"
        exec "${env_clean[@]}" "T0=$SECONDS" unshare -rn bash "$ROOT/tests/wheel/check.sh" --offline-phase "$TMP"
    fi
    step "the commands (unshare -rn is refused here: the network is NOT cut off)"
    exec "${env_clean[@]}" "T0=$SECONDS" bash "$ROOT/tests/wheel/check.sh" --offline-phase "$TMP"
fi

# --- the offline phase: $1 is the temporary directory; PATH starts with the fresh venv ---
TMP=$1
SECONDS=${T0:-0}  # the clock of the first half
trap 'rm -rf "$TMP"; [[ -n ${SERVER:-} ]] && kill "$SERVER" 2>/dev/null || true' EXIT
step() { printf '== %3ds  %s\n' "$SECONDS" "$*"; }
fail() {
    echo "FAIL: $*" >&2
    exit 1
}
SITE=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

step "the default model is the packaged one"
MODEL=$(python -c 'from wordlm.models import default_checkpoint as d; print(d())')
[[ $MODEL == "$SITE"/wordlm/shipped/* ]] || fail "default checkpoint $MODEL is not inside $SITE/wordlm/shipped"

step "wordlm generate"
OUT=$(wordlm generate --words 12 --seed 3 --prompt "the king of")
echo "   $OUT"
[[ $OUT == "the king of"* && $(wc -w <<<"$OUT") -ge 12 ]] || fail "generate printed: $OUT"

step "wordlm eval --max-tokens 2000"
EVAL=$(wordlm eval --max-tokens 2000 --json)
echo "   $EVAL"
python - "$EVAL" "$MODEL" <<'PY' || fail "eval"
import json, math, sys
r, model = json.loads(sys.argv[1]), sys.argv[2]
assert r["checkpoint"] == model and r["split"] == "test" and r["tokens"] == 1999, r
assert math.isfinite(r["loss"]) and r["loss"] < 6.0, r  # a working model (uniform over 33,278 words: 10.4)
PY

step "wordlm serve"
PORT=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
wordlm serve --port "$PORT" >"$TMP/serve.log" 2>&1 &
SERVER=$!
python - "$PORT" <<'PY' || { cat "$TMP/serve.log"; fail "serve"; }
import json, sys, time, urllib.request

base = f"http://127.0.0.1:{sys.argv[1]}"

def call(path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        raw = r.read().decode()
        return json.loads(raw) if r.headers.get_content_type() == "application/json" else raw

for _ in range(600):  # the model loads and warms up before uvicorn listens
    try:
        health = call("/health")
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("the server did not answer /health within 60 s")
models = call("/v1/models")
done = call("/v1/completions", {"prompt": "the king of", "max_tokens": 8, "seed": 1})
page = call("/")
print("  ", health, [m["id"] for m in models["data"]], repr(done["choices"][0]["text"]))
assert health["status"] == "ok" and models["data"][0]["id"] == health["model"], (health, models)
assert len(done["choices"][0]["text"].split()) >= 1 and done["usage"]["completion_tokens"] == 8, done
assert "<html" in page.lower(), page[:200]
PY
kill "$SERVER"
wait "$SERVER" 2>/dev/null || true
SERVER=
step "the wheel works: generate, eval and serve on $(basename "$MODEL"), nothing fetched"
