#!/bin/sh
# guard demo, run as root inside a QEMU guest by `cargo xtask demo`.
# A records directory is protected by the embedded default policy below: only
# the records application may touch it. The application works; root is refused;
# the refusal is in the journal.
set -u
B="$GUARD_BIN_DIR"
PATH="$B:$PATH"
DEMO=/scratch/demo

say() { printf '\n=== %s\n' "$*"; }
show() { printf '$ %s\n' "$*"; sh -c "$*" 2>&1; printf '(exit status %s)\n' "$?"; }

mkdir -p "$DEMO/records" "$DEMO/app"
printf 'patient,diagnosis\nAlice Example,hypertension\nBob Example,diabetes\n' > "$DEMO/records/patients.csv"
# The "application": a busybox binary installed at its own path.
cp /bin/busybox "$DEMO/app/busybox"

cat > "$DEMO/policy.json" <<EOF
{
  "mode": "enforce",
  "protected": [
    {
      "path": "$DEMO/records",
      "rules": [
        { "name": "records application",
          "binaries": ["$DEMO/app/busybox"],
          "access": ["read", "write", "create", "delete", "rename", "setattr"],
          "effect": "allow" }
      ]
    }
  ]
}
EOF

say "Kernel $(uname -r); active LSMs: $(cat /sys/kernel/security/lsm)"

say "Start guardd: it resolves struct layouts from BTF, loads and pins the LSM programs"
guardd > /tmp/guardd.log 2>&1 &
i=0; while [ ! -S /run/guard/guardd.sock ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
cat /tmp/guardd.log

say "The policy (embedded default of this demo)"
cat "$DEMO/policy.json"
show "guardctl policy validate $DEMO/policy.json"
show "guardctl policy apply $DEMO/policy.json"
show "guardctl status"

say "The records application reads and writes its data"
show "$DEMO/app/busybox cat $DEMO/records/patients.csv"
show "$DEMO/app/busybox sh -c 'echo Carol Example,asthma >> $DEMO/records/patients.csv'"

say "Root, with every ordinary tool, is refused"
show "id -u"
show "cat $DEMO/records/patients.csv"
show "cp $DEMO/records/patients.csv /tmp/stolen.csv"
show "ls $DEMO/records"
show "cd $DEMO/records && cat ./patients.csv"
show "ln -s $DEMO/records/patients.csv /tmp/alias && cat /tmp/alias"
show "cp /bin/busybox /tmp/busybox && /tmp/busybox cat $DEMO/records/patients.csv"
show "rm $DEMO/records/patients.csv"

say "Each refusal is in the journal, with its fields"
sleep 1
show "journalctl -o verbose --no-pager GUARD_VERDICT=denied GUARD_COMM=cat | grep -E '^ *(MESSAGE|GUARD_[A-Z]+)=' | head -16"
show "guardctl alerts --since -5min --count 4"

say "Killing guardd does not stop the guard"
show "kill -9 \$(pidof guardd); sleep 0.5; cat $DEMO/records/patients.csv"
show "guardd > /tmp/guardd2.log 2>&1 & sleep 3; guardctl status | grep -E '^(state|programs|policy_hash):'"
