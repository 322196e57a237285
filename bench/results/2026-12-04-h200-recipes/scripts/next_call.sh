#!/bin/bash
# PREPARED, NOT RUN (2026-12-04, second session: no GPU was lent). The next GPU call for issue 25's B7
# check and issue 27's B4/B7 figures: carry .gpu/ (bundle.tar.xz, data/bench/faces380, the simplejpeg
# wheel, replicate.py; README.md says how they were made) and run `bash bench/results/2026-12-04-h200-recipes/scripts/next_call.sh` with timeout_s 540.
# Third call (issue 25's B7 check, issue 27's B4 and B7 figures): the B7 recipe as configured, SBI's
# B4 recipe, and B7 at ZeRO-0 with batch 32; each part's figure printed as soon as it is measured.
# Since 2026-12-05 (later the same day: bench/step_syncs.py first and last, timeouts cut to fit 540 s)
# the recipes configure ZeRO-0 (they were ZeRO-2), so the first two runs are ZeRO-0. Since that
# evening train_step.py times its plain step first and last (a few seconds more a run; each figure is
# still printed as it comes, so a run cut by its timeout keeps what it measured), and the one-rank
# ZeRO-0 engine no longer all-reduces (step_syncs' zero0 row should show the plain step's ops).
# The plain step's peak memory (peak_gib.plain) checks bench/gpu_memory.py's CPU estimates: B7 at
# batch 12, 9.51 GiB; SBI's B4 at 32 images, 10.05 GiB (bench/results/2026-12-05-cpu-gpu-memory/).
set -u
B=/tmp/b; mkdir -p $B && tar xJf .gpu/bundle.tar.xz -C $B && python3 -m zipfile -e .gpu/simplejpeg-*.whl $B/site/
export PYTHONPATH=$B/site:$PWD PATH=$B/bin:$PATH PYTHONUNBUFFERED=1
export AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecret AWS_ENDPOINT_URL=http://127.0.0.1:9100 AWS_DEFAULT_REGION=us-east-1
export AWS_RESPONSE_CHECKSUM_VALIDATION=when_required AWS_REQUEST_CHECKSUM_CALCULATION=when_required TORCH_EXTENSIONS_DIR=/tmp/ext
python3 .gpu/replicate.py .gpu/data/bench/faces380 .gpu/data/bench/faces380x10 10 > $OUT/replicate.log 2>&1
RCLONE_CONFIG=/dev/null rclone serve s3 --auth-key benchkey,benchsecret --addr 127.0.0.1:9100 .gpu/data > $OUT/rclone.log 2>&1 &
sleep 2
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; python3 -c "import sys, torch, timm, deepspeed, simplejpeg; print(sys.version.split()[0], 'torch', torch.__version__, 'timm', timm.__version__, 'deepspeed', deepspeed.__version__, 'simplejpeg', simplejpeg.__version__)"; } > $OUT/env.txt 2>&1
S="--order blocks --plain --warmup 5 --dataset s3://bench/faces380x10"
run() { local name=$1 t=$2; shift 2; echo "== $name $(date +%T)"; timeout $t python3 bench/train_step.py "$@" > $OUT/$name.log 2>&1; echo "rc $? $(date +%T)"; grep -E "^\[|^(in-memory|streamed|plain torch|peak)" $OUT/$name.log | grep -v rank; }
# What makes the host wait in a step, before (DeepSpeed's throughput timer and ZeRO-0 clipping) and
# after 5 December, with CUDA's own count of synchronizations (bench/step_syncs.py); about a minute.
syncs() { local name=$1 t=$2; shift 2; echo "== $name $(date +%T)"; timeout $t python3 bench/step_syncs.py "$@" > $OUT/$name.log 2>&1; echo "rc $?"; grep -A7 "^step" $OUT/$name.log; }
syncs step_syncs_b4 80 --set model.name=efficientnet_b4 --set data.image_size=380 --set data.batch_size=64 --set deepspeed.precision=bf16 --configs plain zero0 zero0-ds-clip zero2
run dfdc_b7 160 --config configs/dfdc_b7.yaml --steps 30 --stream-steps 200 $S
run sbi_b4 120 --config configs/sbi_effnet_b4.yaml --steps 20 --stream-steps 120 $S
run dfdc_b7_zero0_b32 100 --config configs/dfdc_b7.yaml --steps 20 --stream-steps 100 --zero 0 --batch 32 $S
syncs step_syncs_b7 60 --config configs/dfdc_b7.yaml --configs plain zero0 zero0-ds-clip --rounds 2
tail -n 3 $OUT/rclone.log
