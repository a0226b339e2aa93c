#!/bin/sh
# Stage 2 of the guard test guest: PID 1, started by the initramfs (initramfs-init.sh)
# with /bin/sh of the host's root, which the guest sees read-only over virtio-fs.
# It makes a Linux system the tests can use (writable /run, /tmp, /etc, /var, /root in
# memory, the guest kernel's modules, an encryptable scratch disk, journald), runs
# guard_run and reports its exit status to the host, then powers off.
#
# Kernel command line variables (set by xtask/src/vm.rs):
#   guard_run      host path of the script to run
#   guard_nonce    a random word per boot, so no test output can fake a marker line
#   guard_modules  host path of the unpacked kernel package's lib/modules
#   guard_keep     colon-separated host paths (the workspace, its target directory)
#                  that must stay visible with their host contents
#
# The script's output goes to the second serial port (ttyS1), which xtask reads line by
# line; the kernel's messages and this script's progress go to the console (ttyS0),
# which QEMU writes to target/vm/<kernel>/console.log.
#
# Setup uses the static busybox where it can: under TCG, starting a dynamically linked
# program such as util-linux's mount costs over 100 ms, busybox's a third of that.

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
export LANG=C.UTF-8
# No udev runs in the guest (nor on these hosts): libdevmapper (dmsetup, cryptsetup)
# then makes the /dev/mapper/<name> nodes itself instead of waiting for udev rules.
export DM_DISABLE_UDEV=1
bb=/bin/busybox
OUT=/dev/ttyS1
# The host's root as it was before anything was mounted over parts of it.
HOST=/run/guard/host

# Progress goes to the kernel log, so the console log shows when each step ran.
log() {
    echo "guard-init: $*" >/dev/kmsg
}

power_off() {
    $bb sync
    echo o >/proc/sysrq-trigger
    while :; do $bb sleep 1; done
}

fail() {
    log "setup failed: $*"
    echo "GUARD-VM-SETUP-FAILED $guard_nonce $*" >$OUT
    power_off
}

must() {
    "$@" || fail "$*"
}

mount_tmpfs() { # directory mode
    must $bb mount -t tmpfs -o "mode=$2,nosuid,nodev" tmpfs "$1"
}

# A writable layer in memory over a read-only host directory: the guest may change
# /etc, /var and /root freely; the host never sees it.
mount_overlay() { # directory
    layer=/run/guard/overlay$1
    must $bb mkdir -p "$layer/upper" "$layer/work"
    must $bb mount -t overlay overlay -o "lowerdir=$1,upperdir=$layer/upper,workdir=$layer/work" "$1"
}

wait_for() { # test-arguments... (up to 10 s)
    tries=0
    until test "$@"; do
        tries=$((tries + 1))
        [ $tries -le 100 ] || return 1
        $bb sleep 0.1
    done
}

log "setting up"
# proc, sysfs and devtmpfs come mounted from the initramfs.
must $bb mkdir -p /dev/pts /dev/shm
must $bb mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount_tmpfs /dev/shm 1777
mount_tmpfs /run 755
must $bb mkdir -p $HOST
must $bb mount -o rbind / $HOST
must $bb mount -t securityfs securityfs /sys/kernel/security
must $bb mount -t bpf bpf /sys/fs/bpf
must $bb mount -t cgroup2 cgroup2 /sys/fs/cgroup
must $bb mount -t tracefs tracefs /sys/kernel/tracing
mount_tmpfs /tmp 1777

log "loading modules"
must $bb mount -o bind "$HOST$guard_modules" /lib/modules
must modprobe -a overlay loop dm_crypt virtio_blk
# The kernel's NFS server and client, loaded before guard arms as on a server
# that also shares files (guard refuses module loads once armed).
must modprobe -a nfsd nfsv4
mount_overlay /etc
mount_overlay /var
mount_overlay /root
mount_tmpfs /var/tmp 1777
mount_tmpfs /var/log 755
must $bb mkdir -p /var/lib/guard
mount_tmpfs /var/lib/guard 700

# The workspace (test fixtures, GUARD_BIN_DIR) may lie under one of the directories
# mounted over above (a CI clone in /tmp, say): put the host's contents back.
old_ifs=$IFS
IFS=:
for path in $guard_keep; do
    must $bb mkdir -p "$path"
    must $bb mount -o bind "$HOST$path" "$path"
done
IFS=$old_ifs

log "formatting the scratch disk"
# A fresh disk per boot, formatted here so fscrypt tests have a real ext4 to work on.
wait_for -b /dev/vda || fail "the scratch disk /dev/vda did not appear"
must mkfs.ext4 -q -F -O encrypt -L scratch -E nodiscard,lazy_itable_init=1,lazy_journal_init=1 /dev/vda
must $bb mount -t ext4 /dev/vda /scratch

must $bb hostname guard-vm
must $bb ip link set lo up

log "starting systemd-journald"
# PID 1 is not systemd: start journald by hand so journalctl and sd_journal work.
must $bb mkdir -p /run/systemd/journal
/lib/systemd/systemd-journald </dev/null >/dev/console 2>&1 &
wait_for -S /run/systemd/journal/socket || fail "systemd-journald did not create its socket"

log "running $guard_run"
echo "GUARD-VM-READY $guard_nonce $($bb cut -d' ' -f1 /proc/uptime)" >$OUT
cd /
sh "$HOST$guard_run" </dev/null >$OUT 2>&1
code=$?
log "the script exited with $code"
echo "GUARD-VM-EXIT $guard_nonce $code" >$OUT
power_off
