#!/usr/bin/env bash
# The README's first command on a minimal install: `pip install .` (no test extras, not editable) in a new
# virtualenv, then `kubeport start` answers `kpctl status` and stops on Ctrl-C. The test suite runs with
# the [test] extras installed, so a runtime module that only they bring (wsproto once) or a file left out
# of the package would pass every test and still break a user's first command; this catches both.
set -euo pipefail
cd "$(dirname "$0")/.."

work="$(mktemp -d)"
pid=""
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

"${PYTHON:-python3}" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check .
bin="$work/venv/bin"
for program in kubeport kpctl kubeport-get-kubeconfig; do
    "$bin/$program" --help >/dev/null
done

# Ports the test suite does not use, so this never meets a leftover of it.
data="$work/data"
"$bin/kubeport" start --data-dir "$data" --listen 127.0.0.1:13125 --kube-listen 127.0.0.1:13126 \
    >"$work/start.log" 2>&1 &
pid=$!
for _ in $(seq 1 120); do  # up to 60 s for the first start (CA, store, agent)
    if grep -q "is running" "$work/start.log"; then break; fi
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.5
done
if ! grep -q "is running" "$work/start.log"; then
    echo "fresh install: kubeport start did not come up:" >&2
    cat "$work/start.log" >&2
    exit 1
fi
"$bin/kpctl" --data-dir "$data" status >"$work/status.log"
grep -q "^Registry  127.0.0.1:13125" "$work/status.log" || { cat "$work/status.log" >&2; exit 1; }
kill -INT "$pid"
for _ in $(seq 1 60); do
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.5
done
if kill -0 "$pid" 2>/dev/null; then
    echo "fresh install: kubeport start did not stop within 30 s of Ctrl-C" >&2
    exit 1
fi
wait "$pid" || true  # its exit status after Ctrl-C is not the point; a crash on the way out is:
pid=""
if grep -q "Traceback" "$work/start.log"; then
    echo "fresh install: kubeport start crashed while stopping:" >&2
    cat "$work/start.log" >&2
    exit 1
fi
echo "fresh install: pip install . && kubeport start works (kpctl status answered, Ctrl-C stopped it)"
