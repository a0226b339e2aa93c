#!/bin/busybox sh
# Stage 1 of the guard test guest: the /init of a tiny busybox initramfs that xtask
# builds for each kernel (see xtask/src/vm.rs).
#
# It loads the modules the root filesystem needs (Debian's 6.1 cloud kernel has
# virtio-pci, fuse and virtiofs as modules; the 6.12 one has them built in, and then
# /modules is empty), mounts the host's root read-only over virtio-fs and hands over
# to stage 2, guard_init (xtask/guest/init.sh as written under target/vm/), which is
# on that root. guard_init and guard_nonce come from the kernel command line.

bb=/bin/busybox
$bb mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys

fail() {
    echo "guard-initramfs: $*"
    echo "GUARD-VM-SETUP-FAILED $guard_nonce initramfs: $*" >/dev/ttyS1
    echo o >/proc/sysrq-trigger
    while :; do $bb sleep 1; done
}

for module in /modules/*.ko; do
    [ -e "$module" ] || continue
    $bb insmod "$module" || fail "cannot load $module"
done
$bb mount -t virtiofs -o ro hostroot /newroot || fail "cannot mount the host's root over virtio-fs"
for fs in dev proc sys; do
    $bb mount -o move "/$fs" "/newroot/$fs" || fail "cannot move /$fs to the new root"
done
exec $bb switch_root /newroot /bin/sh "$guard_init"
