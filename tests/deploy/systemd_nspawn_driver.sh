#!/bin/sh
# Runs INSIDE the systemd-nspawn container of tests/deploy/systemd_nspawn_test.ts, as a oneshot
# unit after multi-user.target: drives gpu-power-agent.service through systemctl the way an
# operator would and records what it saw under /out; the test on the host asserts on it.
# /out/steps.txt gets `STEP <name> <ok|timeout|failed> [detail]` per step; the fake NVML logs
# every successful set to /var/lib/fake-nvml/set.log as `<epoch ms> set <uuid> <mW>`.
set -u
LOG=/var/lib/fake-nvml/set.log
CAPS=/etc/gpu-power-agent/caps.yaml
STATE=/var/lib/gpu-power-agent
UNIT=gpu-power-agent.service
OUT=/out
GPU0=GPU-00000000-0000-0000-0000-000000000000
GPU1=GPU-00000000-0000-0000-0000-000000000001

step() { echo "STEP $*" >>"$OUT/steps.txt"; }
lines() { if [ -f "$LOG" ]; then wc -l <"$LOG"; else echo 0; fi; }
main_pid() { systemctl show -p MainPID --value "$UNIT"; }
# set_since N UUID MW: the fake NVML set UUID to MW after log line N.
set_since() { tail -n +"$(($1 + 1))" "$LOG" 2>/dev/null | grep -q " set $2 $3\$"; }

# wait_for NAME SECONDS SHELL-CONDITION: poll every 100 ms until the condition holds.
wait_for() {
  name=$1 tenths=$(($2 * 10)) condition=$3 i=0
  while [ "$i" -lt "$tenths" ]; do
    if eval "$condition" >/dev/null 2>&1; then
      step "$name" ok
      return 0
    fi
    sleep 0.1
    i=$((i + 1))
  done
  step "$name" timeout
  return 1
}

# 1. start applies the caps (250 W and 300 W from the caps file the test wrote).
n=$(lines)
systemctl start "$UNIT" || step start failed "systemctl start exited $?"
wait_for start-applied 30 "set_since $n $GPU0 250000 && set_since $n $GPU1 300000"

# 2. the hardening is in force on the running agent.
pid=$(main_pid)
grep -E '^(CapBnd|CapEff|NoNewPrivs):' "/proc/$pid/status" >"$OUT/proc-status.txt"
# /etc, and the agent's own configuration directory in it, are read-only for the agent.
if nsenter -t "$pid" -m sh -c ": >/etc/probe" 2>"$OUT/etc-write.txt"; then
  step etc-read-only failed "the agent's mount namespace can write /etc"
elif nsenter -t "$pid" -m sh -c ": >/etc/gpu-power-agent/probe" 2>>"$OUT/etc-write.txt"; then
  step etc-read-only failed "the agent's mount namespace can write /etc/gpu-power-agent"
else
  step etc-read-only ok
fi
if nsenter -t "$pid" -m sh -c ": >$STATE/probe && rm $STATE/probe" 2>"$OUT/state-write.txt"; then
  step state-writable ok
else
  step state-writable failed "the agent's mount namespace cannot write $STATE"
fi

# 3. systemctl reload re-reads the caps file (SIGHUP). The new file is put in place atomically.
n=$(lines)
printf 'version: 1\ngpus:\n  - index: 0\n    watts: 400\n  - index: 1\n    watts: 300\n' \
  >"$CAPS.new" && mv "$CAPS.new" "$CAPS"
systemctl reload "$UNIT" || step reload failed "systemctl reload exited $?"
wait_for reload-applied 30 "set_since $n $GPU0 400000"

# 4. systemctl stop restores every baseline (700 W).
n=$(lines)
systemctl stop "$UNIT" || step stop failed "systemctl stop exited $?"
wait_for stop-restored 30 "set_since $n $GPU0 700000 && set_since $n $GPU1 700000"
systemctl is-active "$UNIT" >"$OUT/after-stop.txt" 2>&1

# 5. kill -9 of the main PID: ExecStopPost restores (before Restart=on-failure starts it again).
n=$(lines)
systemctl start "$UNIT" || step restart failed "systemctl start exited $?"
wait_for restart-applied 30 "set_since $n $GPU0 400000 && set_since $n $GPU1 300000"
pid=$(main_pid)
n=$(lines)
kill -9 "$pid"
wait_for kill9-restored 30 "set_since $n $GPU0 700000 && set_since $n $GPU1 700000"
# Restart=on-failure (RestartSec=5s) brings the agent back, which re-applies the caps.
m=$(lines)
wait_for kill9-reapplied 30 "set_since $m $GPU0 400000 && set_since $m $GPU1 300000"
systemctl stop "$UNIT"
wait_for final-stop 30 "! systemctl is-active --quiet $UNIT"

cp "$LOG" "$OUT/set.log" 2>/dev/null
journalctl -u "$UNIT" --no-pager -o cat >"$OUT/journal.txt" 2>&1
step done ok
