#!/bin/sh
# guard demo: Debian's MariaDB holding patient records, run as root inside a
# QEMU guest by `cargo xtask demo`. Each numbered step shows the commands a
# user would type and their real output (long outputs are abbreviated with
# "..."). The guest test tests/tests/mariadb.rs asserts the same scenario.
set -u
B="$GUARD_BIN_DIR"
PATH="$B:$PATH"
export PATH

DATADIR=/scratch/mysql            # MariaDB's data directory: a guard volume
KMS=/tmp/kms                      # the KMS's own files (a separate machine in production)
MARKER='Zebulon Quagmire-4711'    # a patient name that must never appear on disk in the clear
SQL="mariadb --batch"
OFFHOST=/root/offhost             # the administrator's machine: the private signing key stays there
ADMIN_KEY=$OFFHOST/admin.key      # signs policies and stop/disarm orders (guardctl keygen)
TRUST_KEY=/etc/guard/admin.key.pub  # its public half, the only key guardd trusts
POLICY=$OFFHOST/mariadb-policy.json            # the policy as written
SIGNED_POLICY=$OFFHOST/mariadb-policy.signed.json  # ... and as signed off-host, what the server gets

step() { printf '\n=== %s\n' "$*"; }
note() { printf '    # %s\n' "$*"; }
# show CMD [MAX_LINES]: print the command, its output (first MAX_LINES lines,
# default 12) and its exit status.
show() {
    printf '$ %s\n' "$1"
    out=$(sh -c "$1" 2>&1)
    code=$?
    printf '%s\n' "$out" | head -n "${2:-12}" | sed 's/^/  /'
    total=$(printf '%s\n' "$out" | wc -l)
    [ "$total" -gt "${2:-12}" ] && printf '  ... (%s more lines)\n' $((total - ${2:-12}))
    printf '  (exit status %s)\n' "$code"
}
die() { printf '\nDEMO FAILED: %s\n' "$*"; exit 1; }
wait_for_socket() {
    i=0; while [ ! -S "$1" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
    [ -S "$1" ] || die "$1 did not appear"
}
wait_for_guardd_exit() {
    i=0; while [ -S /run/guard/guardd.sock ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
    [ -S /run/guard/guardd.sock ] && die "guardd did not stop"
}
# signed_order ACTION: guardctl ACTION (stop or disarm) with an order signed
# off-host for this guardd: the nonce it hands out, signed with the admin key.
signed_order() {
    show "guardctl order challenge"
    nonce=$(guardctl order challenge) || die "guardctl order challenge failed"
    show "guardctl order sign --key $ADMIN_KEY --nonce $nonce -o $OFFHOST/$1.json $1"
    show "guardctl $1 $OFFHOST/$1.json"
}

printf 'guard + MariaDB: kernel %s, %s\n' "$(uname -r)" "$(mariadbd --version)"

step "1. A KMS holds the key-encryption key (guard-kms on 127.0.0.1, a separate process)"
mkdir -p "$KMS" /etc/guard
show "guard-kms gen-pki --out $KMS/pki >/dev/null && ls $KMS/pki"
show "guard-kms init-master-key $KMS/master.key"
guard-kms serve --listen 127.0.0.1:8443 --state-dir "$KMS/state" --master-key "$KMS/master.key" \
    --client-ca "$KMS/pki/ca.pem" --cert "$KMS/pki/server.pem" --key "$KMS/pki/server.key" \
    --audit-log "$KMS/audit.log" --journal > /tmp/kms.out 2>&1 &
i=0; until grep -q listening /tmp/kms.out || [ $i -gt 300 ]; do sleep 0.1; i=$((i+1)); done
show "cat /tmp/kms.out"
cat > /etc/guard/kms.json <<EOF
{"kind": "guard-kms", "url": "https://127.0.0.1:8443",
 "tls": {"ca": "$KMS/pki/ca.pem", "cert": "$KMS/pki/client.pem", "key": "$KMS/pki/client.key"}}
EOF
show "cat /etc/guard/kms.json"

step "2. MariaDB's data directory is a guard volume (fscrypt v2, key from the KMS via the kernel keyring)"
guardd > /tmp/guardd.log 2>&1 &
wait_for_socket /run/guard/guardd.sock
show "head -3 /tmp/guardd.log"
mkdir -p "$DATADIR"
show "guardctl volume init mysql $DATADIR"
show "guardctl volume status"
show "chown mysql:mysql $DATADIR"
cat > /etc/mysql/mariadb.conf.d/90-guard-demo.cnf <<EOF
[mysqld]
# Without systemd, mysqld_safe is what drops root: it needs the user named.
user = mysql
datadir = $DATADIR
# Small redo log and buffer pool: this guest is an emulated VM.
innodb_log_file_size = 16M
innodb_buffer_pool_size = 64M
EOF
show "cat /etc/mysql/mariadb.conf.d/90-guard-demo.cnf"
note "files the server or its launcher would read if they existed, created empty so the policy can keep them as they are:"
show "touch /etc/my.cnf /etc/default/mariadb"
show "mariadb-install-db --user=mysql --datadir=$DATADIR --skip-test-db" 4

step "3. The policy, signed off-host: only mariadbd, started by its supervisor mysqld_safe, reads and writes the data directory; mariabackup may read it (logged); both load code only from the system's library folders; the server's configuration is immutable"
note "the administrator's signing key, made on another machine; only its public half goes to the server:"
mkdir -p "$OFFHOST"
show "guardctl keygen $ADMIN_KEY"
show "cp $ADMIN_KEY.pub $TRUST_KEY && cat $TRUST_KEY"
note "guardd restarts trusting that key alone: it pins the key with its BPF pins and protects itself"
note "(the volume was made first: its records are guard's own files, which nobody may change while guardd protects itself)"
show "guardctl stop"
wait_for_guardd_exit
guardd --trust-key "$TRUST_KEY" > /tmp/guardd.log 2>&1 &
wait_for_socket /run/guard/guardd.sock
show "guardctl status | grep -E 'policy_signing|trust_key|policy_serial|self_protection'"
cat > "$POLICY" <<EOF
{
  "mode": "enforce",
  "protected": [
    {
      "path": "$DATADIR",
      "rules": [
        { "name": "mariadb server", "binaries": ["/usr/sbin/mariadbd"],
          "started_by": { "supervisor": "/usr/bin/mysqld_safe", "through": ["/usr/bin/nohup"] },
          "access": ["read", "write", "create", "delete", "rename", "setattr"],
          "effect": "allow" },
        { "name": "backups", "binaries": ["/usr/bin/mariadb-backup"], "uid": 0,
          "access": ["read"], "effect": "audit" }
      ]
    }
  ],
  "libraries": ["/usr/lib/x86_64-linux-gnu", "/usr/lib/mysql/plugin"],
  "immutable": ["/etc/mysql", "/etc/my.cnf", "/etc/default/mariadb", "/etc/init.d/mariadb"]
}
EOF
show "cat $POLICY" 20
show "guardctl policy validate $POLICY"
note "off-host: signed with serial 1 (each new policy needs a greater serial, so an older one cannot come back)"
show "guardctl policy sign --key $ADMIN_KEY --serial 1 -o $SIGNED_POLICY $POLICY"
show "cut -c1-160 $SIGNED_POLICY"
note "root on the server, without the key, cannot apply a policy, not even this one unsigned; the refusal is journaled:"
show "guardctl policy apply $POLICY"
show "journalctl -o cat --no-pager MESSAGE_ID=a175415865f1ebece66958754de80174 GUARD_REFUSAL=unsigned | tail -n 1"
note "the signed one applies:"
show "guardctl policy apply $SIGNED_POLICY"
show "guardctl policy show" 20
show "guardctl policy show | grep -A3 '^signed:'"

step "MariaDB starts by its normal launcher (/etc/init.d/mariadb: mysqld_safe supervising mariadbd)"
show "/etc/init.d/mariadb start"
note "refusals come with every start, logged, harmless: the launcher's df opens the data directory (df falls back to statfs), debian-start's mariadb-upgrade reads its stamp file there, and the launcher script itself runs 'mariadbd --print-defaults' (it is not mariadbd's supervisor; it falls back to defaults)"
show "ps -o pid,ppid,user,args -C mariadbd,mysqld_safe"

step "4. A client stores rows with a marker through SQL and reads them back"
show "$SQL -e \"CREATE DATABASE clinic;
  CREATE TABLE clinic.patients (id INT PRIMARY KEY, name VARCHAR(64), diagnosis VARCHAR(64)) ENGINE=InnoDB;
  INSERT INTO clinic.patients VALUES (1, '$MARKER', 'hypertension'), (2, 'Alice Example', 'asthma'), (3, 'Bob Example', 'diabetes');\""
show "$SQL -e 'SELECT * FROM clinic.patients'"
note "MariaDB's own clients work as without guard:"
show "mariadb-admin ping && mariadb-admin status"
show "mariadb-check --all-databases" 6
show "mariadb-slap --concurrency=4 --iterations=2 --number-of-queries=200 --auto-generate-sql" 8

step "5. Root, with ordinary tools, tries to read the data files"
show "id -un"
show "cat $DATADIR/clinic/patients.ibd"
show "cp $DATADIR/clinic/patients.ibd /tmp/"
show "strings $DATADIR/ibdata1 | head -3"
show "tar cf /tmp/stolen.tar $DATADIR" 4
show "dd if=$DATADIR/ib_logfile0 of=/tmp/redo bs=1M count=1"
show "ls $DATADIR"
note "nor can root start a mariadbd of its own, with options of its choosing:"
show "mariadbd --user=mysql --skip-grant-tables --socket=/tmp/mine.sock"
note "nor give the running one such options for its next start, through its configuration:"
show "echo skip-grant-tables >> /etc/mysql/mariadb.conf.d/90-guard-demo.cnf"
show "printf '[mysqld]\\nskip-grant-tables\\n' > /etc/mysql/conf.d/zz-root.cnf"
show "echo skip-grant-tables >> /etc/my.cnf"
note "guard's own tools are no exception:"
show "guardctl verify-encryption mysql --marker '$MARKER'"
note "The raw device under /scratch holds only ciphertext: the marker is nowhere in it ..."
show "sync; dd if=/dev/vda bs=4M iflag=direct status=none | grep -a -c '$MARKER'"
note "... while the same search finds it at once in a plaintext file on the same disk:"
mkdir -p /scratch/plain && printf 'control %s\n' "$MARKER" > /scratch/plain/control.txt
show "sync; dd if=/dev/vda bs=4M iflag=direct status=none | grep -a -c '$MARKER'"
note "Each refusal is in the journal ..."
sleep 1
show "journalctl -o cat --no-pager GUARD_VERDICT=denied | tail -n 9" 9
show "journalctl -o verbose --no-pager GUARD_VERDICT=denied GUARD_COMM=cat | grep -E '^ *(GUARD_[A-Z]+)=' | head -14" 14
note "... and in the signed, hash-chained audit trail (guardd's local copy; collectors hold more):"
show "grep -c '\"kind\":\"denied\"' /var/lib/guard/audit/records.jsonl"
show "grep '\"comm\":\"dd\"' /var/lib/guard/audit/records.jsonl | head -1 | cut -c1-400"
show "guardctl log verify --local /var/lib/guard/audit" 6

step "6. mariabackup takes a backup while the server runs (its reads are allowed and logged)"
show "mariabackup --backup --target-dir=/tmp/backup 2>&1 | tail -n 3"
show "mariabackup --prepare --target-dir=/tmp/backup 2>&1 | tail -n 1"
show "grep -a -c '$MARKER' /tmp/backup/clinic/patients.ibd"
show "journalctl -o cat --no-pager GUARD_VERDICT=audited | tail -n 2"

step "7. MariaDB stops; the volume is locked: the files are unreadable to everyone"
show "/etc/init.d/mariadb stop"
show "guardctl volume lock mysql"
show "guardctl volume status"
note "even mariadbd, the one allowed program, started by its supervisor, cannot open its files without the key"
note "(Errcode 126 is the kernel's ENOKEY, 'Required key not available'; MariaDB names 126 after its own error table):"
show "timeout 120 mysqld_safe --user=mysql --skip-networking --socket=/tmp/locked.sock --pid-file=/tmp/locked.pid --log-error=/tmp/locked.err; grep -E 'ERROR' /tmp/locked.err | head -n 3"
note "guardd restarts and unlocks the volume from the KMS. It protects itself: a plain stop is refused;"
note "it takes an order signed off-host for this very guardd (the kernel keeps enforcing while guardd is down)"
show "guardctl stop"
signed_order stop
wait_for_guardd_exit
guardd --trust-key "$TRUST_KEY" > /tmp/guardd2.log 2>&1 &
wait_for_socket /run/guard/guardd.sock
sleep 2
show "journalctl -o short-iso --no-pager GUARD_VOLUME=mysql | tail -n 2"
show "guardctl volume status"
show "/etc/init.d/mariadb start"
show "$SQL -e 'SELECT * FROM clinic.patients'"

step "8. The key is revoked: the data is crypto-shredded"
show "/etc/init.d/mariadb stop"
note "revoking rewrites the volume's record, one of guard's own files: guardd is stopped first, with a signed order"
signed_order stop
wait_for_guardd_exit
show "guardctl key revoke mysql --yes"
show "guardctl volume unlock mysql"
show "guardctl volume status"
show "rm -f /tmp/locked.err; timeout 120 mysqld_safe --user=mysql --skip-networking --socket=/tmp/locked.sock --pid-file=/tmp/locked.pid --log-error=/tmp/locked.err; grep -E 'ERROR' /tmp/locked.err | head -n 2"
note "who revoked it, and when:"
show "journalctl -o short-iso --no-pager GUARD_VOLUME=mysql _COMM=guardctl _UID=0"
show "journalctl -o short-iso --no-pager SYSLOG_IDENTIFIER=guard-kms | grep -E 'revoke|unwrap' | tail -n 3"

printf '\nDEMO COMPLETE\n'
