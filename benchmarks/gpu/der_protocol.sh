#!/usr/bin/env bash
# The GPU checks of the speed and natural-image issues, as one command on a lent GPU machine
# (after benchmarks/gpu/prepare.sh here; carry .gpu). Everything lands in $OUT (or results/gpu):
#   1. the CUDA tests (pytest -m cuda);
#   2. a probe: the DER protocol's kd-replay@500 for one epoch per experience, bf16, eager and with
#      the model's passes replayed from CUDA graphs (--cuda-graphs); the faster one's experiences' time
#      (training and scoring) x 50 estimates a whole run, from above;
#   3. whole DER-protocol runs, kd-replay@500 then DER++@500 (seed 0, bf16, the faster way), each only
#      if the estimate fits the seconds left of BUDGET_S (default 540, inside the tool's 600 s per command).
# Usage (on the GPU machine, repository root): bash benchmarks/gpu/der_protocol.sh
# A smoke test of this script on a CPU, a few minutes: PYTHON=.venv/bin/python DEVICE=cpu FULL_EPOCHS=2 \
#   EXTRA_ARGS="--max-train 64 --max-test 40" OUT=/tmp/gpu-smoke bash benchmarks/gpu/der_protocol.sh
set -uo pipefail
start=$(date +%s)
budget=${BUDGET_S:-540}
device=${DEVICE:-cuda}
py=${PYTHON:-python3}
out="${OUT:-results/gpu}"
mkdir -p "$out"
left() { echo $(( budget - ($(date +%s) - start) )); }

"$py" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/ckd-site .gpu/whl/*.whl || exit 1
rm -rf /tmp/ckd-site/tests /tmp/ckd-site/examples  # top-level folders a wheel ships: not this checkout's tests
export PYTHONPATH="/tmp/ckd-site:$PWD/.gpu/stubs:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
data=/tmp/ckd-data
mkdir -p "$data" && ln -sfn "$PWD/.gpu/data/CIFAR10-JPEG" "$data/CIFAR10-JPEG"
"$py" -c "import torch, avalanche, ckd; print('torch', torch.__version__, 'avalanche', avalanche.__version__, \
'device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" | tee "$out/environment.txt"

if [ "$device" = cuda ]; then
  timeout 150 "$py" -m pytest -q -m cuda -p no:cacheprovider tests > "$out/cuda_tests.txt" 2>&1
  tail -3 "$out/cuda_tests.txt"
fi

# The DER protocol (benchmarks/der_seq_cifar10.toml's rows): ResNet-18, batch 32, replay batch 32, lr 0.03,
# crop and flip, every method also scored with an EMA of its weights (the stream's default).
declare -A settings=(
  [kd-replay@500]="--method kd-replay --set replay_batch_size=32"
  [der++@500]="--method der --set replay_batch_size=32 alpha=0.2 beta=0.5"
)
run() {  # run LABEL EPOCHS SUBFOLDER [OPTION...]
  local label=$1 epochs=$2 folder=$3
  shift 3
  # shellcheck disable=SC2086
  "$py" -m ckd run --stream split-cifar10 --model resnet18 ${settings[$label]} --mem-size 500 --lr 0.03 \
    --batch-size 32 --epochs "$epochs" --amp bf16 --seeds 0 --label "$label" --device "$device" --data-root "$data" \
    --out "$out/$folder" --quiet ${EXTRA_ARGS:-} "$@" >> "$out/log.txt" 2>&1
}
# The experiences' time of the run in SUBFOLDER (training and scoring, not the archive's first decode).
experiences_s() {
  "$py" -c "import json,glob; print(int(sum(json.load(open(glob.glob('$out/$1/*.json')[0]))['wall_time_per_experience_s'])))"
}
run kd-replay@500 1 probe || { echo "probe failed: $out/log.txt"; tail -20 "$out/log.txt"; exit 1; }
probe_s=$(experiences_s probe)
graphs=()
if [ "$device" = cuda ]; then
  if run kd-replay@500 1 probe-graphs --cuda-graphs; then
    graphs_s=$(experiences_s probe-graphs)
    echo "probe with CUDA graphs: ${graphs_s} s, eager ${probe_s} s" | tee -a "$out/estimate.txt"
    if [ "$graphs_s" -lt "$probe_s" ]; then graphs=(--cuda-graphs); probe_s=$graphs_s; fi
  else
    echo "probe with CUDA graphs failed: $out/log.txt" | tee -a "$out/estimate.txt"
  fi
fi
estimate=$(( probe_s * ${FULL_EPOCHS:-50} ))
echo "probe: one epoch per experience in ${probe_s} s; a whole run ~${estimate} s; $(left) s left" | tee -a "$out/estimate.txt"
for label in kd-replay@500 der++@500; do
  if [ "$estimate" -lt "$(left)" ]; then
    run "$label" "${FULL_EPOCHS:-50}" whole "${graphs[@]}" && echo "whole $label done" || echo "whole $label failed"
  else
    echo "whole $label skipped: ~${estimate} s needed, $(left) s left" | tee -a "$out/estimate.txt"
  fi
done
echo "done in $(( $(date +%s) - start )) s"
