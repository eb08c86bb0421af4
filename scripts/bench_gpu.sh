#!/usr/bin/env bash
# The CUDA numbers of the federation issue in one prepared run (about 8 minutes), for a
# machine with one NVIDIA GPU: every step has its own time limit and writes its JSON and
# log into $OUT as it finishes, so a run cut short keeps what it measured.
#
#   OUT=gpu-results bash scripts/bench_gpu.sh DATA_DIR
#
# DATA_DIR holds Fashion-MNIST in torchvision's raw layout (any subset); fedal and its
# dependencies must be importable (python3 -m fedal.cli).
set -u
data=${1:?usage: bench_gpu.sh DATA_DIR}
out=${OUT:-gpu-results}
mkdir -p "$out"
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log, record the status
  local name=$1 limit=$2; shift 2
  local started=$SECONDS
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  echo "$name: exit $? after $((SECONDS - started)) s" >> "$out/steps.txt"
}
step nvidia-smi 20 nvidia-smi
step sampling-bf16 120 python3 -m fedal.cli bench sampling --device cuda --models resnet18 \
  --pool 50000 --budget 1000 --strategies entropy,badge,kmeans,coreset \
  --output "$out/bench_sampling_resnet18_cuda_bf16.json"
# LHD trains its main network until it settles (thousands of steps): a step of its own
step sampling-lhd 60 python3 -m fedal.cli bench sampling --device cuda --models resnet18 \
  --pool 50000 --budget 1000 --strategies lhd \
  --output "$out/bench_sampling_resnet18_cuda_bf16_lhd.json"
step sampling-fp32 60 python3 -m fedal.cli bench sampling --device cuda --models resnet18 \
  --pool 50000 --budget 1000 --strategies entropy --bf16 off \
  --output "$out/bench_sampling_resnet18_cuda_fp32.json"
for packs in 0 10; do
  step "federation-100-packs$packs" 100 python3 -m fedal.cli bench federation \
    experiments/configs/demo.toml --clients 100 --rounds 3 --set "data.data_dir=\"$data\"" \
    --set federation.client_gpus=0.1 --set federation.client_cpus=1 \
    --set "federation.packs=$packs" --output "$out/bench_federation_100_cuda_packs$packs.json"
done
